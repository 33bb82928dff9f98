"""SFT throughput and peak memory on this machine, on the longest real trajectories the cpu profile trains on.

Modes (each in its own process, so peak memory is its own):

* ``lora``      plain LoRA on the fp32 base
* ``lora_gc``   plain LoRA with gradient checkpointing
* ``qlora``     QLoRA (4-bit nf4 base) — the baseline: the cpu profile's SFT setting until 2026-12-03
* ``qlora_gc``  QLoRA with gradient checkpointing (activations recomputed in the backward pass)
* ``qlora_bf16`` QLoRA with bf16 autocast — only where the CPU computes bf16 natively
* ``lora_d0`` / ``lora_gc_d0``: as ``lora`` / ``lora_gc`` without LoRA dropout (peft then skips the
  dropout layer: a profile of the cpu SFT step put 12% of its time in ``dropout``)

``python bench/bench_sft.py [profile] [mode ...]`` runs the named modes only and merges them into
the existing JSON (each mode records when it ran), so a new mode does not re-measure the others.

Trains the profile's model (SmolLM2-135M) with :mod:`medkit.sft` on the ``STEPS`` longest accepted
trajectories of notebook 04 as SFT sees them (no tool-schema block, ``MAX_LENGTH`` 3,072: the cpu
profile's settings), one trajectory per optimizer step. Reports trained tokens per second (all
tokens of the sequences, the forward/backward cost), seconds per step, peak RSS and the model's
footprint, and the ratios to the baseline. Writes ``results/bench/sft.json``.
"""

from __future__ import annotations

import tempfile
import time

from medkit import io as mio
from medkit import paths
from medkit.pipeline import bench_entry, run_modes

STEPS = 4
MAX_LENGTH = 3072
BASELINE = "qlora"
MODES = {  # (4-bit base, bf16 autocast, gradient checkpointing, LoRA dropout)
    "lora": (False, False, False, 0.05), "lora_gc": (False, False, True, 0.05),
    "lora_d0": (False, False, False, 0.0), "lora_gc_d0": (False, False, True, 0.0),
    "qlora": (True, False, False, 0.05), "qlora_gc": (True, False, True, 0.05), "qlora_bf16": (True, True, False, 0.05)}


def longest_rows(profile: str, n: int, tokenizer) -> list[dict]:
    """The ``n`` longest trajectories (tokens as SFT sees them) that fit ``MAX_LENGTH``."""
    from medkit import sft

    rows = sft.without_tool_schemas(sft.load_trajectories(paths.profile_data_dir(profile) / "trajectories.jsonl"))
    sized = [(len(sft.encode(tokenizer, r)["input_ids"]), i) for i, r in enumerate(rows)]
    keep = sorted((t, i) for t, i in sized if t <= MAX_LENGTH)[-n:]
    return [rows[i] for _, i in sorted(keep, key=lambda x: x[1])]


def run_mode(mode: str, profile: str = "cpu") -> dict:
    import torch

    from medkit import model as M
    from medkit import sft

    torch.manual_seed(0)
    four_bit, bf16, gc, dropout = MODES[mode]
    model, tok = M.load_model(profile, for_training=True, quantize_4bit=four_bit)
    sft.prepare_tokenizer(tok)
    rows = longest_rows(profile, STEPS, tok)
    footprint = model.get_memory_footprint() / 2**20
    params = dict(SEED=13, EPOCHS=1, MAX_STEPS=STEPS, BATCH_SIZE=1, GRAD_ACCUM=1, LEARNING_RATE=5e-4, CURRICULUM="none",
                  WARMUP_STEPS=0, MAX_LENGTH=MAX_LENGTH, SAVE_STEPS=10_000, LORA_R=16, LORA_ALPHA=32, LORA_DROPOUT=dropout,
                  BF16=bf16, GRADIENT_CHECKPOINTING=gc)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = sft.build_trainer(model, tok, rows, params, tmp)
        tokens = [len(trainer.train_dataset[i]["input_ids"]) for i in range(len(trainer.train_dataset))]
        t0 = time.perf_counter()
        out = sft.train(trainer, resume=False)
        seconds = time.perf_counter() - t0
    return {"mode": mode, "bf16": bf16, "gradient_checkpointing": gc, "lora_dropout": dropout, "steps": out["steps"],
            "measured_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "seconds": round(seconds, 1), "seconds_per_step": round(seconds / out["steps"], 2), "tokens": sum(tokens),
            "max_tokens": max(tokens), "tokens_per_second": round(sum(tokens) / seconds, 1),
            "model_footprint_mb": round(footprint, 1), "peak_rss_mb": M.memory_report()["peak_rss_mb"],
            "final_loss": out["loss_curve"][-1]["loss"], "torch_threads": torch.get_num_threads()}


def main(profile: str = "cpu", *only: str) -> dict:
    import json

    from medkit.model import cpu_has_bf16

    unknown = [m for m in only if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; known: {list(MODES)}")
    modes = [m for m in (only or MODES) if m != "qlora_bf16" or cpu_has_bf16()]
    out_path = paths.results_dir() / "bench" / "sft.json"
    earlier = json.loads(out_path.read_text()) if only and out_path.exists() else {}
    results = {m: earlier[m] for m in MODES if isinstance(earlier.get(m), dict) and "mode" in earlier[m]}
    results.update(run_modes(__file__, modes, profile))
    if BASELINE not in results:
        raise SystemExit(f"no {BASELINE} result to compare with: run the baseline mode too")
    base = results[BASELINE]

    def ratios(r: dict) -> dict:
        return {"tokens_per_second": round(r["tokens_per_second"] / base["tokens_per_second"], 2),
                "peak_rss": round(r["peak_rss_mb"] / base["peak_rss_mb"], 2),
                "model_footprint": round(r["model_footprint_mb"] / base["model_footprint_mb"], 2)}

    result = {"profile": profile, "max_length": MAX_LENGTH, "steps": STEPS, "baseline": BASELINE,
              "cpu_has_bf16": cpu_has_bf16(), **results,
              "over_baseline": {m: ratios(r) for m, r in results.items() if m != BASELINE}}
    mio.write_json(out_path, result)
    print(result)
    return result


if __name__ == "__main__":
    bench_entry(run_mode, main)
