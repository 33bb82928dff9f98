"""GRPO cost on this machine: seconds per step, rollouts per second and peak memory.

Runs :func:`medkit.grpo.run_grpo` for ``STEPS`` optimizer steps with the cpu profile's GRPO
settings from notebook 05's SFT adapter (SmolLM2-135M on its nf4 base), each mode in its own
process so peak memory is its own: ``qlora_bf16`` (bf16 autocast for rollouts and training,
rollouts by the policy itself: the cpu profile before the engine, the baseline),
``qlora_bf16_openvino`` (the same training, rollouts by an OpenVINO GenAI copy of the policy —
float16 weights, bf16 compute where the CPU has it (ENGINE_PRECISION=auto) — exported after every
optimizer step: ENGINE=auto on CPU) and
``qlora_bf16_ctranslate2`` (rollouts by a CTranslate2 float32 copy). Reports seconds per step, the share spent rolling out (multi-turn generation + tool calls +
policy exports) vs the policy update, rollouts per second, policy tokens per rollout, the export
cost, and the ratios to the baseline. Writes ``results/bench/grpo.json``.
"""

from __future__ import annotations

import tempfile
import time

from medkit import io as mio
from medkit import paths
from medkit.pipeline import bench_entry, run_modes

STEPS = 2
MODES = {"qlora_bf16": (True, "transformers"),  # (bf16 autocast, engine)
         "qlora_bf16_openvino": (True, "openvino"),
         "qlora_bf16_ctranslate2": (True, "ctranslate2")}
BASELINE = "qlora_bf16"


def timed_grpo(profile: str, params: dict) -> dict:
    """One :func:`medkit.grpo.run_grpo` from the profile's SFT adapter on its training pool, in a scratch
    folder: the cost figures every GRPO benchmark reports (also used by ``bench_grpo_memory.py``)."""
    import torch

    from medkit import grpo as G
    from medkit import model as M
    from medkit import tools as T

    data = paths.profile_data_dir(profile)
    questions = G.select_training_questions(mio.read_jsonl(data / "questions_train.jsonl"), params["N_QUESTIONS"],
                                            max_hops=params["MAX_HOPS"], seed=params["SEED"])
    _, toolbox = T.open_tools(data)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = G.run_grpo(profile, params, adapter_dir=data / "sft" / "adapter", questions=questions, toolbox=toolbox,
                         out_dir=tmp, schemas=[])
        seconds = time.perf_counter() - t0
    out, hist = run["train"], run["history"]
    n = len(hist)
    return {"engine": out["engine"], "steps": out["steps"], "rollouts": n,
            "engine_sync_seconds": out["engine_sync_seconds"], "engine_syncs": out["engine_syncs"],
            "seconds": round(seconds, 1), "seconds_per_step": round(out["seconds"] / max(out["steps"], 1), 1),
            "rollout_seconds": out["rollout_seconds"], "rollout_share": round(out["rollout_seconds"] / out["seconds"], 3),
            "rollouts_per_second": out["rollouts_per_second"],
            "policy_tokens_per_rollout": round(sum(h["n_policy_tokens"] for h in hist) / max(n, 1), 1),
            "completion_tokens_per_rollout": round(sum(h["n_completion_tokens"] for h in hist) / max(n, 1), 1),
            "max_completion_tokens": max((h["n_completion_tokens"] for h in hist), default=0),
            "tool_calls_per_rollout": round(sum(h["n_tool_calls"] for h in hist) / max(n, 1), 2),
            "peak_rss_mb": M.memory_report()["peak_rss_mb"], "torch_threads": torch.get_num_threads()}


def run_mode(mode: str, profile: str = "cpu") -> dict:
    from medkit import profiles

    bf16, engine = MODES[mode]
    params = {**profiles.resolve(profile, "grpo"), "MAX_STEPS": STEPS, "BF16": bf16, "ENGINE": engine,
              "SAVE_STEPS": 10_000}
    return {"mode": mode, "bf16": bf16, **timed_grpo(profile, params)}


def main(profile: str = "cpu", modes: list[str] | None = None) -> dict:
    runs = run_modes(__file__, modes or list(MODES), profile)
    base = runs[BASELINE]
    result = {"benchmark": "GRPO steps with token-level multi-turn tool rollouts (medkit.grpo.run_grpo)",
              "profile": profile, "steps": STEPS, "baseline": BASELINE, "runs": runs,
              "over_baseline": {m: {"seconds_per_step": round(r["seconds_per_step"] / base["seconds_per_step"], 2),
                                    "rollouts_per_second": round(r["rollouts_per_second"] / base["rollouts_per_second"], 2),
                                    "peak_rss": round(r["peak_rss_mb"] / base["peak_rss_mb"], 2)}
                                for m, r in runs.items()}}
    mio.write_json(paths.results_dir() / "bench" / "grpo.json", result)
    print(result)
    return result


if __name__ == "__main__":
    bench_entry(run_mode, main)
