"""Evaluation harness: any backend through the agent with the real tools, k rollouts per question.

Scope (reused by notebooks 05-07):

* :func:`evaluate` runs :func:`medkit.agent.run_agent` ``k`` times over held-out questions
  (rollout ``j`` runs with seed ``seed + 1000 j``, and each question's turns draw from seeds of
  their own, :func:`medkit.agent.conversation_seed`, so its draws do not depend on which questions are
  evaluated beside it; at temperature 0 every rollout is the same
  greedy run, so ``k > 1`` needs ``temperature > 0``) and judges every prediction with
  :func:`medkit.judge.judge` (KG synonyms through the toolbox's name index).
* :func:`metrics` reports pass@1 as mean ± sd over rollouts and its 95% bootstrap interval over
  questions (``ci95``; benchmarks with few questions move in big steps, so a single number hides
  the noise), pass@k (any rollout right),
  answer-termination rate, format-error rate, tool calls per question, and pass@1 per hop
  count and per specialty (each with its interval and question count); :func:`by_tool_errors` splits
  rollouts by whether a tool call failed; :func:`compare` gives paired
  differences between stages on the same questions; :func:`agreement` counts the rollouts two runs of
  the same questions drew alike (how exactly an evaluation reproduces); :func:`stage_table` is the table notebooks
  05-07 show and plot.
* :func:`load_eval_questions` reads any question file through the kit's one validated loader: the
  kit's JSONL, the paper authors' format, or MedBrowseComp's published CSV files
  (:mod:`medkit.medbrowsecomp`; they cannot be shipped here). A benchmark's rows keep their
  ``task_name``, and :func:`metrics` then reports pass@1 per task too.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import bootstrap
from .agent import REPEATED_CALL, SYSTEM_PROMPT, AgentConfig, run_agent
from .errors import InputError
from .judge import judge

ROLLOUT_SEED_STRIDE = 1000  # rollout j runs with seed + 1000 j (each turn's seed: medkit.agent.conversation_seed)


def select_questions(records: Sequence[dict[str, Any]], n: int | None = None,
                     max_hops: int | None = None) -> list[dict[str, Any]]:
    """The first ``n`` records (file order) with at most ``max_hops`` hops; None means no limit. With a
    limit, a record of unknown hop count is left out (it cannot be shown to be within it)."""
    kept = [r for r in records if max_hops is None or (r.get("hops") is not None and int(r["hops"]) <= max_hops)]
    return kept[:n] if n else kept


def evaluate(backend: Any, toolbox: Any, questions: Sequence[dict[str, Any]], *, k: int = 3,
             config: AgentConfig | None = None, seed: int = 13,
             resolve: Callable[[str], Iterable[str]] | None = None, schemas: list[dict[str, Any]] | None = None,
             system: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """One row per (question, rollout): prediction, verdict, stop reason and tool use.

    ``schemas`` are the tool schemas shown in the system prompt (None: all of the toolbox's;
    ``[]``: none, for a model fine-tuned without them — see ``TOOLS_IN_PROMPT`` in notebook 05); ``system``
    the system prompt (None: the agent's, :data:`medkit.agent.SYSTEM_PROMPT`).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    base = config or AgentConfig()
    resolve = resolve if resolve is not None else getattr(toolbox, "resolve_ids", None)
    rows = []
    for j in range(k):
        cfg = AgentConfig(**{**base.__dict__, "seed": seed + ROLLOUT_SEED_STRIDE * j})
        for q, t in zip(questions, run_agent(backend, toolbox, questions, config=cfg, schemas=schemas,
                                             system=system or SYSTEM_PROMPT, progress=progress)):
            verdict = judge(t["prediction"], q, resolve=resolve)
            rows.append({"question_id": t["question_id"], "rollout": j, "correct": verdict.correct,
                         "judge": verdict.method, "prediction": t["prediction"], "answer": q.get("answer"),
                         "stop_reason": t["stop_reason"], "n_tool_calls": t["n_tool_calls"],
                         "n_model_calls": t["n_model_calls"], "n_format_errors": t["n_format_errors"],
                         "n_tool_errors": len(t["tool_errors"]),
                         "n_repeated_calls": sum(e["error"] == REPEATED_CALL for e in t["tool_errors"]),
                         "n_tokens": t["n_tokens"],
                         "hops": q.get("hops"), "specialty": q.get("specialty"),
                         **({"task_name": q["task_name"]} if q.get("task_name") is not None else {}),
                         "messages": t["messages"]})
    return rows


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    return {"mean": round(statistics.fmean(values), 4) if values else None,
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def _pass1(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over rollouts, and the 95% bootstrap interval over questions (:mod:`medkit.bootstrap`)."""
    by_rollout: dict[int, list[bool]] = defaultdict(list)
    for r in rows:
        by_rollout[r["rollout"]].append(bool(r["correct"]))
    return {**_mean_sd([sum(v) / len(v) for v in by_rollout.values()]), "ci95": bootstrap.pass_at_1(rows)["ci95"]}


def compare(stages: dict[str, Sequence[dict[str, Any]]], pairs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Paired differences of pass@1 between stages evaluated on the same questions: ``pairs`` maps a name
    (e.g. ``"grpo_minus_sft"``) to ``(a, b)``; each value is :func:`medkit.bootstrap.paired_difference` of
    b − a (different question sets are refused)."""
    return {name: bootstrap.paired_difference(stages[a], stages[b], names=(a, b)) for name, (a, b) in pairs.items()}


ROW_FIELDS_COMPARED = ("correct", "prediction", "stop_reason", "n_tool_calls", "n_model_calls", "n_format_errors",
                       "n_tool_errors", "n_tokens")  # what "the same rollout" means for two rows (messages aside)


def agreement(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many rollouts two evaluations drew alike, matched by (question, rollout index): the same
    prediction, and the same rollout (every field of :data:`ROW_FIELDS_COMPARED` equal). Rollouts that only
    one side has are counted, not matched; a key seen twice on one side is refused."""
    sides = []
    for name, rows in (("a", a), ("b", b)):
        keyed: dict[tuple[str, int], dict[str, Any]] = {}
        for r in rows:
            key = (str(r["question_id"]), int(r["rollout"]))
            if key in keyed:
                raise InputError(f"side {name}", f"question {key[0]} rollout {key[1]} appears twice")
            keyed[key] = r
        sides.append(keyed)
    common = sorted(sides[0].keys() & sides[1].keys())
    same_pred = sum(sides[0][k].get("prediction") == sides[1][k].get("prediction") for k in common)
    same_row = sum(all(sides[0][k].get(f) == sides[1][k].get(f) for f in ROW_FIELDS_COMPARED) for k in common)
    return {"matched": len(common), "only_a": len(sides[0]) - len(common), "only_b": len(sides[1]) - len(common),
            "same_prediction": same_pred, "same_rollout": same_row,
            "same_prediction_share": round(same_pred / len(common), 4) if common else None,
            "same_rollout_share": round(same_row / len(common), 4) if common else None}


SHORT_CHAIN_HOPS = 3  # "short chains": the hop counts issue 14's SFT goal is set on (pass@1_max3_hops)


def metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate :func:`evaluate` rows (see the module docstring)."""
    rows = list(rows)
    if not rows:
        return {"questions": 0}
    by_q: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_q[r["question_id"]].append(r)
    out: dict[str, Any] = {
        "questions": len(by_q), "rollouts": len({r["rollout"] for r in rows}),
        "pass@1": _pass1(rows),
        "pass@k": round(sum(any(r["correct"] for r in rs) for rs in by_q.values()) / len(by_q), 4),
        "answer_rate": round(sum(r["stop_reason"] == "answer" for r in rows) / len(rows), 4),
        "format_error_rate": round(sum(r["n_format_errors"] for r in rows)
                                   / max(sum(r["n_model_calls"] for r in rows), 1), 4),
        "tool_calls_per_question": round(statistics.fmean(r["n_tool_calls"] for r in rows), 3),
        "tool_error_rate": round(sum(r["n_tool_errors"] for r in rows) / max(sum(r["n_tool_calls"] for r in rows), 1), 4),
        "stop_reasons": dict(sorted(Counter(r["stop_reason"] for r in rows).items())),
    }
    short = select_questions(rows, max_hops=SHORT_CHAIN_HOPS)
    out[f"pass@1_max{SHORT_CHAIN_HOPS}_hops"] = ({**_pass1(short), "questions": len({r["question_id"] for r in short})}
                                                 if short else None)
    for key in ("hops", "specialty", *(["task_name"] if any("task_name" in r for r in rows) else [])):
        groups: dict[Any, list[dict]] = defaultdict(list)
        for r in rows:
            groups[r.get(key)].append(r)
        out[f"pass@1_by_{key}"] = {"unknown" if g is None else str(g): {**_pass1(rs), "questions": len({r["question_id"] for r in rs})}
                                   for g, rs in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    return out


def by_tool_errors(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rollouts split by whether any tool call failed (``n_tool_errors`` > 0: the tool returned an error, or
    the call repeated an earlier one and got the agent's reminder instead): for each side, how many rollouts,
    how they stopped, and the share right among all of them and among those that answered.

    A policy that invents an entity name gets "unknown id" back; this shows how much of its failure that
    explains (is it right when its calls work?). A repeated-call stop always has a failed call on its side:
    the first repeat's reminder is one. Rows that count their reminders (``n_repeated_calls``, since
    2026-12-06) are also split by the tools' own errors: ``with_tool_rejection`` (a tool returned an error)
    and ``repeats_only`` (every failed call was a repeat).
    """
    rows = list(rows)
    out: dict[str, Any] = {"rollouts": len(rows),
                           "share_with_tool_error": round(sum(r["n_tool_errors"] > 0 for r in rows) / len(rows), 4)
                           if rows else None}
    sides: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
        ("no_tool_error", lambda r: r["n_tool_errors"] == 0), ("with_tool_error", lambda r: r["n_tool_errors"] > 0)]
    if rows and all("n_repeated_calls" in r for r in rows):
        sides += [("with_tool_rejection", lambda r: r["n_tool_errors"] > r["n_repeated_calls"]),
                  ("repeats_only", lambda r: 0 < r["n_tool_errors"] == r["n_repeated_calls"])]
    for side, keep in sides:
        rs = [r for r in rows if keep(r)]
        answered = [r for r in rs if r["stop_reason"] == "answer"]
        out[side] = {
            "rollouts": len(rs),
            "correct_rate": round(sum(bool(r["correct"]) for r in rs) / len(rs), 4) if rs else None,
            "answered": len(answered),
            "correct_rate_when_answered": (round(sum(bool(r["correct"]) for r in answered) / len(answered), 4)
                                           if answered else None),
            "stop_reasons": dict(sorted(Counter(r["stop_reason"] for r in rs).items())),
        }
    return out


def stage_table(stages: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per stage (or model) from its :func:`metrics`: pass@1 with its 95% interval (``ci95 low`` /
    ``ci95 high``; NaN when the metrics predate intervals) and sd over rollouts, pass@k, answer,
    format-error and tool-error rates, tool calls per rollout, and the question and rollout counts."""
    def row(m: dict[str, Any]) -> dict[str, Any]:
        p = m.get("pass@1") or {}
        low, high = p.get("ci95") or (None, None)
        return {"pass@1": p.get("mean"), "ci95 low": low, "ci95 high": high, "pass@1 sd": p.get("sd"),
                "pass@k": m.get("pass@k"), "answer rate": m.get("answer_rate"),
                "format-error rate": m.get("format_error_rate"), "tool calls / rollout": m.get("tool_calls_per_question"),
                "tool-error rate": m.get("tool_error_rate"), "questions": m.get("questions"), "rollouts": m.get("rollouts")}

    return pd.DataFrame({name: row(m) for name, m in stages.items()}).T.astype(float)


def by_group(stages: dict[str, dict[str, Any]], key: str) -> pd.DataFrame:
    """pass@1 per hop count (``key="hops"``) or specialty (``"specialty"``): one column per stage, one
    row per group, from each stage's :func:`metrics` (a group a stage was not scored on is NaN)."""
    if key not in ("hops", "specialty", "task_name"):
        raise ValueError(f"key must be 'hops', 'specialty' or 'task_name', got {key!r}")
    return pd.DataFrame({name: {g: v["mean"] for g, v in m.get(f"pass@1_by_{key}", {}).items()}
                         for name, m in stages.items()}).rename_axis(key)


def paired_table(paired: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """:func:`compare`'s paired differences as a table: mean, 95% interval, questions better / worse."""
    return pd.DataFrame({k: {"mean": v["mean"], "ci95 low": v["ci95"][0], "ci95 high": v["ci95"][1],
                             "questions": v["questions"], "questions better": v["better"],
                             "questions worse": v["worse"]} for k, v in paired.items()}).T


# --------------------------------------------------------------------------- question files


def load_eval_questions(path: str | Path) -> list[dict[str, Any]]:
    """Any question file an evaluation can take, validated the one way (:func:`medkit.records.check_questions`):
    a MedBrowseComp CSV (``.csv``, :func:`medkit.medbrowsecomp.read_medbrowsecomp`) or a JSONL file of the
    kit's records, the paper authors' records or a benchmark's (:func:`medkit.records.load_questions`)."""
    from .medbrowsecomp import read_medbrowsecomp
    from .records import load_questions

    return read_medbrowsecomp(path) if Path(path).suffix.lower() == ".csv" else load_questions(path)


def evaluate_adapter(profile: str, adapter_dir: str | Path | None, questions: Sequence[dict[str, Any]], toolbox: Any,
                     params: dict[str, Any], *, name: str, schemas: list[dict[str, Any]] | None,
                     progress: bool = True) -> dict[str, Any]:
    """The profile's base with ``adapter_dir`` merged in (None: the base alone), through :func:`evaluate`.

    ``params`` are the ``EVAL_*`` settings of notebook 05's stage (with ``SEED``, ``BF16``,
    ``MAX_LENGTH``, ``ENGINE`` and ``ENGINE_PRECISION``), so notebooks 05-07 score every model under
    the same harness settings; the backend comes from :func:`medkit.engine.inference_backend`.
    Returns the rows and their :func:`metrics` with the wall time.
    """
    import time

    from .engine import DEFAULT_ENGINE, resolve_engine
    from .model import has_cuda, release_memory

    if resolve_engine(str(params.get("ENGINE") or DEFAULT_ENGINE), on_gpu=has_cuda()) == "vllm":
        return _evaluate_on_vllm(profile, adapter_dir, questions, toolbox, params, name=name, schemas=schemas,
                                 progress=progress)
    backend = harness_backend(profile, adapter_dir, params, name=name, progress=progress)
    t0 = time.time()
    rows = evaluate(backend, toolbox, questions, k=int(params["EVAL_K"]), config=harness_config(params),
                    seed=int(params["SEED"]), schemas=schemas, progress=progress)
    engine = type(backend).__name__
    del backend
    release_memory()  # the model and its engine (KV cache included) go now, before the next stage builds its own
    return {"rows": rows, "metrics": {**metrics(rows), "seconds": round(time.time() - t0, 1), "engine": engine}}


def harness_backend(profile: str, adapter_dir: str | Path | None, params: dict[str, Any], *, name: str,
                    progress: bool = True) -> Any:
    """The CPU generation backend every stage is evaluated with: the profile's base with ``adapter_dir``
    merged in, on notebook 05's ``ENGINE`` / ``ENGINE_PRECISION`` / ``BF16`` / ``EVAL_BATCH`` /
    ``ENGINE_BATCH`` (:func:`medkit.engine.inference_backend`)."""
    from .engine import DEFAULT_COMPUTE_TYPE, DEFAULT_ENGINE, DEFAULT_ENGINE_BATCH, inference_backend

    return inference_backend(profile, adapter_dir, engine=str(params.get("ENGINE") or DEFAULT_ENGINE),
                             precision=str(params.get("ENGINE_PRECISION") or DEFAULT_COMPUTE_TYPE),
                             bf16=params.get("BF16"), batch_size=int(params["EVAL_BATCH"]),
                             engine_batch=int(params.get("ENGINE_BATCH") or DEFAULT_ENGINE_BATCH),
                             name=f"{name}:{profile}", progress=progress)


def harness_config(params: dict[str, Any]) -> AgentConfig:
    """The agent settings every stage is evaluated with (notebook 05's ``EVAL_*`` parameters)."""
    return AgentConfig(max_calls=int(params["EVAL_MAX_CALLS"]), max_new_tokens=int(params["EVAL_MAX_NEW_TOKENS"]),
                       token_budget=int(params["MAX_LENGTH"]) + 2048, temperature=float(params["EVAL_TEMPERATURE"]))


def _evaluate_on_vllm(profile: str, adapter_dir: str | Path | None, questions: Sequence[dict[str, Any]], toolbox: Any,
                      params: dict[str, Any], *, name: str, schemas: list[dict[str, Any]] | None,
                      progress: bool) -> dict[str, Any]:
    """:func:`evaluate_adapter` on a GPU: the merged model saved once, served by vLLM for the evaluation."""
    import tempfile
    import time

    from .adapters import load_for_inference
    from .vllm_engine import VLLMServer

    model, tokenizer = load_for_inference(profile, adapter_dir, bf16=True)
    with tempfile.TemporaryDirectory(prefix=f"medkit-{name}-") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
        with VLLMServer(folder, log_path=Path(folder).parent / f"medkit-vllm-{name}.log") as backend:
            t0 = time.time()
            rows = evaluate(backend, toolbox, questions, k=int(params["EVAL_K"]), config=harness_config(params),
                            seed=int(params["SEED"]), schemas=schemas, progress=progress)
    return {"rows": rows, "metrics": {**metrics(rows), "seconds": round(time.time() - t0, 1), "engine": "vllm"}}
