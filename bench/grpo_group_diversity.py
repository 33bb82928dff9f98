"""Why GRPO's groups were alike: the same learnable questions sampled 8 times by different policies and paths.

In the 2026-12-05 cpu_long reference run, 6 of GRPO's 8 groups of 8 rollouts were all right or all wrong, though
the pool probe had measured every one of those questions as answered sometimes (success rate strictly between 0
and 1 over 4 rollouts). A group whose rewards are all equal has zero advantage: it teaches nothing. This samples
notebook 06's learnable questions (``data/<profile>/grpo/pool.json``) ``k`` times per question and counts the
questions whose rollouts differ in accuracy, per arm:

* ``sft_evaluation``   — the SFT adapter through notebook 05's evaluation harness at GRPO's rollout settings
  (:func:`medkit.grpo.probe_settings`), as the pool probe samples;
* ``sft_grpo_rollouts`` — the SFT adapter through GRPO's own rollout function (:class:`medkit.grpo.AgentRollouts`
  with its engine copy, :class:`medkit.engine.PolicySync`), one group of ``k`` copies of a question per call, as
  TRL calls it — so a difference between these two arms is the rollout path's;
* ``grpo_mid_evaluation`` / ``grpo_evaluation`` — the GRPO run's adapter after half of its steps
  (``grpo/curve/step-N``) and at the end (``grpo/adapter``) through the evaluation harness — so a difference
  from ``sft_evaluation`` is what the optimizer steps did to the policy.

Reports per arm: questions with differing accuracy, pass@1 (95% bootstrap CI), answer rate, and per question the
number right out of ``k``. Not a speed benchmark: run it alone.

The committed ``results/cpu_long/experiments/grpo_group_diversity.json`` measured the adapters of the first
cpu_long reference run (commit 82e6df0: ``LEARNING_RATE`` 3e-4, no redraws, 8 steps) with arms
``sft_grpo_rollouts,grpo_evaluation,sft_evaluation``: 16, 6 and 16 of the 22 questions with differing accuracy —
GRPO's rollout path samples as varied groups as the evaluation; the optimizer steps made the policy all right or
all wrong per question. A later notebook 06 run replaces those adapters.

``python bench/grpo_group_diversity.py [profile] [k] [arms]`` (defaults: cpu_long 8 all four, comma-separated) ->
``results/<profile>/experiments/grpo_group_diversity.json``.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from medkit import evaluation as E
from medkit import grpo as G
from medkit import io as mio
from medkit import paths, profiles, records
from medkit import tools as T
from medkit.judge import judge
from medkit.questions import question_id

ARMS = ("sft_evaluation", "sft_grpo_rollouts", "grpo_mid_evaluation", "grpo_evaluation")


def learnable_pool(data: Path, pool: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Notebook 06's learnable questions (the pool file's ids, or ``pool`` already read), as training records,
    in pool order."""
    pool = pool if pool is not None else mio.read_json(data / "grpo" / "pool.json")
    train = {question_id(q): q for q in records.load_questions(data / "questions_train.jsonl")}
    missing = [i for i in pool["question_ids"] if i not in train]
    if missing:
        raise SystemExit(f"{data / 'grpo' / 'pool.json'}: {len(missing)} pool ids are not in questions_train.jsonl "
                         f"(e.g. {missing[:3]}): rerun notebook 06 on this data")
    return [train[i] for i in pool["question_ids"]]


