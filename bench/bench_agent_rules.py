"""Do forgiving agent rules help a small policy? Held-out pass@1 of one SFT adapter, paired, under two harnesses.

The cpu policy (SmolLM2-135M after SFT) loses most rollouts to two mechanical failures, counted in the
session-10 cpu run: it misspells a long name it copies from the question ("birdshot chroioretinopathy"),
which the tools answered with an error, and it repeats an earlier call, which stopped the run at once.
This bench evaluates the same adapter on the same held-out questions and rollout seeds under

* ``strict`` — the harness before 2026-12-04: exact names only, the first repeated call ends the run;
* ``forgiving`` — a misspelt name is taken as the one close name (``tools.CLOSE_NAMES``, stated in the
  output) and the first repeat is answered with a reminder (``AgentConfig.max_repeated_calls`` 1);

and reports pass@1 of each with its bootstrap interval, their paired difference, stop reasons, tool-error
and answer rates, and how many tool errors were name errors. The baseline is ``strict`` in the same run.

``python bench/bench_agent_rules.py [profile] [questions] [k] [max_hops]`` (defaults: cpu 60 4 3) ->
``results/bench/agent_rules.json``. Needs notebook 05's SFT adapter (``data/<profile>/sft/adapter``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from typing import Any

from medkit import agent as A
from medkit import bootstrap as B
from medkit import evaluation as E
from medkit import io as mio
from medkit import paths, profiles, records
from medkit import tools as T

ARMS = {"strict": {"close_names": False, "max_repeated_calls": 0},
        "forgiving": {"close_names": True, "max_repeated_calls": 1}}


def summary(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    errors = Counter()
    for r in rows:
        for m in r["messages"]:
            if m["role"] == "tool" and A.is_tool_error(m["content"]):
                text = m["content"]
                kind = ("unknown name or id" if "unknown id or name" in text or "could be resolved" in text
                        else "repeated call" if "identical to an earlier call" in text else "other")
                errors[kind] += 1
    m = E.metrics(rows)
    return {"pass@1": B.pass_at_1(rows), "pass@k": m["pass@k"], "answer_rate": m["answer_rate"],
            "tool_error_rate": m["tool_error_rate"], "tool_calls_per_question": m["tool_calls_per_question"],
            "stop_reasons": m["stop_reasons"], "tool_error_kinds": dict(errors), "seconds": round(seconds, 1)}


def main(profile: str = "cpu", n: int = 60, k: int = 4, max_hops: int = 3) -> dict[str, Any]:
    data = paths.profile_data_dir(profile)
    params = profiles.defaults(profile, "sft")
    adapter = data / "sft" / "adapter"
    questions = E.select_questions(records.load_questions(data / "questions_test.jsonl"), n, max_hops)
    _, toolbox = T.open_tools(data)
    schemas = None if params["TOOLS_IN_PROMPT"] else []
    backend = E.harness_backend(profile, adapter, params, name="sft", progress=False)
    arms: dict[str, Any] = {}
    rows_by_arm = {}
    for arm, rules in ARMS.items():
        toolbox.close_names = rules["close_names"]
        config = dataclasses.replace(E.harness_config(params), max_repeated_calls=rules["max_repeated_calls"])
        t0 = time.time()
        rows = E.evaluate(backend, toolbox, questions, k=k, config=config, seed=int(params["SEED"]),
                          schemas=schemas, progress=False)
        rows_by_arm[arm] = rows
        arms[arm] = {"rules": rules, **summary(rows, time.time() - t0)}
        print(arm, arms[arm]["pass@1"], arms[arm]["stop_reasons"], arms[arm]["tool_error_kinds"], flush=True)
    out = {"bench": "agent_rules", "profile": profile, "adapter": f"data/{profile}/sft/adapter",
           "questions": len(questions), "k": k, "max_hops": max_hops, "temperature": params["EVAL_TEMPERATURE"],
           "baseline": "strict", "arms": arms,
           "paired_forgiving_minus_strict": B.paired_difference(rows_by_arm["strict"], rows_by_arm["forgiving"],
                                                                names=("strict", "forgiving")),
           "provenance": mio.provenance(builder="bench/bench_agent_rules.py")}
    mio.write_json(paths.results_dir() / "bench" / "agent_rules.json", out)
    print(out["paired_forgiving_minus_strict"])
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    main(*(a[:1] or ["cpu"]), *[int(x) for x in a[1:4]])
