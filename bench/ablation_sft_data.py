"""SFT data ablations on the same held-out questions, paired: what grounding, recovery turns and more data buy.

Each variant trains notebook 05's SFT (the profile's parameters, its curriculum order and row selection) on
a variant of notebook 04's ``trajectories.jsonl`` and scores the adapter under notebook 05's harness on the
first ``n`` held-out questions of at most ``max_hops`` hops x ``k`` rollouts:

* ``recovery``     — the rows as notebook 04 wrote them (a share carries a recovery turn, medkit.recovery);
* ``no_recovery``  — the same rows with every recovery turn undone (:func:`medkit.recovery.without_recovery`);
* ``recovery_x2``  — as ``recovery`` with twice the profile's ``N_TRAIN``;
* ``recovery_e2``  — as ``recovery`` for 2 epochs;
* ``ungrounded``   — every row re-synthesised for the same question and variant without grounding checks
  (``synthesis.synthesise(grounded=False)``: each pick named as soon as an observation shows it, competitors
  left open), filtered like notebook 04's rows but for grounding; the data contribution the paper claims.

Reports every variant's pass@1 (95% bootstrap CI, per hop), answer rate, stop reasons, training time and
loss, the grounded share of its training rows' picks, and each variant minus ``no_recovery`` (the rows notebook
05 trains on when ``RECOVERY_SHARE`` is 0) as a paired bootstrap over the same questions. Adapters and the
scored rollouts (``eval_rows.jsonl``, with their messages) go to ``data/<profile>/experiments/sft_<variant>/``.
The recovery variants need a ``trajectories.jsonl`` written with ``RECOVERY_SHARE`` > 0 (notebook 04). Not a speed
benchmark: run it alone.

``python bench/ablation_sft_data.py [profile] [n] [k] [max_hops] [variants]`` (defaults: cpu 60 4 3
no_recovery,recovery) -> ``results/<profile>/experiments/sft_data_ablation.json`` (with ``ungrounded``:
``sft_data_ablation_ungrounded.json``, :func:`output_path`); ``--read [profile]`` adds the reading of the saved
rollouts to the recovery file.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

from medkit import agent as A
from medkit import evaluation as E
from medkit import grounding as GR
from medkit import io as mio
from medkit import model as M
from medkit import paths, profiles, records, sft
from medkit import questions as Q
from medkit import recovery as RC
from medkit import synthesis as SY
from medkit import tools as T
from medkit import trajectories as TR

VARIANTS = {"recovery": {}, "no_recovery": {}, "recovery_x2": {"N_TRAIN": 2}, "recovery_e2": {"EPOCHS": 2},
            "ungrounded": {}}
RECOVERY_VARIANTS = ("recovery", "recovery_x2", "recovery_e2")  # need rows written with RECOVERY_SHARE > 0
BASELINE = "no_recovery"


def output_path(profile: str, names: list[str]) -> Any:
    """Where a run of ``names`` writes: the recovery ablation's file, or one named after the other variants."""
    folder = paths.results_dir(profile) / "experiments"
    if "ungrounded" not in names:
        return folder / "sft_data_ablation.json"
    return folder / f"sft_data_ablation_{'_'.join(n for n in names if n != BASELINE)}.json"


