"""Tests of medkit.engine: CTranslate2 conversion (cached, atomic, verified), the backend, engine choice.

A tiny random Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer is converted into a
temporary cache: greedy parity with the transformers backend (the reference), the conversion
cache (reused, keyed by the weights, a half-written folder redone), a model that disagrees with
its source rejected, stop strings and per-row limits, seeded sampling, and ``auto`` falling back
to transformers with a note. The real SmolLM2-135M-Instruct checks stop strings in text.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medkit import engine as EN
from medkit import llm
from medkit.errors import ConfigError, MedkitError

pytest.importorskip("ctranslate2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi."}],
    [{"role": "system", "content": "You are a careful clinician answering briefly."},
     {"role": "user", "content": "Which gene is most often mutated in cystic fibrosis?"}],
    [{"role": "system", "content": "You are a careful clinician answering briefly."},
     {"role": "user", "content": "Define anaemia in adults, briefly, and say how it is measured in a clinic."}],
    [{"role": "user", "content": "What is a kinase?"},
     {"role": "assistant", "content": "An enzyme that adds phosphate groups."},
     {"role": "user", "content": "Give one example, please."}],
]


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(EN, "cache_dir", lambda: tmp_path)
    return tmp_path


def test_greedy_output_is_the_transformers_backend_s(tiny_model, tokenizer, cache) -> None:
    reference = llm.LocalTransformersBackend(tiny_model, tokenizer, batch_size=4, progress=False)
    backend = EN.engine_backend(tiny_model, tokenizer, compute_type="float32", batch_size=3, progress=False)
    assert backend.parity["greedy_identical"] == backend.parity["prompts"]
    assert backend.parity["mean_abs_logprob_gap"] < 1e-3
    want = reference.generate(CONVERSATIONS, max_new_tokens=12)
    got = backend.generate(CONVERSATIONS, max_new_tokens=12)
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.n_prompt_tokens for c in got] == [c.n_prompt_tokens for c in want]
    assert all(c.n_completion_tokens == 12 and c.finish_reason == "length" for c in got)


def test_static_prefix_changes_nothing_at_float32(tiny_model, tokenizer, cache) -> None:
    folder = EN.convert(tiny_model, tokenizer, "float32")
    with_prefix = EN.CTranslate2Backend(folder, tokenizer, static_prefix=True, progress=False)
    without = EN.CTranslate2Backend(folder, tokenizer, static_prefix=False, progress=False)
    prompts = [with_prefix.prompt_ids(c) for c in CONVERSATIONS[1:3]]   # same system turn
    assert with_prefix._static_prefix(prompts) > 5 and without._static_prefix(prompts) == 0
    assert with_prefix.generate_ids(prompts, max_new_tokens=10) == without.generate_ids(prompts, max_new_tokens=10)


@pytest.mark.slow
def test_conversion_is_cached_by_weights_and_never_reuses_a_half_written_folder(make_tiny_llama, tiny_model, tokenizer,
                                                                                 cache, monkeypatch) -> None:
    first = EN.convert(tiny_model, tokenizer, "float32")
    assert EN.is_complete(first) and first.parent == cache / "engines"

    def must_not_convert(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(EN, "_InMemoryConverter", must_not_convert)
    assert EN.convert(tiny_model, tokenizer, "float32") == first          # same weights: reused
    other = make_tiny_llama(99)
    with pytest.raises(AssertionError, match="converted again"):
        EN.convert(other, tokenizer, "float32")                           # new weights: a new conversion
    monkeypatch.undo()
    monkeypatch.setattr(EN, "cache_dir", lambda: cache)
    (first / EN.STAMP).unlink()                                           # a conversion killed before its stamp
    assert not EN.is_complete(first)
    again = EN.convert(tiny_model, tokenizer, "float32")
    assert again == first and EN.is_complete(again)
    assert sorted(p.name for p in (cache / "engines").iterdir()) == [first.name]  # no temp folders left


def test_a_converted_model_that_disagrees_with_its_source_is_rejected(make_tiny_llama, tiny_model, tokenizer,
                                                                      cache) -> None:
    folder = EN.convert(tiny_model, tokenizer, "float32")
    impostor = make_tiny_llama(7)                                        # other weights, same architecture
    with pytest.raises(MedkitError, match="disagrees with its source"):
        EN.check_parity(impostor, tokenizer, folder, "float32")
    with pytest.raises(MedkitError, match="disagrees with its source"):
        EN.check_parity(impostor, tokenizer, folder, "float32", greedy=False)     # the cheap check of a re-export


def test_generate_ids_honours_eos_stop_strings_and_per_row_limits(tiny_model, tokenizer, cache) -> None:
    backend = EN.engine_backend(tiny_model, tokenizer, progress=False)
    prompts = [backend.prompt_ids(c) for c in CONVERSATIONS]
    out = backend.generate_ids(prompts, max_new_tokens=[3, 7, 1, 5])
    assert [len(x) for x in out] == [3, 7, 1, 5]
    free = backend.generate_ids(prompts[:1], max_new_tokens=20)[0]
    text = tokenizer.decode(free, skip_special_tokens=True)
    stop = text[len(text) // 2:len(text) // 2 + 2] if len(text) > 4 else None
    if stop and stop.strip():
        cut = backend.generate_ids(prompts[:1], max_new_tokens=20, stop=[stop])[0]
        assert stop in tokenizer.decode(cut, skip_special_tokens=True) and len(cut) <= len(free)
        assert stop not in tokenizer.decode(cut[:-1], skip_special_tokens=True)   # ends at the completing token


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(tiny_model, tokenizer, cache) -> None:
    backend = EN.engine_backend(tiny_model, tokenizer, progress=False)
    a = backend.generate(CONVERSATIONS, max_new_tokens=8, temperature=1.0, seed=5)
    b = backend.generate(CONVERSATIONS, max_new_tokens=8, temperature=1.0, seed=5)
    c = backend.generate(CONVERSATIONS, max_new_tokens=8, temperature=1.0, seed=6)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]


def test_engine_choice_and_the_auto_fallback(tiny_model, tokenizer, cache, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="unknown ENGINE"):
        EN.make_backend("vllm-cpu", tiny_model, tokenizer)
    with pytest.raises(ConfigError, match="ENGINE_PRECISION"):
        EN.make_backend("ctranslate2", tiny_model, tokenizer, compute_type="int4")
    assert isinstance(EN.make_backend("transformers", tiny_model, tokenizer), llm.LocalTransformersBackend)
    monkeypatch.setattr("medkit.openvino_engine.available", lambda: False)  # auto: OpenVINO first, then CTranslate2
    assert isinstance(EN.make_backend("auto", tiny_model, tokenizer, progress=False), EN.CTranslate2Backend)

    notes: list[str] = []
    monkeypatch.setattr(EN, "ctranslate2_available", lambda: False)      # the engine is not installed
    with pytest.raises(ConfigError, match="needs the ctranslate2 package"):
        EN.make_backend("ctranslate2", tiny_model, tokenizer)
    fallback = EN.make_backend("auto", tiny_model, tokenizer, echo=notes.append)
    assert isinstance(fallback, llm.LocalTransformersBackend)
    assert len(notes) == 1 and "falls back to transformers" in notes[0] and "ctranslate2" in notes[0]


def test_an_unsupported_architecture_is_a_one_line_error(tokenizer, cache, monkeypatch) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ConfigError, match="GPT2LMHeadModel is not an architecture"):
        EN.convert(gpt2, tokenizer)
    notes: list[str] = []
    monkeypatch.setattr("medkit.paths.cache_dir", lambda: cache)
    assert isinstance(EN.make_backend("auto", gpt2, tokenizer, echo=notes.append), llm.LocalTransformersBackend)
    assert notes and "GPT2LMHeadModel" in notes[0]


@pytest.mark.slow
def test_smollm2_stops_at_the_agent_s_stop_strings() -> None:
    """The real model through the engine: a reply cut at ``</tool_call>`` ends exactly there."""
    from medkit import agent as A

    backend = llm.backend_from_config({"type": "local", "profile": "cpu", "progress": False, "engine": "ctranslate2"})
    assert isinstance(backend, EN.CTranslate2Backend)
    conv = [{"role": "system", "content": "Reply with <tool_call>{\"name\": \"search\"}</tool_call> and nothing else."},
            {"role": "user", "content": "Search for Marfan syndrome."}]
    out = backend.generate([conv], max_new_tokens=48, stop=A.STOP_STRINGS)[0]
    assert out.ok and all(s not in out.text for s in A.STOP_STRINGS)
    assert out.n_completion_tokens <= 48


# --------------------------------------------------------------------------- the policy being trained (GRPO)


def _lora(model):
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # a non-zero delta
    return get_peft_model(copy.deepcopy(model), cfg).eval()


def test_lora_deltas_plus_the_base_are_the_merged_adapter(tiny_model, tokenizer) -> None:
    policy = _lora(tiny_model)
    deltas = EN.lora_deltas(policy)
    assert len(deltas) == 2 * 7                                           # 2 layers x 7 projections
    base = tiny_model.state_dict()
    merged = policy.merge_and_unload().state_dict()
    for name, delta in deltas.items():
        assert delta.abs().max() > 0
        assert torch.allclose(base[name] + delta, merged[name], atol=1e-6)


def test_a_qlora_policy_exports_as_its_fresh_merge_even_after_forward_passes(tiny_model, tokenizer, tmp_path) -> None:
    """bitsandbytes repacks 4-bit weights on CPU at the first forward: the export must not depend on them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_model.save_pretrained(tmp_path / "tiny")

    def nf4():
        return AutoModelForCausalLM.from_pretrained(
            tmp_path / "tiny", device_map={"": "cpu"}, dtype=torch.float32,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_compute_dtype=torch.float32))

    policy = _lora(nf4())
    ids = torch.tensor([tokenizer("Fabry disease shows angiokeratomas.")["input_ids"]])
    with torch.no_grad():
        policy(input_ids=ids)                                             # training has run: weights repacked
    policy.save_pretrained(tmp_path / "adapter")
    sync = EN.PolicySync(nf4().dequantize(), tokenizer, tmp_path / "exports")
    sync.backend(policy, 0)
    exported = sync.export.state_dict()
    fresh = PeftModel.from_pretrained(nf4().dequantize(), str(tmp_path / "adapter")).merge_and_unload().state_dict()
    assert all(torch.allclose(exported[k], fresh[k], atol=1e-5) for k in fresh if k in exported)


