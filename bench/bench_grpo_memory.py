"""Where GRPO's memory goes, and what bounds it: peak memory and seconds per step of one GRPO step
with a group of 8 rollouts, by how many rollouts one forward/backward pass holds.

TRL's GRPOTrainer runs the loss over ``per_device_train_batch_size`` rollouts at once; medkit's
``MICRO_BATCH`` sets it (default: the whole group), accumulating gradients to the same optimizer
step. The activations of a pass grow with the tokens it holds (rollouts x ~1,000 tokens), so the
whole group of 8 is what made notebook 06 peak at 16-18 GB on the first cpu runs
(``results/bench/grpo.json``, groups of 4). Modes, each in its own process so its peak is its own,
all from notebook 05's SFT adapter of ``profile`` (default ``cpu_long``) with that profile's GRPO
settings, ``STEPS`` optimizer steps of 1 question x 8 rollouts:

* ``g8_whole`` — the 8 rollouts in one pass (MICRO_BATCH = 8): the baseline;
* ``g8_micro2`` — 4 passes of 2 rollouts;
* ``g8_micro2_gc`` — 4 passes of 2 with gradient checkpointing.

Reports peak RSS, seconds per step, rollout share and the ratios to the baseline. Writes
``results/bench/grpo_memory.json``; ``python bench/bench_grpo_memory.py cpu_long g8_micro2`` reruns
one mode and merges it into the file.
"""

from __future__ import annotations

import json

from medkit import io as mio
from medkit import paths
from medkit.pipeline import bench_entry, run_modes

STEPS = 1
GROUP = 8
MODES = {"g8_whole": {"MICRO_BATCH": 8, "GRADIENT_CHECKPOINTING": False},
         "g8_micro2": {"MICRO_BATCH": 2, "GRADIENT_CHECKPOINTING": False},
         "g8_micro2_gc": {"MICRO_BATCH": 2, "GRADIENT_CHECKPOINTING": True}}
BASELINE = "g8_whole"


def run_mode(mode: str, profile: str = "cpu_long") -> dict:
    from bench_grpo import timed_grpo  # bench/ is on the path: run_modes runs this file as a script

    from medkit import profiles

    params = {**profiles.resolve(profile, "grpo"), **MODES[mode], "NUM_GENERATIONS": GROUP, "QUESTIONS_PER_STEP": 1,
              "MAX_STEPS": STEPS, "SAVE_STEPS": 10_000, "CURVE": []}
    return {"mode": mode, **MODES[mode], "group": GROUP, **timed_grpo(profile, params)}


def main(profile: str = "cpu_long", *only: str) -> dict:
    unknown = [m for m in only if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; known: {list(MODES)}")
    out_path = paths.results_dir() / "bench" / "grpo_memory.json"
    earlier = json.loads(out_path.read_text()).get("runs", {}) if only and out_path.exists() else {}
    runs = {m: earlier[m] for m in MODES if m in earlier}
    runs.update(run_modes(__file__, list(only or MODES), profile))
    if BASELINE not in runs:
        raise SystemExit(f"no {BASELINE} result to compare with: run the baseline mode too")
    base = runs[BASELINE]
    result = {"benchmark": "one GRPO step, 1 question x 8 rollouts, by rollouts per forward/backward pass",
              "profile": profile, "steps": STEPS, "group": GROUP, "baseline": BASELINE, "runs": runs,
              "over_baseline": {m: {"peak_rss": round(r["peak_rss_mb"] / base["peak_rss_mb"], 2),
                                    "seconds_per_step": round(r["seconds_per_step"] / base["seconds_per_step"], 2)}
                                for m, r in runs.items()}}
    mio.write_json(out_path, result)
    print(result)
    return result


if __name__ == "__main__":
    bench_entry(run_mode, main)
