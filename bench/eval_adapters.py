"""A profile's SFT and SFT+GRPO adapters on more held-out questions than its notebooks score, paired.

The cpu profile's notebooks score 12 held-out questions x 3 rollouts (its 60-minute budget), which cannot
resolve a pass@1 below ~0.1. This scores notebook 05's and 06's adapters of ``profile`` on the first ``n``
held-out questions of at most ``max_hops`` hops x ``k`` rollouts, under notebook 05's harness settings, and
reports each stage's pass@1 with its 95% bootstrap interval (overall and per hop) and the paired difference
SFT+GRPO - SFT over the same questions. Not a speed benchmark: run it after a reference run, alone.

``python bench/eval_adapters.py [profile] [n] [k] [max_hops]`` (defaults: cpu 60 4 3) ->
``results/<profile>/experiments/eval<n>_needed_hops.json``.
"""

from __future__ import annotations

import sys

from medkit import evaluation as E
from medkit import io as mio
from medkit import paths, profiles, records
from medkit import tools as T


def main(profile: str = "cpu", n: str = "60", k: str = "4", max_hops: str = "3") -> dict:
    data = paths.profile_data_dir(profile)
    params = {**profiles.resolve(profile, "sft"), "EVAL_K": int(k)}
    qs = E.select_questions(records.load_questions(data / "questions_test.jsonl"), int(n), max_hops=int(max_hops))
    _, toolbox = T.open_tools(data)
    schemas = None if params.get("TOOLS_IN_PROMPT") else []
    out: dict = {"questions": len(qs), "k": int(k), "max_hops": int(max_hops), "hops": {}, "stages": {}}
    for q in qs:
        out["hops"][str(q["hops"])] = out["hops"].get(str(q["hops"]), 0) + 1
    rows = {}
    for name, adapter in (("sft", data / "sft" / "adapter"), ("sft+grpo", data / "grpo" / "adapter")):
        r = E.evaluate_adapter(profile, adapter, qs, toolbox, params, name=name, schemas=schemas, progress=False)
        rows[name] = r["rows"]
        m = r["metrics"]
        out["stages"][name] = {key: m[key] for key in ("pass@1", "pass@k", "answer_rate", "format_error_rate",
                                                      "tool_calls_per_question", "stop_reasons", "pass@1_by_hops", "seconds")}
        print(name, m["pass@1"], m["answer_rate"], m["stop_reasons"], flush=True)
    out["paired_grpo_minus_sft"] = E.compare(rows, {"d": ("sft", "sft+grpo")})["d"]
    out["command"] = f"python bench/eval_adapters.py {profile} {n} {k} {max_hops}"
    out["provenance"] = mio.provenance(params={key: v for key, v in params.items() if key.startswith("EVAL")})
    mio.write_json(paths.results_dir(profile) / "experiments" / f"eval{n}_needed_hops.json", out)
    print(out["paired_grpo_minus_sft"])
    return out


if __name__ == "__main__":
    main(*sys.argv[1:5])
