"""SFT throughput and peak memory on this machine: LoRA (fp32 base) vs QLoRA (4-bit nf4 base), and QLoRA
with bf16 autocast (what the cpu profile uses on a CPU with native bf16).

Trains the profile's model (default cpu: SmolLM2-135M) with :mod:`medkit.sft` on ``N`` real
accepted trajectories of notebook 04 for ``STEPS`` optimizer steps (one trajectory per step,
``MAX_LENGTH`` tokens), each mode in its own process so peak memory is its own. Reports
trained tokens per second (all tokens of the sequences, the forward/backward cost), seconds per
step, peak RSS and the model's footprint, and the ratios to the baseline, plain fp32 LoRA.
Writes ``results/bench/sft.json``.
"""

from __future__ import annotations

import tempfile
import time

from medkit import io as mio
from medkit import paths
from medkit.pipeline import bench_entry, run_modes

STEPS = 4
MAX_LENGTH = 4096
MODES = {"lora": (False, False), "qlora": (True, False), "qlora_bf16": (True, True)}  # (4-bit base, bf16 autocast)


def run_mode(mode: str, profile: str = "cpu") -> dict:
    import torch

    from medkit import model as M
    from medkit import sft

    torch.manual_seed(0)
    rows = sft.load_trajectories(paths.profile_data_dir(profile) / "trajectories.jsonl", limit=STEPS)
    four_bit, bf16 = MODES[mode]
    model, tok = M.load_model(profile, for_training=True, quantize_4bit=four_bit)
    footprint = model.get_memory_footprint() / 2**20
    params = dict(SEED=13, EPOCHS=1, MAX_STEPS=STEPS, BATCH_SIZE=1, GRAD_ACCUM=1, LEARNING_RATE=5e-4,
                  WARMUP_STEPS=0, MAX_LENGTH=MAX_LENGTH, SAVE_STEPS=10_000, LORA_R=16, LORA_ALPHA=32, LORA_DROPOUT=0.05, BF16=bf16)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = sft.build_trainer(model, tok, rows, params, tmp)
        tokens = [len(trainer.train_dataset[i]["input_ids"]) for i in range(len(trainer.train_dataset))]
        t0 = time.perf_counter()
        out = sft.train(trainer, resume=False)
        seconds = time.perf_counter() - t0
    return {"mode": mode, "bf16": bf16, "steps": out["steps"], "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / out["steps"], 2), "tokens": sum(tokens),
            "tokens_per_second": round(sum(tokens) / seconds, 1), "model_footprint_mb": round(footprint, 1),
            "peak_rss_mb": M.memory_report()["peak_rss_mb"], "final_loss": out["loss_curve"][-1]["loss"],
            "torch_threads": torch.get_num_threads()}


def main(profile: str = "cpu") -> dict:
    results = run_modes(__file__, MODES, profile)
    base = results["lora"]

    def ratios(r: dict) -> dict:
        return {"tokens_per_second": round(r["tokens_per_second"] / base["tokens_per_second"], 2),
                "peak_rss": round(r["peak_rss_mb"] / base["peak_rss_mb"], 2),
                "model_footprint": round(r["model_footprint_mb"] / base["model_footprint_mb"], 2)}

    result = {"profile": profile, "max_length": MAX_LENGTH, "steps": STEPS, "baseline": "lora", **results,
              "qlora_over_lora": ratios(results["qlora"]), "qlora_bf16_over_lora": ratios(results["qlora_bf16"])}
    mio.write_json(paths.results_dir() / "bench" / "sft.json", result)
    print(result)
    return result


if __name__ == "__main__":
    bench_entry(run_mode, main)
