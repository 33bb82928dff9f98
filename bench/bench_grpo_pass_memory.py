"""Where one GRPO training pass's memory goes: peak RSS of a forward/backward over a micro batch of
full-length rollouts, by rollouts per pass, gradient checkpointing and whether logits are scored.

Notebook 07's GRPO-from-base ablation peaked at 14.6 GiB in the 2026-12-04 cpu reference run, inside
training. This isolates the training pass from rollouts and the engine: the policy is loaded as
:func:`medkit.grpo.load_policy` loads a fresh nf4 adapter (``START=base``, the ablation's case), then
one pass runs over ``micro`` sequences of ``PROMPT_TOKENS`` prompt + the profile's
``MAX_COMPLETION_LENGTH`` completion tokens (the longest a rollout can be), under the bf16 autocast the
trainer uses where the CPU computes bf16, scoring the completion tokens as TRL's GRPO loss does
(``logits_to_keep``, temperature, ``selective_log_softmax``). Random token ids: memory depends on shapes.

Modes, each in its own process (its peak is its own):

* ``micro2`` — 2 rollouts per pass, the cpu profile's setting before this bench: the baseline;
* ``micro1`` — 1 rollout per pass;
* ``micro2_gc`` / ``micro1_gc`` — with gradient checkpointing (activations recomputed in backward);
* ``micro2_no_logits`` — 2 rollouts, only the last position's logits: the share of the logits.

Reports the pass's peak over the loaded policy, seconds per pass and rollout, and ratios to the
baseline. ``python bench/bench_grpo_pass_memory.py [profile]`` -> ``results/bench/grpo_pass_memory.json``.
"""

from __future__ import annotations

import resource
import time

from medkit import io as mio
from medkit import paths
from medkit.pipeline import bench_entry, run_modes

PROMPT_TOKENS = 700  # system prompt + question, as notebook 06's rollouts start (no tool schemas on cpu)
MODES = {"micro2": (2, False, True), "micro1": (1, False, True), "micro2_gc": (2, True, True),
         "micro1_gc": (1, True, True), "micro2_no_logits": (2, False, False)}
BASELINE = "micro2"


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def run_mode(mode: str, profile: str = "cpu") -> dict:
    import torch
    from peft import get_peft_model
    from trl.trainer.utils import selective_log_softmax

    from medkit import grpo as G
    from medkit import model as M
    from medkit import profiles

    micro, checkpointing, score_logits = MODES[mode]
    params = {**profiles.resolve(profile, "grpo"), "QUANTIZE": "nf4"}
    completion = int(params["MAX_COMPLETION_LENGTH"])
    model, _, peft_config = G.load_policy(profile, None, params)
    model = get_peft_model(model, peft_config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    loaded = _peak_gib()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (micro, PROMPT_TOKENS + completion))
    bf16 = M.use_bf16(params.get("BF16"), on_cuda=False)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                    logits_to_keep=completion + 1 if score_logits else 1)
        if score_logits:
            logits = out.logits[:, :-1, :] / float(params["TEMPERATURE"])
            loss = -selective_log_softmax(logits, ids[:, -completion:]).mean()
        else:
            loss = out.logits.float().mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _peak_gib()
    return {"mode": mode, "rollouts_per_pass": micro, "gradient_checkpointing": checkpointing,
            "scores_logits": score_logits, "tokens_per_rollout": PROMPT_TOKENS + completion, "bf16": bf16,
            "attention": model.config._attn_implementation, "policy_gib": round(loaded, 2),
            "pass_peak_gib": round(peak - loaded, 2), "peak_gib": round(peak, 2),
            "seconds_per_pass": round(seconds, 2), "seconds_per_rollout": round(seconds / micro, 2)}


def main(profile: str = "cpu") -> dict:
    runs = run_modes(__file__, list(MODES), profile)
    base = runs[BASELINE]
    result = {"benchmark": "one GRPO training pass over full-length rollouts (fresh nf4 adapter), by rollouts per pass",
              "profile": profile, "baseline": BASELINE, "runs": runs,
              "over_baseline": {m: {"pass_peak": round(r["pass_peak_gib"] / base["pass_peak_gib"], 2),
                                    "seconds_per_rollout": round(r["seconds_per_rollout"] / base["seconds_per_rollout"], 2)}
                                for m, r in runs.items()}}
    result["provenance"] = mio.provenance(builder="bench/bench_grpo_pass_memory.py")
    mio.write_json(paths.results_dir() / "bench" / "grpo_pass_memory.json", result)
    print({m: (r["pass_peak_gib"], r["seconds_per_rollout"]) for m, r in runs.items()})
    return result


if __name__ == "__main__":
    bench_entry(run_mode, main)