def grpo_rollout_rows(profile: str, adapter: Path, questions: list[dict[str, Any]], toolbox: Any,
                      params: dict[str, Any], k: int, scratch: Path) -> list[dict[str, Any]]:
    """``k`` rollouts per question through :class:`medkit.grpo.AgentRollouts` and its engine copy of ``adapter``,
    judged like the evaluation: rows with ``question_id``, ``rollout``, ``correct``, ``prediction``, ``stop_reason``."""
    from medkit.adapters import dequantized_base
    from medkit.llm import eval_mode

    model, tokenizer, _ = G.load_policy(profile, adapter, params)
    quantized = G.policy_quantized(adapter, params)
    rollouts = G.AgentRollouts(toolbox, questions, G.rollout_config(params), schemas=[], export_dir=scratch,
                               base_loader=lambda: dequantized_base(profile, quantized)[0])
    rows = []
    engine = rollouts.engine_for(model, tokenizer, 0) if rollouts.config.engine != "transformers" else None
    with eval_mode(model):
        for step, q in enumerate(questions):  # one call per group, as TRL calls it: k copies of one prompt
            prompt = G.prompt_messages(q, [])
            for j, r in enumerate(rollouts.run(model, tokenizer, [prompt] * k, step=step, engine=engine)):
                s = r.state
                rows.append({"question_id": question_id(q), "rollout": j, "hops": q.get("hops"),
                             "correct": judge(s["prediction"], q, resolve=rollouts.resolve).correct,
                             "prediction": s["prediction"], "stop_reason": s["stop_reason"],
                             "n_tool_calls": s["n_tool_calls"], "n_format_errors": len(s["format_errors"])})
    return rows


def summary(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    from medkit import bootstrap

    right: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        right[r["question_id"]].append(bool(r["correct"]))
    n_answered = sum(r["stop_reason"] == "answer" for r in rows)
    return {"questions": len(right), "rollouts": len(rows),
            "differing_accuracy": sum(0 < sum(v) < len(v) for v in right.values()),
            "all_right": sum(all(v) for v in right.values()), "all_wrong": sum(not any(v) for v in right.values()),
            "pass@1": bootstrap.pass_at_1(rows),
            "answer_rate": round(n_answered / len(rows), 3), "seconds": round(seconds, 1),
            "right_of_k": {q: sum(v) for q, v in right.items()}}


def main(profile: str = "cpu_long", k: str = "8", arms: str = ",".join(ARMS)) -> dict:
    import tempfile

    data = paths.profile_data_dir(profile)
    pool = mio.read_json(data / "grpo" / "pool.json")
    questions = learnable_pool(data, pool)
    _, toolbox = T.open_tools(data)
    params = profiles.resolve(profile, "grpo")
    settings = {**G.probe_settings(profiles.resolve(profile, "sft"), params), "EVAL_K": int(k)}
    mid = sorted((data / "grpo" / "curve").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    adapters = {"sft": data / "sft" / "adapter", "grpo_mid": mid[-1] if mid else None,
                "grpo": data / "grpo" / "adapter"}
    out: dict[str, Any] = {"profile": profile, "k": int(k), "questions": len(questions),
                           "settings": {key: settings[key] for key in ("EVAL_TEMPERATURE", "EVAL_MAX_CALLS",
                                                                       "EVAL_MAX_NEW_TOKENS")},
                           "probe_rates": {question_id(q): pool["rates"][question_id(q)] for q in questions},
                           "adapters": {a: paths.portable(p) if p else None for a, p in adapters.items()}, "arms": {}}
    for arm in arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}: choose from {', '.join(ARMS)}")
        source = arm.rsplit("_evaluation", 1)[0] if arm.endswith("_evaluation") else "sft"
        adapter = adapters[source]
        if adapter is None or not Path(adapter).exists():
            raise SystemExit(f"{arm}: no adapter at {adapter}: run notebooks 05-06 of {profile} first")
        t0 = time.time()
        if arm == "sft_grpo_rollouts":
            with tempfile.TemporaryDirectory() as scratch:
                rows = grpo_rollout_rows(profile, Path(adapter), questions, toolbox, params, int(k), Path(scratch))
        else:
            rows = E.evaluate_adapter(profile, adapter, questions, toolbox, settings, name=arm, schemas=[],
                                      progress=False)["rows"]
        out["arms"][arm] = summary(rows, time.time() - t0)
        print(arm, {a: b for a, b in out["arms"][arm].items() if a != "right_of_k"}, flush=True)
    out["command"] = f"python bench/grpo_group_diversity.py {profile} {k} {arms}"
    out["provenance"] = mio.provenance(params={"profile": profile, "k": int(k), "arms": arms})
    mio.write_json(paths.results_dir(profile) / "experiments" / "grpo_group_diversity.json", out)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:4])