def ungrounded_rows(profile: str, rows: list[dict[str, Any]],
                    questions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Each row re-synthesised for its question and variant without grounding checks, filtered by notebook 04's
    filter (:func:`medkit.trajectories.stage_filter`, same settings) but for grounding. A row whose twin that filter
    rejects stays as it was (counted, returned second), so the list maps row to row and notebook 05's selection
    picks the same questions."""
    data = paths.profile_data_dir(profile)
    p = profiles.resolve(profile, "trajectories")
    index, toolbox = T.open_tools(data, rerank=p["RERANK"])
    judge_row = TR.stage_filter(p, count_tokens=TR.token_counter(M.load_tokenizer(profile), A.tool_schemas(toolbox.tools())),
                                resolve=toolbox.resolve_ids, grounding=False)
    by_id = {Q.question_id(q): q for q in questions}
    out, kept = [], 0
    for r in rows:
        record = by_id[r["question_id"]]
        twin = SY.synthesise(record, index, toolbox, variant=int(r["variant"]), seed=p["SEED"], grounded=False).to_record()
        verdict = judge_row(twin, record)
        if verdict["accepted"]:
            out.append({**r, "messages": twin["messages"], "n_tool_calls": verdict["n_tool_calls"],
                        "n_tokens": verdict["n_tokens"], "recovery": None})
        else:
            out.append({**r, "recovery": None})  # the grounded row, its recovery turns undone by the caller
            kept += 1
    return out, kept


def variant_rows(profile: str, rows: list[dict[str, Any]], variant: str,
                 questions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    """The variant's rows (row for row) and, for ``ungrounded``, how many kept their grounded form."""
    if variant == "no_recovery":
        return [{**r, "messages": RC.without_recovery(r["messages"]), "recovery": None} for r in rows], None
    if variant == "ungrounded":
        return ungrounded_rows(profile, [{**r, "messages": RC.without_recovery(r["messages"])} for r in rows], questions)
    return rows, None


def grounding_of(rows: list[dict[str, Any]], questions: list[dict[str, Any]]) -> dict[str, Any]:
    """Grounded shares of the training rows' picks (:mod:`medkit.grounding`): what the variant teaches."""
    g = GR.summarise(GR.check_rows(rows, questions))
    return {k: g[k] for k in ("commits", "grounded_commit_rate", "trajectories", "grounded_trajectory_rate")}


def train(profile: str, variant: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    data = paths.profile_data_dir(profile)
    p = dict(params)
    if "N_TRAIN" in VARIANTS[variant]:
        p["N_TRAIN"] = int(p["N_TRAIN"]) * VARIANTS[variant]["N_TRAIN"]
    if "EPOCHS" in VARIANTS[variant]:
        p["EPOCHS"] = VARIANTS[variant]["EPOCHS"]
    tok = sft.prepare_tokenizer(M.load_tokenizer(profile))
    # variant_rows maps row to row, so applying it before the selection gives notebook 05's order
    questions = records.load_questions(data / "questions_train.jsonl")
    every, grounded_kept = variant_rows(profile, sft.load_trajectories(data / "trajectories.jsonl"), variant, questions)
    rows, skipped = sft.training_rows(tok, every, p)
    run = data / "experiments" / f"sft_{variant}"
    shutil.rmtree(run, ignore_errors=True)
    qlora = p["QUANTIZE"] == "nf4"
    model, _ = M.load_model(profile, for_training=True, quantize_4bit=qlora)
    model, peft_config = sft.with_adapter(model, p, "transformers")
    trainer = sft.build_trainer(model, tok, rows, p, run / "checkpoints", use_cpu=True, peft_config=peft_config)
    out = sft.train(trainer, resume=False)
    sft.save_outputs(trainer, tok, run, {"name": f"ablation {variant}", "base_model": M.model_spec(profile).name_or_path,
                                         "summary": "bench/ablation_sft_data.py", "data": f"{len(rows)} rows",
                                         "parameters": {k: v for k, v in p.items() if not k.startswith("EVAL")},
                                         "metrics": {}}, profile=profile)
    info = {"rows": len(rows), "skipped_longer": skipped, "with_recovery_turn": sum(1 for r in rows if r.get("recovery")),
            "steps": out["steps"], "seconds": out["seconds"],
            "final_loss": out["loss_curve"][-1]["loss"] if out["loss_curve"] else None,
            "N_TRAIN": p["N_TRAIN"], "EPOCHS": p["EPOCHS"], "tokens": sum(int(r.get("n_tokens") or 0) for r in rows),
            "tool_calls": sum(int(r.get("n_tool_calls") or 0) for r in rows), "grounding": grounding_of(rows, questions),
            **({"rows_without_an_ungrounded_twin": grounded_kept} if grounded_kept is not None else {})}
    return run / "adapter", info


def reading(rows: list[dict[str, Any]]) -> dict[str, int]:
    """What the policy does after each tool response: re-issue the call after an error, or write a recovery
    turn's correction thought (\"Nothing is named ...\", \"There is no relation ...\"), after an error or not."""
    from medkit.agent import is_tool_error, parse_turn

    out = {"rollouts": len(rows), "errors_answered": 0, "same_call_after_error": 0, "correction_thoughts": 0,
           "correction_thought_after_a_result": 0}
    for r in rows:
        ms = r["messages"]
        for i, m in enumerate(ms):
            nxt = next((x for x in ms[i + 1:] if x.get("role") == "assistant"), None)
            if m.get("role") != "tool" or nxt is None:
                continue
            prev = next((x for x in reversed(ms[:i]) if x.get("role") == "assistant"), None)
            error = is_tool_error(m.get("content", ""))
            corrects = (parse_turn(str(nxt.get("content") or "")).think or "").startswith(
                ("Nothing is named", "There is no relation"))
            out["correction_thoughts"] += corrects
            out["correction_thought_after_a_result"] += corrects and not error
            if error:
                out["errors_answered"] += 1
                out["same_call_after_error"] += bool(nxt.get("tool_calls") and prev
                                                     and nxt.get("tool_calls") == prev.get("tool_calls"))
    return out


def read_saved(profile: str = "cpu") -> dict:
    """Add :func:`reading` of every variant's saved rollouts to the results file (``--read``)."""
    data = paths.profile_data_dir(profile)
    path = paths.results_dir(profile) / "experiments" / "sft_data_ablation.json"
    out = mio.read_json(path)
    for name, v in out["variants"].items():
        v["reading"] = reading(list(mio.read_jsonl(data / "experiments" / f"sft_{name}" / "eval_rows.jsonl")))
    mio.write_json(path, out)
    return out


def main(profile: str = "cpu", n: str = "60", k: str = "4", max_hops: str = "3",
         variants: str = "no_recovery,recovery") -> dict:
    data = paths.profile_data_dir(profile)
    params = {**profiles.resolve(profile, "sft"), "EVAL_K": int(k)}
    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    if any(v in RECOVERY_VARIANTS for v in names) and not any(
            r.get("recovery") for r in records.load_trajectories(data / "trajectories.jsonl")):
        raise SystemExit("trajectories.jsonl has no recovery turns: run notebook 04 with -p RECOVERY_SHARE 0.5 first")
    qs = E.select_questions(records.load_questions(data / "questions_test.jsonl"), int(n), max_hops=int(max_hops))
    _, toolbox = T.open_tools(data)
    schemas = None if params.get("TOOLS_IN_PROMPT") else []
    out: dict = {"questions": len(qs), "k": int(k), "max_hops": int(max_hops), "variants": {}}
    rows = {}
    for name in names:
        t0 = time.time()
        adapter, info = train(profile, name, params)
        r = E.evaluate_adapter(profile, adapter, qs, toolbox, params, name=name, schemas=schemas, progress=False)
        rows[name] = r["rows"]
        reading_ = reading(r["rows"])
        mio.write_jsonl(adapter.parent / "eval_rows.jsonl", r["rows"])  # every rollout with its messages, to read
        m = r["metrics"]
        out["variants"][name] = {"training": info, **{key: m[key] for key in (
            "pass@1", "pass@k", "answer_rate", "format_error_rate", "tool_error_rate", "tool_calls_per_question",
            "stop_reasons", "pass@1_by_hops", "seconds") if key in m}, "reading": reading_,
                               "total_seconds": round(time.time() - t0, 1)}
        print(name, info, m["pass@1"], m["answer_rate"], m["stop_reasons"], flush=True)
    if BASELINE in rows:
        out["paired_minus_no_recovery"] = E.compare(rows, {v: (BASELINE, v) for v in rows if v != BASELINE})
    out["command"] = f"python bench/ablation_sft_data.py {profile} {n} {k} {max_hops} {','.join(names)}"
    out["provenance"] = mio.provenance(params=params)
    mio.write_json(output_path(profile, names), out)
    print(out.get("paired_minus_no_recovery"))
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--read"]:
        print(read_saved(*sys.argv[2:3])["variants"].keys())
    else:
        main(*sys.argv[1:6])
