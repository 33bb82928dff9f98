"""The GPU engine's logic (medkit.vllm_engine) on a CPU machine: no vLLM is installed or imported here.

The server command and its readiness wait (a dying server, a slow one), the sampling settings of
an agent turn, :class:`VLLMTurns` over a stand-in ``vllm.LLM`` (ids in and out, per-row limits,
per-row seeds), and the GRPO config switching TRL's colocated vLLM on for ENGINE='vllm'.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from medkit import engine as EN
from medkit import grpo as G
from medkit import profiles
from medkit import vllm_engine as V
from medkit.errors import ConfigError, MedkitError


def test_the_cpu_path_never_imports_vllm():
    assert "vllm" not in sys.modules


def test_serve_command(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        V.serve_command(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    cmd = V.serve_command(tmp_path, port=9001, max_model_len=8192)
    assert cmd[:3] == ["vllm", "serve", str(tmp_path)]
    assert cmd[cmd.index("--port") + 1] == "9001" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--served-model-name") + 1] == V.SERVED_NAME
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        V.serve_command(tmp_path, gpu_memory_utilization=1.5)


def test_wait_until_ready_succeeds_fails_on_exit_and_times_out():
    answers = iter([(False, "starting"), (False, "loading"), (True, "OK")])
    assert V.wait_until_ready(lambda: next(answers), lambda: True, sleep=lambda s: None) == "OK"
    with pytest.raises(MedkitError, match="exited before"):
        V.wait_until_ready(lambda: (False, "refused"), lambda: False, sleep=lambda s: None)
    now = iter(range(0, 100, 10))
    with pytest.raises(MedkitError, match="within 25 s"):
        V.wait_until_ready(lambda: (False, "loading"), lambda: True, timeout=25, clock=lambda: next(now),
                           sleep=lambda s: None)


def test_a_missing_vllm_executable_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    server = V.VLLMServer(tmp_path, executable="/nonexistent/vllm", timeout=1)
    with pytest.raises(ConfigError, match="install vLLM"):
        server.__enter__()


def test_a_server_that_dies_is_reported_with_its_log(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    fake = tmp_path / "fake-vllm"
    fake.write_text("#!/bin/sh\necho 'CUDA out of memory' \nexit 1\n")
    fake.chmod(0o755)
    server = V.VLLMServer(tmp_path, executable=str(fake), port=9, timeout=30, log_path=tmp_path / "log")
    with pytest.raises(MedkitError, match="exited before.*CUDA out of memory"):
        server.__enter__()
    assert server.process is None


def test_sampling_params_of_a_turn():
    p = V.sampling_params(max_tokens=160, temperature=0.7, stop=["</answer>"], seed=5)
    assert p["include_stop_str_in_output"] and not p["skip_special_tokens"]
    assert p["top_k"] == -1 and p["top_p"] == 1.0 and p["seed"] == 5 and p["stop"] == ["</answer>"]
    assert "seed" not in V.sampling_params(max_tokens=1, temperature=0, stop=[], seed=None)
    with pytest.raises(ConfigError):
        V.sampling_params(max_tokens=0, temperature=0, stop=[], seed=None)


class FakeLLM:
    """Stands in for vllm.LLM: echoes a fixed continuation per prompt, longer than any limit."""

    def __init__(self):
        self.seen = []

    def generate(self, prompts, params, use_tqdm=False):
        self.seen.append((prompts, params))
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(range(100, 100 + p["max_tokens"] + 5)))])
                for p in params]


def test_vllm_turns_are_ids_in_and_ids_out():
    llm = FakeLLM()
    turns = V.VLLMTurns(llm, tokenizer=None, make_params=dict)
    out = turns.generate_ids([[1, 2, 3], [4, 5]], max_new_tokens=[3, 7], temperature=0.7, stop=["</tool_call>"],
                             seed=10)
    assert [len(x) for x in out] == [3, 7] and out[0] == [100, 101, 102]
    prompts, params = llm.seen[0]
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}]
    assert [p["seed"] for p in params] == [10, 11] and params[1]["stop"] == ["</tool_call>"]
    with pytest.raises(ConfigError, match="one max_new_tokens per input"):
        turns.generate_ids([[1]], max_new_tokens=[1, 2])


def test_engine_choice_on_a_gpu(monkeypatch):
    monkeypatch.setattr(V, "vllm_available", lambda: True)
    assert EN.resolve_engine("auto", on_gpu=True) == "vllm"
    assert EN.resolve_engine("auto", on_gpu=False) in EN.CPU_ENGINES
    assert G.rollout_engine("auto", use_cpu=False) == "vllm"
    monkeypatch.setattr(V, "vllm_available", lambda: False)
    assert EN.resolve_engine("auto", on_gpu=True) == "transformers"


def test_grpo_turns_on_trl_s_colocated_vllm(monkeypatch):
    monkeypatch.setattr(V, "vllm_available", lambda: True)
    p = {**profiles.resolve("smoke", "grpo"), "ENGINE": "vllm"}
    cfg = G.grpo_config(p, "/tmp/unused-grpo", use_cpu=True)
    assert cfg.use_vllm and cfg.vllm_mode == "colocate"
    assert not G.grpo_config({**p, "ENGINE": "transformers"}, "/tmp/unused-grpo", use_cpu=True).use_vllm
    rollouts = G.AgentRollouts(None, [], G.RolloutConfig(engine="vllm"), schemas=[])
    llm = FakeLLM()
    trainer = SimpleNamespace(vllm_generation=SimpleNamespace(llm=llm))
    turns = rollouts.engine_for(model=None, tokenizer="tok", step=0, trainer=trainer)
    assert isinstance(turns, V.VLLMTurns) and turns.llm is llm
    with pytest.raises(ConfigError, match="colocated vLLM"):
        rollouts.engine_for(model=None, tokenizer="tok", step=0, trainer=SimpleNamespace())
    with pytest.raises(ConfigError, match="ENGINE='vllm' serves"):
        EN.make_backend("vllm", SimpleNamespace(device=SimpleNamespace(type="cuda")), None)
