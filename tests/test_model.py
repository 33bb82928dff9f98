"""Tests of medkit.model: backend choice, specs, the atomic GGUF conversion and the converted model.

The tests at the bottom use the real SmolLM2 conversion in the default medkit cache (the first
run converts, ~30 s and 517 MB; later runs reuse the folder).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medkit import io as mio
from medkit import model as mm
from medkit.errors import ConfigError, MedkitError
from medkit.io import write_json
from medkit.paths import REPO_ROOT

NO_CUDA = not torch.cuda.is_available()

# --------------------------------------------------------------------------- backend selection

CASES = [
    # profile, cuda, unsloth importable, expected
    ("gpu", True, True, "unsloth"),
    ("gpu", True, False, "transformers-4bit"),
    ("gpu", False, True, "transformers-cpu"),
    ("gpu", False, False, "transformers-cpu"),
]
CASES += [(p, cuda, uns, "transformers-cpu") for p in ("smoke", "cpu")
          for cuda in (True, False) for uns in (True, False)]


@pytest.mark.parametrize("profile,cuda,unsloth,expected", CASES)
def test_select_backend_all_combinations(profile: str, cuda: bool, unsloth: bool, expected: str) -> None:
    asked: list[str] = []

    def fake_find_spec(name: str) -> object | None:
        asked.append(name)
        return object() if unsloth else None

    assert mm.select_backend(profile, cuda_available=lambda: cuda, find_spec=fake_find_spec) == expected
    assert set(asked) <= {"unsloth"}
    if not cuda:
        assert asked == []  # no GPU: unsloth is not even looked up


def test_select_backend_broken_find_spec_means_no_unsloth() -> None:
    def raising(name: str) -> None:
        raise ValueError("unsloth.__spec__ is None")

    assert mm.select_backend("gpu", cuda_available=lambda: True, find_spec=raising) == "transformers-4bit"


@pytest.mark.skipif(not NO_CUDA, reason="checks the defaults on a machine without CUDA")
def test_select_backend_defaults_on_this_machine() -> None:
    for profile in ("smoke", "cpu", "gpu"):
        assert mm.select_backend(profile) == "transformers-cpu"


def test_select_backend_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'tpu'"):
        mm.select_backend("tpu", cuda_available=lambda: True, find_spec=lambda n: object())


def test_importing_medkit_model_does_not_import_unsloth_or_transformers() -> None:
    code = (
        "import sys, medkit.model as m\n"
        "assert 'transformers' not in sys.modules, 'import should stay cheap'\n"
        "print(m.select_backend('gpu'), m.model_spec('gpu').name_or_path)\n"
        "m.memory_report()\n"
        "assert 'unsloth' not in sys.modules, 'unsloth was imported'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
    assert not (REPO_ROOT / "unsloth_compiled_cache").exists()


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("profile", ["smoke", "cpu", "cpu_long"])
def test_model_spec_cpu_profiles_use_local_smollm2(profile: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDKIT_CACHE", str(tmp_path))
    spec = mm.model_spec(profile)
    assert spec.profile == profile
    assert spec.local is True
    assert Path(spec.name_or_path) == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert (spec.device, spec.dtype, spec.quantize_4bit) == ("cpu", "float32", False)
    assert spec.bnb_4bit_compute_dtype == "float32"


def test_model_spec_gpu_is_7b_qlora() -> None:
    spec = mm.model_spec("gpu")
    assert spec.local is False
    assert "7B" in spec.name_or_path and "Instruct" in spec.name_or_path
    assert (spec.device, spec.dtype, spec.quantize_4bit) == ("cuda", "bfloat16", True)
    cfg = mm.bnb_config(spec)
    assert cfg.load_in_4bit is True
    assert cfg.bnb_4bit_quant_type == "nf4"
    assert cfg.bnb_4bit_use_double_quant is True
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16


def test_model_spec_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="choose one of smoke, cpu, cpu_long, gpu"):
        mm.model_spec("large")
    with pytest.raises(MedkitError):
        mm.load_model("large")


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_gpu_profile_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(MedkitError, match="the gpu profile needs a CUDA GPU; use PROFILE=cpu"):
        mm.load_model("gpu")
    assert "unsloth" not in sys.modules


def test_memory_report_fields() -> None:
    rep = mm.memory_report()
    assert rep["rss_mb"] is not None and rep["rss_mb"] > 10
    assert rep["peak_rss_mb"] >= rep["rss_mb"] * 0.5
    if NO_CUDA:
        assert rep["cuda_allocated_mb"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_memory_returns_a_fragmented_heap_to_the_os() -> None:
    # ~400 MB of 4 kB blocks (glibc's heap, not pymalloc's arenas); one survivor every 64 blocks keeps the
    # heap from shrinking on its own, as a trainer's leftovers do: free() alone leaves the RSS up
    code = (
        "import psutil, medkit.model as m\n"
        "blocks = [bytes(4000) for _ in range(100_000)]\n"
        "keep = blocks[::64]\n"
        "del blocks\n"
        "held = psutil.Process().memory_info().rss / 2**20\n"
        "out = m.release_memory()\n"
        "print(held, out['rss_mb_before'], out['rss_mb_after'], len(keep))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    held, before, after, kept = (float(x) for x in proc.stdout.split())
    assert kept == 1563
    assert before >= held - 5 and held > 300, "the freed blocks should still be held before the release"
    assert after < before - 250, f"release_memory gave back only {before - after:.0f} MB"


# --------------------------------------------------------------------------- atomic conversion (fake converter)


def _fake_convert(folder: Path) -> None:
    """What a complete conversion leaves behind, without the 30 s model load."""
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    write_json(folder / mm.PROVENANCE_FILE, {"parameters": {"conversion_format": mm.CONVERSION_FORMAT}})


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDKIT_CACHE", str(tmp_path))
    return tmp_path


def test_is_converted_rejects_half_written_folders(cache: Path) -> None:
    target = mm.small_model_dir()
    assert not mm.is_converted(target)          # missing
    target.mkdir(parents=True)
    _fake_convert(target)
    assert mm.is_converted(target)
    (target / "config.json").unlink()           # save_pretrained died before config.json
    assert not mm.is_converted(target)
    _fake_convert(target)
    (target / mm.PROVENANCE_FILE).unlink()      # died before the provenance stamp
    assert not mm.is_converted(target)
    _fake_convert(target)
    (target / "model.safetensors").write_bytes(b"")
    assert not mm.is_converted(target)
    _fake_convert(target)
    (target / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gguf"}}))
    assert not mm.is_converted(target)          # saved while still GGUF-flagged
    _fake_convert(target)
    (target / mm.PROVENANCE_FILE).write_text('{"parameters": {"conversion_f')
    assert not mm.is_converted(target)          # truncated stamp


def test_leftover_temp_folder_is_not_treated_as_converted(cache: Path, monkeypatch) -> None:
    target = mm.small_model_dir()
    leftover = target.parent / f".{target.name}.tmp-dead"
    leftover.mkdir(parents=True)
    _fake_convert(leftover)                     # even a complete-looking temp folder
    assert not mm.is_converted(leftover)
    assert not mm.is_converted(target)
    with pytest.raises(MedkitError, match="re-convert"):
        mm.load_local_checkpoint(target)

    calls: list[Path] = []
    monkeypatch.setattr(mm, "_convert_into", lambda folder: (calls.append(folder), _fake_convert(folder)))
    assert mm.ensure_small_model() == target
    assert len(calls) == 1 and calls[0] != leftover
    assert leftover.exists()                    # fresh: may belong to a running conversion

    old = time.time() - 2 * mio.STALE_TEMP_SECONDS
    os.utime(leftover, (old, old))
    (target / "config.json").unlink()
    mm.ensure_small_model()
    assert not leftover.exists()                # stale: removed on the next conversion


def test_half_written_folder_is_reconverted_not_reused(cache: Path, monkeypatch) -> None:
    target = mm.small_model_dir()
    target.mkdir(parents=True)
    (target / "tokenizer.json").write_text("{}")
    (target / "half.marker").write_text("from a killed run")
    with pytest.raises(MedkitError, match="not a complete converted checkpoint"):
        mm.load_local_checkpoint(target)

    monkeypatch.setattr(mm, "_convert_into", _fake_convert)
    assert mm.ensure_small_model() == target
    assert mm.is_converted(target)
    assert not (target / "half.marker").exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folders left


def test_failed_conversion_leaves_nothing(cache: Path, monkeypatch) -> None:
    def dies_halfway(folder: Path) -> None:
        (folder / "tokenizer.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setattr(mm, "_convert_into", dies_halfway)
    with pytest.raises(RuntimeError, match="killed"):
        mm.ensure_small_model()
    assert not mm.small_model_dir().exists()
    assert list(mm.models_dir().iterdir()) == []


def test_second_call_reuses_folder_without_converting(cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(mm, "_convert_into", _fake_convert)
    first = mm.ensure_small_model()

    def must_not_run(folder: Path) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(mm, "_convert_into", must_not_run)
    t0 = time.perf_counter()
    assert mm.ensure_small_model() == first
    assert time.perf_counter() - t0 < 0.5


# --------------------------------------------------------------------------- the real converted model

PROMPT = [{"role": "user", "content": "What is cystic fibrosis?"}]


@pytest.fixture(scope="module")
def converted() -> Path:
    """The real conversion in the default cache (converts on the first run only)."""
    return mm.ensure_small_model()


@pytest.fixture(scope="module")
def fp32(converted: Path):
    return mm.load_local_checkpoint(converted)


def test_real_second_call_is_fast_and_does_not_reload(converted: Path, monkeypatch) -> None:
    monkeypatch.setattr(mm, "load_gguf", lambda *a, **k: pytest.fail("reloaded the GGUF"))
    t0 = time.perf_counter()
    assert mm.ensure_small_model() == converted
    assert time.perf_counter() - t0 < 1.0


def test_converted_folder_contents_and_provenance(converted: Path) -> None:
    assert mm.is_converted(converted)
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert (converted / "chat_template.jinja").is_file()
    assert (converted / "model.safetensors").stat().st_size > 500e6   # fp32, not Q4
    stamp = json.loads((converted / mm.PROVENANCE_FILE).read_text())["parameters"]
    wheel = mm.wheels.wheel_path(*mm.SMALL_MODEL_WHEEL)
    assert stamp["source_wheel"] == wheel.name
    assert stamp["source_wheel_sha256"] == mm._sha256(wheel)
    assert stamp["gguf_member"] == mm.SMALL_MODEL_GGUF_MEMBER
    assert stamp["versions"]["transformers"] and stamp["versions"]["gguf"]


def test_converted_model_loads_without_gguf_flag(fp32) -> None:
    model, _ = fp32
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert not hasattr(model.config, "quantization_config")
    assert not getattr(model.config, "_is_quantized", False)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_chat_template_renders_chatml(fp32) -> None:
    _, tok = fp32
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is cystic fibrosis?<|im_end|>" in text
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token is not None


@pytest.mark.slow
def test_converted_model_is_trainable(converted: Path) -> None:
    model, tok = mm.load_model("cpu", for_training=True)
    assert model.training and model.config.use_cache is False
    assert getattr(model, "hf_quantizer", None) is None
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    text = tok.apply_chat_template(PROMPT + [{"role": "assistant", "content": "A genetic disease."}], tokenize=False)
    batch = tok(text, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert math.isfinite(out.loss.item()) and out.loss.item() > 0
    out.loss.backward()
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _greedy(model, tok, n: int = 12) -> list[int]:
    enc = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.slow
def test_greedy_generation_matches_the_gguf_load(fp32) -> None:
    gguf_model, gguf_tok = mm.load_gguf(mm.small_model_gguf())
    assert getattr(gguf_model, "hf_quantizer", None) is not None   # really the GGUF-flagged load
    model, tok = fp32
    converted_ids = _greedy(model, tok)
    gguf_ids = _greedy(gguf_model.eval(), gguf_tok)
    assert len(converted_ids) == 12
    assert converted_ids == gguf_ids
    assert "fibrosis" in tok.decode(converted_ids).lower()


@pytest.mark.slow
def test_cpu_4bit_nf4_load(converted: Path, fp32) -> None:
    q_model, q_tok = mm.load_model("cpu", quantize_4bit=True)
    assert getattr(q_model, "is_loaded_in_4bit", False)
    assert q_model.get_memory_footprint() < fp32[0].get_memory_footprint() / 2
    assert len(_greedy(q_model, q_tok, n=3)) == 3


def test_truncated_weights_give_a_reconvert_error(converted: Path, tmp_path: Path) -> None:
    broken = tmp_path / "SmolLM2-135M-Instruct"
    broken.mkdir()
    for f in converted.iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    with open(converted / "model.safetensors", "rb") as src:
        (broken / "model.safetensors").write_bytes(src.read(1 << 20))   # a copy cut short
    assert mm.is_converted(broken)   # looks complete from the outside...
    with pytest.raises(MedkitError, match="cannot load the converted checkpoint.*re-convert"):
        mm.load_local_checkpoint(broken)


def test_unsloth_never_imported_in_this_process() -> None:
    assert "unsloth" not in sys.modules



# --------------------------------------------------------------------------- QLoRA gradients on CPU

QLORA_PROMPT = "Which enzyme deficiency causes phenylketonuria? Answer: phenylalanine hydroxylase."


def _lora(model):
    """The same LoRA on any base: fixed seed, random A and B (so every factor gets a gradient)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _lora_grads(model, ids) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                         if p.requires_grad and p.grad is not None}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def qlora_and_reference(converted: Path):
    """(ids, 4-bit QLoRA model as the trainers load it, the same LoRA on the dequantized 4-bit weights)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    q_model, tok = mm.load_model("cpu", for_training=True, quantize_4bit=True)
    ref_model, _ = mm.load_model("cpu", quantize_4bit=True)
    ref_model = ref_model.dequantize()          # the very weights the 4-bit kernels compute with
    ref_model.config.use_cache = False
    q_peft, ref_peft = _lora(q_model), _lora(ref_model)
    set_peft_model_state_dict(ref_peft, get_peft_model_state_dict(q_peft))
    ids = tok(QLORA_PROMPT, return_tensors="pt").input_ids
    return ids, q_peft, ref_peft


@pytest.mark.slow
def test_qlora_gradients_match_a_dequantized_reference(qlora_and_reference) -> None:
    """LoRA gradients through the CPU 4-bit path equal those through the dequantized weights,
    also after an eval-mode no-grad forward (a GRPO rollout), which repacks 4-bit weights on
    AVX512-BF16 CPUs unless medkit.model.keep_4bit_trainable turned that off."""
    ids, q_peft, ref_peft = qlora_and_reference
    layers = [m for m in q_peft.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)   # set by the training loader
    q_peft.eval()
    with torch.no_grad():
        q_peft(input_ids=ids)                                                  # rollout-style forward
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    ref_loss, ref_grads = _lora_grads(ref_peft, ids)
    loss, grads = _lora_grads(q_peft, ids)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 3 * q_peft.config.num_hidden_layers
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    worst = max(_rel_err(grads[n], ref_grads[n]) for n in grads)
    assert worst < 1e-3, f"worst relative LoRA-gradient error {worst:.2e}"


@pytest.mark.slow
def test_a_repacked_4bit_layer_warns_and_is_refused_for_training(qlora_and_reference) -> None:
    """What keep_4bit_trainable prevents. bitsandbytes repacks a 4-bit layer for CPU inference at its
    first eval-mode no-grad forward (a GRPO rollout) on an AVX512-BF16 CPU; the layer's forward then goes
    through bitsandbytes::gemv_4bit, which has no autograd kernel (PyTorch warns in the backward pass),
    and there the op is a fused C kernel outside autograd. Measured on such a CPU (Intel Xeon,
    2026-12-04): after a real repack, training got 60 of 180 LoRA gradient tensors, with a median
    relative error of 1.0, while the loss agreed with the reference: silently wrong training. Other CPUs
    never repack, and the op's default kernel gives exact gradients even on layers marked repacked by
    hand (measured on an AVX2 CPU: relative error 0). Either way a repacked model is refused."""
    from bitsandbytes.functional import has_avx512bf16
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    ids, q_peft, ref_peft = qlora_and_reference
    ref_loss, ref_grads = _lora_grads(ref_peft, ids)
    if has_avx512bf16():
        model, _ = mm.load_model("cpu", quantize_4bit=True)  # an inference load: repacking left on
        model.config.use_cache = False
        peft = _lora(model)
        set_peft_model_state_dict(peft, get_peft_model_state_dict(ref_peft))  # the same LoRA
        layers = [m for m in peft.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
        peft.eval()
        with torch.no_grad():
            peft(input_ids=ids)                                                  # a rollout: repacks
        assert layers and all(m.weight.quant_state.packing_format_for_cpu for m in layers)
        with pytest.warns(UserWarning, match="autograd kernel was not registered"):
            loss, grads = _lora_grads(peft, ids)
        assert loss == pytest.approx(ref_loss, rel=1e-2)                         # the forward is right ...
        wrong = [n for n in ref_grads if n not in grads or _rel_err(grads[n], ref_grads[n]) > 0.1]
        assert len(wrong) > len(ref_grads) // 2, f"only {len(wrong)} of {len(ref_grads)} gradients wrong"  # ... not the backward
        with pytest.raises(MedkitError, match="already repacked for CPU inference"):
            mm.keep_4bit_trainable(peft)
        return
    layers = [m for m in q_peft.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    try:
        for m in layers:
            m.weight.quant_state.packing_format_for_cpu = True
        with pytest.warns(UserWarning, match="autograd kernel was not registered"):
            loss, grads = _lora_grads(q_peft, ids)
        with pytest.raises(MedkitError, match="already repacked for CPU inference"):
            mm.keep_4bit_trainable(q_peft)
    finally:
        for m in layers:
            m.weight.quant_state.packing_format_for_cpu = False
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    assert max(_rel_err(grads[n], ref_grads[n]) for n in grads) < 1e-3   # the default kernel: still exact
    assert mm.keep_4bit_trainable(q_peft) == len(layers)                  # unmarked again: accepted
