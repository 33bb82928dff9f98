"""A short GRPO pilot on notebook 06's learnable pool: does a learning rate keep the groups mixed and the KL small?

Runs :func:`medkit.grpo.run_grpo` from the profile's SFT adapter on the learnable questions of notebook 06's last
probe (``data/<profile>/grpo/pool.json``; no new probe) for ``steps`` optimizer steps at ``lr`` with ``redraws``
(dynamic sampling), the profile's other GRPO settings, in a scratch folder. Reports per step the training
rollouts right out of the group, the KL to the SFT adapter, the token entropy and the share of groups with equal
rewards, plus the dynamic-sampling counts and seconds per step. No held-out evaluation: a pilot for choosing
``LEARNING_RATE`` / ``REDRAWS`` before a reference run. Run it alone.

``python bench/grpo_pilot.py [profile] [lr] [redraws] [steps]`` (defaults: cpu_long 3e-5 3 6) ->
``results/<profile>/experiments/grpo_pilot_<lr>_<redraws>.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from medkit import grpo as G
from medkit import io as mio
from medkit import paths, profiles
from medkit import tools as T


def main(profile: str = "cpu_long", lr: str = "3e-5", redraws: str = "3", steps: str = "6") -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from grpo_group_diversity import learnable_pool

    data = paths.profile_data_dir(profile)
    questions = learnable_pool(data)
    _, toolbox = T.open_tools(data)
    params = {**profiles.resolve(profile, "grpo"), "LEARNING_RATE": float(lr), "REDRAWS": int(redraws),
              "MAX_STEPS": int(steps), "CURVE": [], "SAVE_STEPS": 10**6}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        run = G.run_grpo(profile, params, adapter_dir=data / "sft" / "adapter", questions=questions,
                         toolbox=toolbox, out_dir=Path(scratch), schemas=[])
    train, right = run["train"], defaultdict(int)
    for h in run["history"]:
        right[h["step"]] += int(h["rewards"].get("accuracy") or 0)
    out = {"profile": profile, "lr": float(lr), "redraws": int(redraws), "steps": int(steps),
           "questions": len(questions), "seconds": round(time.time() - t0), "seconds_per_step": train["seconds_per_step"],
           "dynamic_sampling": train["dynamic_sampling"],
           "right_of_group_by_step": [right[s] for s in sorted(right)],
           "kl": [round(x.get("kl", 0.0), 4) for x in train["log"]],
           "entropy": [round(x.get("entropy", 0.0), 4) for x in train["log"]],
           "frac_reward_zero_std": [x.get("frac_reward_zero_std") for x in train["log"]],
           "command": f"python bench/grpo_pilot.py {profile} {lr} {redraws} {steps}",
           "provenance": mio.provenance(params={"profile": profile, "lr": lr, "redraws": redraws, "steps": steps})}
    print(out, flush=True)
    mio.write_json(paths.results_dir(profile) / "experiments" / f"grpo_pilot_{lr}_{redraws}.json", out)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:5])