@pytest.mark.slow
def test_policy_sync_exports_every_n_steps_and_keeps_one_export(tiny_model, tokenizer, tmp_path) -> None:
    import copy

    policy = _lora(tiny_model)
    sync = EN.PolicySync(copy.deepcopy(tiny_model), tokenizer, tmp_path / "exports", every=2)
    first = sync.backend(policy, 0)
    assert sync.backend(policy, 1) is first                               # within N steps: the same export
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)                                              # an optimizer step changed the policy
    second = sync.backend(policy, 2)
    assert second is not first and second.folder != first.folder
    assert not first.folder.exists() and [p.name for p in (tmp_path / "exports").iterdir()] == [second.folder.name]
    assert [s["step"] for s in sync.syncs] == [0, 2] and all(s["mean_abs_logprob_gap"] < 1e-3 for s in sync.syncs)
    want = llm.LocalTransformersBackend(policy.merge_and_unload(), tokenizer, progress=False)
    assert [c.text for c in second.generate(CONVERSATIONS, max_new_tokens=8)] == \
        [c.text for c in want.generate(CONVERSATIONS, max_new_tokens=8)]
    with pytest.raises(ConfigError, match="ENGINE_SYNC_STEPS"):
        EN.PolicySync(tiny_model, tokenizer, tmp_path, every=0)


