"""LoRA adapters on disk, between the stages that train them (05 SFT, 06 GRPO) and those that load
them (evaluation, the generation engines).

Scope: what an adapter folder records about its base (:data:`ADAPTER_META`), loading the base a
LoRA delta belongs to (the dequantized nf4 weights for a QLoRA adapter), merging, loading a model
for inference, the learning-curve snapshots (``step-N`` adapter folders) both trainers write, and
the run key that keeps a training folder's checkpoints from being resumed by a different run
(:func:`run_key`, :func:`claim_run`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .io import write_json


ADAPTER_META = "medkit_adapter.json"  # written next to the adapter: which base it was trained on
RUN_KEY = "run_key.json"  # in a training folder: what its checkpoints were trained on (see claim_run)
# parameters that shape only the evaluation of a trained adapter, never the training: changing them keeps the run
EVAL_ONLY_PREFIXES = ("EVAL_", "CURVE_K")


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (e.g. the adapter a run starts from)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_key(rows: Any, params: dict[str, Any], **start: Any) -> str:
    """What a training run's checkpoints depend on, as a short key: its training rows (their JSON), its
    parameters but the evaluation-only ones, and ``start`` (the base model, the adapter it continues)."""
    import hashlib

    from .io import settings_key

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    kept = {k: v for k, v in params.items() if not k.startswith(EVAL_ONLY_PREFIXES)}
    return settings_key({"rows": digest.hexdigest(), "params": kept, "start": start})


def claim_run(run_dir: str | Path, key: str, parts: tuple[str, ...] = ("checkpoints", "curve")) -> list[str]:
    """Make ``run_dir`` this run's: when what is there was trained by another run (another key, or none
    recorded), its ``parts`` (checkpoints, snapshots, logs) are deleted so they are neither resumed nor
    reported as this run's; then ``key`` is recorded. Returns the parts deleted ([] when the folder was
    this run's or empty)."""
    import shutil

    run = Path(run_dir)
    recorded = None
    if (run / RUN_KEY).exists():
        try:
            recorded = json.loads((run / RUN_KEY).read_text(encoding="utf-8")).get("key")
        except (ValueError, AttributeError):
            recorded = None  # unreadable: not this run's
    removed = []
    if recorded != key:
        for name in parts:
            target = run / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            else:
                continue
            removed.append(name)
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / RUN_KEY, {"key": key})
    return removed


def merge_adapter(model: Any, adapter_dir: str | Path) -> Any:
    """The adapter folded into ``model``'s weights; a 4-bit base is dequantized first.

    A QLoRA adapter learned its correction on top of the *quantized* weights. Merged into the
    original full-precision weights instead, it no longer fits: measured on the cpu run, SmolLM2
    wrote valid first tool calls for 6 of 6 training questions with its nf4 base and for 1 of 6
    merged into the fp32 base. Merging into the dequantized nf4 weights keeps the trained model.
    """
    from peft import PeftModel

    if getattr(model, "hf_quantizer", None) is not None:  # still 4-bit (dequantize() clears it, not the flags)
        model = model.dequantize()
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    return merged


def adapter_base(adapter_dir: str | Path) -> dict[str, Any]:
    """What :func:`medkit.sft.save_outputs` recorded about the adapter's base (``{}`` for a foreign adapter)."""
    meta = Path(adapter_dir) / ADAPTER_META
    return json.loads(meta.read_text(encoding="utf-8")) if meta.exists() else {}


def dequantized_base(profile: str, quantized: bool) -> tuple[Any, Any]:
    """(model, tokenizer): the profile's base as a plain float model a LoRA adapter's delta is added to.

    ``quantized``: the 4-bit nf4 weights a QLoRA adapter was trained on, dequantized right after
    loading (bitsandbytes repacks 4-bit weights on CPU at the first forward pass, after which they
    no longer dequantize correctly); otherwise the full-precision base.
    """
    from .model import load_model

    model, tokenizer = load_model(profile, quantize_4bit=quantized)
    if quantized:
        model = model.dequantize()
    return model, tokenizer


def load_for_inference(profile: str, adapter_dir: str | Path | None = None, *,
                       bf16: bool | None = False) -> tuple[Any, Any]:
    """(model, tokenizer) for generation: the profile's base with the adapter merged in.

    An adapter trained with QLoRA (recorded in its folder) is merged into the dequantized 4-bit
    base it was trained on (:func:`merge_adapter`). ``bf16`` casts the result to bfloat16 (None:
    where the hardware computes bf16; the dev machine's CPU generates 1.7x faster so). A missing
    adapter folder is a clear error, not a stack trace from peft.
    """
    from .model import use_bf16

    quantized = False
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").exists():
            raise InputError(adapter_dir, "no LoRA adapter here (adapter_config.json missing); train it in notebook 05")
        quantized = str(adapter_base(adapter_dir).get("quantize") or "").lower() == "nf4"
    model, tokenizer = dequantized_base(profile, quantized)
    if adapter_dir is not None:
        model = merge_adapter(model, adapter_dir)
    if use_bf16(bf16, on_cuda=model.device.type == "cuda"):
        import torch

        model = model.to(torch.bfloat16)
    model.eval()
    return model, tokenizer


def adapter_meta(params: dict[str, Any], *, profile: str | None = None, base_model: str | None = None) -> dict[str, Any]:
    """What :data:`ADAPTER_META` records next to an adapter: the base it was trained on (a QLoRA adapter
    must be merged into the same dequantized 4-bit weights, :func:`merge_adapter`)."""
    return {"profile": params.get("PROFILE", profile), "base_model": base_model, "quantize": params.get("QUANTIZE")}


def curve_steps(total_steps: int, fractions: list[float] | tuple[float, ...]) -> list[int]:
    """Optimizer steps at which the learning curve snapshots the adapter: ``fractions`` of ``total_steps``
    (each in (0, 1]), rounded, at least step 1, without duplicates."""
    bad = [f for f in fractions if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1]
    if bad:
        raise ConfigError(f"learning-curve fractions must be numbers in (0, 1], got {bad}")
    return sorted({max(1, round(total_steps * float(f))) for f in fractions})


def snapshot_callback(steps: list[int], dest: str | Path, meta: dict[str, Any]) -> Any:
    """A TrainerCallback that saves the adapter (with ``meta``) to ``dest/step-N`` after each step in ``steps``.

    A snapshot already on disk is kept (a resumed run does not rewrite it). The snapshots are the
    learning curve's models: each is evaluated like the final adapter.
    """
    from transformers import TrainerCallback

    wanted, root = set(int(s) for s in steps), Path(dest)

    class _Snapshots(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            folder = root / f"step-{state.global_step}"
            if state.global_step in wanted and model is not None and not (folder / ADAPTER_META).exists():
                model.save_pretrained(str(folder))
                write_json(folder / ADAPTER_META, {**meta, "step": state.global_step})

    return _Snapshots()


def snapshots(dest: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete snapshot under ``dest``, in step order."""
    root = Path(dest)
    found = [(int(p.name.split("-")[-1]), p) for p in root.glob("step-*") if (p / ADAPTER_META).exists()] \
        if root.is_dir() else []
    return sorted(found)
