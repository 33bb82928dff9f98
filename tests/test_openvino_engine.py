"""Tests of medkit.openvino_engine: the GGUF export (weights, rotary layout, cache), the backend, parity.

A tiny random Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer is exported into a
temporary cache: the GGUF read back by transformers' own GGUF loader gives the model's weights
(so the rotary layout is right), the export cache (reused, keyed by the weights, a half-written
folder redone), per-row limits, seeded sampling (each row its own seed), the engine choice
(``auto`` is OpenVINO on CPU), PolicySync exporting to OpenVINO. The real SmolLM2-135M-Instruct
checks greedy parity with the transformers backend and the agent's stop strings.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from medkit import engine as EN
from medkit import llm
from medkit import openvino_engine as OV
from medkit.errors import ConfigError, MedkitError

pytest.importorskip("openvino_genai")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi."}],
    [{"role": "system", "content": "You are a careful clinician answering briefly."},
     {"role": "user", "content": "Which gene is most often mutated in cystic fibrosis?"}],
    [{"role": "user", "content": "What is a kinase?"},
     {"role": "assistant", "content": "An enzyme that adds phosphate groups."},
     {"role": "user", "content": "Give one example, please."}],
]


@pytest.fixture(scope="module")
def tiny_model(make_tiny_llama):
    """Tied embeddings and an explicit rope theta: what the GGUF export must carry over."""
    return make_tiny_llama(1234, tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


@pytest.mark.slow
def test_the_gguf_holds_the_model_s_weights_in_transformers_layout(tiny_model, tokenizer, tmp_path) -> None:
    """transformers' GGUF loader undoes llama's rotary layout: reading the export back gives the weights."""
    from transformers import AutoModelForCausalLM

    folder = OV.export(tiny_model, tokenizer, root=tmp_path)
    back = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=OV.GGUF_FILE, dtype=torch.float32)
    want, got = tiny_model.state_dict(), back.state_dict()
    assert back.config.num_hidden_layers == 2 and back.config.num_key_value_heads == 2
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.allclose(got[name], want[name], atol=2e-3, rtol=1e-3), name   # float16 matrices


@pytest.mark.slow
def test_export_is_cached_by_weights_and_never_reuses_a_half_written_folder(tiny_model, tokenizer, tmp_path) -> None:
    first = OV.export(tiny_model, tokenizer, root=tmp_path)
    stamp = (first / OV.STAMP).stat().st_mtime_ns
    assert OV.export(tiny_model, tokenizer, root=tmp_path) == first and (first / OV.STAMP).stat().st_mtime_ns == stamp
    (first / OV.STAMP).unlink()                                           # as a run killed before the stamp leaves it
    assert not OV.is_complete(first)
    assert OV.export(tiny_model, tokenizer, root=tmp_path) == first and OV.is_complete(first)
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.model.norm.weight.add_(0.5)
    assert OV.export(other, tokenizer, root=tmp_path) != first


@pytest.mark.slow
def test_one_torch_thread_still_builds_a_pipeline_on_two_threads(tiny_model, tokenizer, tmp_path) -> None:
    """OpenVINO 2026.4.1's CPU plugin dies (SIGFPE) building a pipeline with INFERENCE_NUM_THREADS 1 on AMX
    Xeons; a process limited to one torch thread (OMP_NUM_THREADS=1) still gets 2 where there are 2 cores."""
    import os

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backend = OV.OpenVINOBackend(OV.export(tiny_model, tokenizer, root=tmp_path), tokenizer, progress=False)
    finally:
        torch.set_num_threads(before)
    assert backend.threads == min(2, os.cpu_count() or 1)
    assert len(backend.generate_ids([backend.prompt_ids(CONVERSATIONS[0])], max_new_tokens=2, min_new_tokens=2)[0]) == 2


@pytest.mark.slow
def test_generate_ids_honours_per_row_limits_and_seeds_each_row(tiny_model, tokenizer, tmp_path) -> None:
    backend = OV.OpenVINOBackend(OV.export(tiny_model, tokenizer, root=tmp_path), tokenizer, progress=False)
    prompts = [backend.prompt_ids(c) for c in CONVERSATIONS]
    out = backend.generate_ids(prompts, max_new_tokens=[3, 7, 1], min_new_tokens=1)
    assert [len(x) for x in out] == [3, 7, 1]
    a = backend.generate_ids(prompts, max_new_tokens=8, temperature=1.0, seed=5, min_new_tokens=8)
    b = backend.generate_ids(prompts, max_new_tokens=8, temperature=1.0, seed=5, min_new_tokens=8)
    c = backend.generate_ids(prompts, max_new_tokens=8, temperature=1.0, seed=6, min_new_tokens=8)
    assert a == b and a != c
    alone = backend.generate_ids(prompts[1:2], max_new_tokens=8, temperature=1.0, seed=5 + 1, min_new_tokens=8)
    assert alone[0] == a[1]                                              # a row's sample does not depend on the batch
    rows = backend.generate_ids(prompts, max_new_tokens=8, temperature=1.0, seed=[9, 5 + 1, 4], min_new_tokens=8)
    assert rows[1] == a[1]                                               # one seed per row: the row's own
    same = backend.generate_ids([prompts[0]] * 2, max_new_tokens=8, temperature=1.0, seed=5, min_new_tokens=8)
    assert same[0] != same[1]                                            # a group of one prompt gets distinct samples
    with pytest.raises(ConfigError, match="max_new_tokens"):
        backend.generate_ids(prompts, max_new_tokens=[3, 0, 1])


def serve_hanging(conn, *args) -> None:
    """A pipeline process that starts, holds ~200 MB, then never answers (the hang seen in OpenVINO GenAI's
    sampler: every thread idle). Module level, so a spawned child can import it."""
    ballast = bytearray(200 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched: resident, not just reserved
    conn.send(("ok", None))
    conn.recv()
    time.sleep(3600)


def serve_dying(conn, *args) -> None:
    """A pipeline process that exits at its first request (as OpenVINO's plugin did on SIGFPE)."""
    conn.send(("ok", None))
    conn.recv()
    os._exit(3)


def serve_failing(conn, *args) -> None:
    conn.send(("ok", None))
    while True:
        kind, _ = conn.recv()
        if kind == "close":
            return
        conn.send(("error", "ValueError: bad request"))


def _started(target) -> threading.Thread:
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    return worker


def _joined(worker: threading.Thread):
    def done(timeout: float) -> bool:
        worker.join(timeout)
        return not worker.is_alive()
    return done


def test_the_watchdog_tells_a_hang_from_work_and_from_a_finished_call() -> None:
    stop = threading.Event()

    def busy() -> None:  # computes until told to stop, like a generate call that is slow but working
        while not stop.is_set():
            sum(i * i for i in range(10_000))

    t0 = time.monotonic()
    assert OV.wait_while_working(_joined(_started(lambda: stop.wait(30))), limit_s=20, idle_s=0.6, poll_s=0.1) == "idle"
    assert time.monotonic() - t0 < 5  # a hang is seen in about the idle window, not at the limit
    assert OV.wait_while_working(_joined(_started(busy)), limit_s=1.5, idle_s=0.6, poll_s=0.1) == "limit"  # working
    stop.set()
    assert OV.wait_while_working(_joined(_started(lambda: time.sleep(0.2))), limit_s=5, idle_s=2, poll_s=0.05) == "done"


def test_a_hung_pipeline_process_is_killed_and_its_memory_returned() -> None:
    import psutil

    proc = OV.PipelineProcess("unused.gguf", {}, {}, serve=serve_hanging)
    assert psutil.Process(proc.process.pid).memory_info().rss > 150 * 2**20  # the child holds its ballast
    t0 = time.monotonic()
    with pytest.raises(OV.HungCall, match="did no work for 1 s"):
        proc.call("generate", [[1, 2]], [{}], limit_s=30, idle_s=1.0)
    assert time.monotonic() - t0 < 10 and not proc.alive  # seen idle within seconds; the process (and memory) gone
    with pytest.raises(MedkitError, match="has ended"):
        proc.call("generate", [[1, 2]], [{}])


def test_the_child_ignores_sigint_and_an_interrupted_wait_kills_it(monkeypatch) -> None:
    proc = OV.PipelineProcess("unused.gguf", {}, {}, serve=serve_hanging)
    os.kill(proc.process.pid, signal.SIGINT)  # what Jupyter sends the kernel's process group
    time.sleep(1.0)
    assert proc.alive  # ignored: only the parent ends its child

    def interrupted(*args, **kwargs) -> str:  # the interrupt button pressed while the parent waits (raised
        time.sleep(0.2)                       # here, not by a signal: another test may own SIGINT's handler)
        raise KeyboardInterrupt

    monkeypatch.setattr(OV, "wait_while_working", interrupted)
    with pytest.raises(KeyboardInterrupt):
        proc.call("generate", [[1, 2]], [{}], limit_s=60, idle_s=60)
    proc.process.join(10)
    assert not proc.alive  # killed: its late reply cannot answer a later call


def test_a_pipeline_process_that_dies_or_fails_says_so() -> None:
    dying = OV.PipelineProcess("unused.gguf", {}, {}, serve=serve_dying)
    with pytest.raises(MedkitError, match=r"died while generate \(exit code 3\)"):
        dying.call("generate", [[1]], [{}], idle_s=30)
    failing = OV.PipelineProcess("unused.gguf", {}, {}, serve=serve_failing)
    with pytest.raises(MedkitError, match="failed while generate: ValueError: bad request"):
        failing.call("generate", [[1]], [{}])
    assert failing.alive  # a request that raises leaves the pipeline serving
    failing.close()
    assert not failing.alive


def test_generation_settings_cross_the_pipe_as_plain_data() -> None:
    greedy = OV.generation_settings(8, 0.0, ["</tool_call>", "</tool_call>"], 5, 0, [2, 2, 0])
    assert greedy == {"max_new_tokens": 8, "min_new_tokens": 0, "stop_token_ids": [0, 2],
                      "stop_strings": ["</tool_call>"], "logprobs": False, "do_sample": False, "temperature": None,
                      "rng_seed": None}
    sampled = OV.generation_settings(8, 0.3, [], 2**31 + 7, 0, [2])
    assert sampled["do_sample"] and sampled["temperature"] == 0.3 and sampled["rng_seed"] == 7
    assert json.loads(json.dumps(sampled)) == sampled


@pytest.mark.slow
def test_a_hung_generate_is_rerun_in_a_new_process_and_a_second_hang_raises(tiny_model, tokenizer, tmp_path) -> None:
    backend = OV.OpenVINOBackend(OV.export(tiny_model, tokenizer, root=tmp_path), tokenizer, progress=False)
    prompts = [backend.prompt_ids(c) for c in CONVERSATIONS]
    want = backend.generate_ids(prompts, max_new_tokens=4)
    first = backend.pipe
    hung = OV.PipelineProcess("unused.gguf", {}, {}, serve=serve_hanging)
    backend.pipe, backend.idle_s = hung, 1.0
    assert backend.generate_ids(prompts, max_new_tokens=4) == want  # rerun in a new process: same tokens
    assert backend.restarts == 1 and backend.pipe is not hung and not hung.alive and backend.pipe.alive
    real = backend._new_pipe
    backend.pipe, backend._new_pipe = (OV.PipelineProcess("unused.gguf", {}, {}, serve=serve_hanging),
                                       lambda: OV.PipelineProcess("unused.gguf", {}, {}, serve=serve_hanging))
    with pytest.raises(MedkitError, match="did no work for 1 s, twice"):
        backend.generate_ids(prompts, max_new_tokens=4)
    backend._new_pipe = real
    assert not backend.pipe.alive  # the second hung process was killed, as an interrupted call kills one
    assert backend.generate_ids(prompts, max_new_tokens=4) == want and backend.pipe.alive  # replaced first
    assert backend.restarts == 2
    first.close()
    backend.close()
    assert not first.alive and not backend.pipe.alive


@pytest.mark.slow
def test_a_dropped_backend_ends_its_pipeline_process(tiny_model, tokenizer, tmp_path) -> None:
    backend = OV.OpenVINOBackend(OV.export(tiny_model, tokenizer, root=tmp_path), tokenizer, progress=False)
    assert backend.generate_ids([backend.prompt_ids(CONVERSATIONS[0])], max_new_tokens=2)
    child = backend.pipe.process
    del backend  # no reference cycle through the backend: its process ends now, not at the next gc
    child.join(10)
    assert not child.is_alive()


def test_engine_choice_auto_is_openvino_on_cpu(tiny_model, tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(EN, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr("medkit.paths.cache_dir", lambda: tmp_path)
    assert EN.resolve_engine("auto", on_gpu=False) == "openvino"
    with pytest.raises(ConfigError, match="not available on ENGINE='openvino'"):
        EN.make_backend("openvino", tiny_model, tokenizer, compute_type="int8")
    with pytest.raises(ConfigError, match="not available on ENGINE='ctranslate2'"):
        EN.make_backend("ctranslate2", tiny_model, tokenizer, compute_type="bf16")
    monkeypatch.setattr(OV, "available", lambda: False)
    assert EN.resolve_engine("auto", on_gpu=False) == "ctranslate2"
    with pytest.raises(ConfigError, match="needs the openvino"):
        EN.make_backend("openvino", tiny_model, tokenizer)


@pytest.mark.slow
def test_smollm2_greedy_parity_and_the_agent_s_stop_strings(tmp_path) -> None:
    """The real model: greedy replies equal the transformers backend's; a reply ends at ``</tool_call>``."""
    from medkit import agent as A
    from medkit.adapters import load_for_inference

    model, tok = load_for_inference("cpu", None, bf16=False)
    backend = OV.engine_backend(model, tok, root=tmp_path, progress=False)
    assert backend.parity["greedy_identical"] == backend.parity["prompts"]
    assert backend.parity["mean_abs_logprob_gap"] < EN.PARITY_TOLERANCE["float32"]
    want = llm.LocalTransformersBackend(model, tok, batch_size=4, progress=False)
    got = backend.generate(CONVERSATIONS, max_new_tokens=24)
    assert [c.text for c in got] == [c.text for c in want.generate(CONVERSATIONS, max_new_tokens=24)]
    assert [c.n_completion_tokens for c in got] == [c.n_completion_tokens for c in
                                                     want.generate(CONVERSATIONS, max_new_tokens=24)]
    conv = [{"role": "system", "content": "Reply with <tool_call>{\"name\": \"search\"}</tool_call> and nothing else."},
            {"role": "user", "content": "Search for Marfan syndrome."}]
    out = backend.generate([conv], max_new_tokens=48, stop=A.STOP_STRINGS)[0]
    assert out.ok and all(s not in out.text for s in A.STOP_STRINGS) and out.n_completion_tokens <= 48
    # bf16 compute on the same export: within its own (wider) tolerance, the float32 check cached apart
    from medkit.model import cpu_has_bf16

    if cpu_has_bf16():
        bf16 = OV.OpenVINOBackend(backend.folder, tok, precision="bf16", progress=False)
        parity = OV.check_parity(model, tok, bf16)
        assert parity["compute_type"] == "bf16" and parity["mean_abs_logprob_gap"] < EN.PARITY_TOLERANCE["bf16"]
        assert (backend.folder / "parity-bf16.json").is_file() and (backend.folder / "parity-float32.json").is_file()
    else:  # a CPU without bf16 (AVX2 only): a clear error, not OpenVINO's plugin exception
        with pytest.raises(ConfigError, match="native bf16"):
            OV.OpenVINOBackend(backend.folder, tok, precision="bf16", progress=False)
    with pytest.raises(ConfigError, match="computes in float32 or bf16"):
        OV.OpenVINOBackend(backend.folder, tok, precision="int8")


@pytest.mark.slow
def test_policy_sync_exports_to_openvino_every_n_steps(tiny_model, tokenizer, tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    policy = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                  init_lora_weights=False)).eval()
    sync = EN.PolicySync(copy.deepcopy(tiny_model), tokenizer, tmp_path / "exports", every=2, engine="openvino")
    first = sync.backend(policy, 0)
    assert isinstance(first, OV.OpenVINOBackend) and sync.backend(policy, 1) is first
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    second = sync.backend(policy, 2)
    assert second.folder != first.folder and not first.folder.exists()
    assert not first.pipe.alive and second.pipe.alive  # the previous pipeline process ended before the next
    assert [s["step"] for s in sync.syncs] == [0, 2]
    assert sync.precision == EN.resolve_precision("auto", "openvino") == second.precision
    assert all(s["mean_abs_logprob_gap"] < EN.PARITY_TOLERANCE[sync.precision] for s in sync.syncs)
    with pytest.raises(ConfigError, match="not available on ENGINE='openvino'"):
        EN.PolicySync(tiny_model, tokenizer, tmp_path, precision="int8", engine="openvino")
    assert isinstance(Path(second.folder), Path)