def test_length_buckets_bound_batch_size_and_length_spread():
    lengths = [300, 12, 310, 900, 15, 305, 2000, 20]
    assert EN.length_buckets(lengths, 3, None) == [[1, 4, 7], [0, 5, 2], [3, 6]]
    buckets = EN.length_buckets(lengths, 8, 64)
    assert buckets == [[1, 4, 7], [0, 5, 2], [3], [6]]
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))


def test_engine_precision_auto_is_bf16_on_openvino_where_the_cpu_has_it(monkeypatch) -> None:
    from medkit import model as M

    monkeypatch.setattr(M, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert EN.resolve_precision("auto", "openvino") == "bf16"
    assert EN.resolve_precision("auto", "ctranslate2") == "float32"  # CTranslate2 has no bf16 path here
    monkeypatch.setattr(M, "cpu_has_bf16", lambda cpuinfo=None: False)
    assert EN.resolve_precision("auto", "openvino") == "float32"
    assert EN.resolve_precision("int8", "ctranslate2") == "int8"
    for precision, engine in (("int8", "openvino"), ("bf16", "ctranslate2")):
        with pytest.raises(ConfigError, match=f"not available on ENGINE='{engine}'"):
            EN.resolve_precision(precision, engine)
    with pytest.raises(ConfigError, match="unknown ENGINE_PRECISION 'fp16'"):
        EN.resolve_precision("fp16", "openvino")
