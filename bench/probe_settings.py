"""GRPO's pool probe under two rollout settings, on the same candidates with the same SFT adapter.

Notebook 06 probes ``POOL_CANDIDATES`` training questions with the starting policy, sampled as GRPO samples its
rollouts, and keeps those answered sometimes (only they give a group rewards that differ). This probes the same
``n`` candidates (notebook 06's selection: training split, <= 3 hops, seeded) x ``k`` rollouts under

* ``cpu``      — the cpu profile's rollout settings (temperature 0.7, 6 model calls, 160 tokens per turn);
* ``cpu_long`` — cpu_long's, which are notebook 05's evaluation settings (temperature 0.3, 10 calls, 160 tokens);

and reports, per arm, the probe pass@1 (95% bootstrap CI), the answer rate, stop reasons and how many candidates
are learnable (never / sometimes / always right), plus the paired difference of pass@1. Not a speed benchmark:
run it alone.

``python bench/probe_settings.py [adapter] [n] [k]`` (defaults: data/cpu/sft/adapter 64 4) ->
``results/cpu/experiments/probe_settings.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from medkit import evaluation as E
from medkit import grpo as G
from medkit import io as mio
from medkit import paths, profiles, records
from medkit import tools as T


def main(adapter: str = "data/cpu/sft/adapter", n: str = "64", k: str = "4") -> dict:
    data = paths.profile_data_dir("cpu")
    eval_params = profiles.resolve("cpu", "sft")
    adapter_dir = paths.REPO_ROOT / adapter if not Path(adapter).is_absolute() else Path(adapter)
    _, toolbox = T.open_tools(data)
    arms = {arm: {**profiles.resolve(arm, "grpo"), "POOL_PROBE_K": int(k)} for arm in ("cpu", "cpu_long")}
    seed, max_hops = arms["cpu"]["SEED"], arms["cpu"]["MAX_HOPS"]
    assert all(a["SEED"] == seed and a["MAX_HOPS"] == max_hops for a in arms.values())
    candidates = G.select_training_questions(records.load_questions(data / "questions_train.jsonl"), int(n),
                                             max_hops=max_hops, seed=seed)
    out: dict = {"adapter": paths.portable(adapter_dir), "candidates": len(candidates), "k": int(k), "arms": {}}
    rows = {}
    for arm, params in arms.items():
        settings = G.probe_settings(eval_params, params)
        r = E.evaluate_adapter("cpu", adapter_dir, candidates, toolbox, settings, name=arm, schemas=[], progress=False)
        rows[arm] = r["rows"]
        learnable, rates = G.learnable_questions(candidates, r["rows"])
        m = r["metrics"]
        out["arms"][arm] = {"settings": {key: settings[key] for key in ("EVAL_TEMPERATURE", "EVAL_MAX_CALLS",
                                                                        "EVAL_MAX_NEW_TOKENS")},
                            "pass@1": m["pass@1"], "answer_rate": m["answer_rate"], "stop_reasons": m["stop_reasons"],
                            "never_right": sum(v == 0 for v in rates.values()),
                            "always_right": sum(v == 1 for v in rates.values()), "learnable": len(learnable),
                            "seconds": m["seconds"]}
        print(arm, out["arms"][arm], flush=True)
    out["paired_cpu_long_minus_cpu"] = E.compare(rows, {"d": ("cpu", "cpu_long")})["d"]
    out["command"] = f"python bench/probe_settings.py {adapter} {n} {k}"
    out["provenance"] = mio.provenance(params={"n": int(n), "k": int(k)})
    mio.write_json(paths.results_dir("cpu") / "experiments" / "probe_settings.json", out)
    print(out["paired_cpu_long_minus_cpu"])
    return out


if __name__ == "__main__":
    main(*sys.argv[1:4])
