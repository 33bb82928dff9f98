"""The GPU path of the generation engine: vLLM, for evaluation (a server) and GRPO rollouts (TRL's engine).

Scope (written and unit-tested for its logic on CPU machines; vLLM itself is only imported on a
GPU, inside the functions that need it — the CPU path never imports this module's dependencies):

* **Evaluation**: :func:`serve_command` builds the ``vllm serve`` command for a merged model
  folder; :class:`VLLMServer` starts it, waits until the OpenAI-compatible endpoint serves the
  model (:meth:`medkit.llm.OpenAICompatibleBackend.check`), hands out an
  :class:`~medkit.llm.OpenAICompatibleBackend` for it and stops the process on exit. A server
  that exits or does not come up in time is a one-line error with the tail of its log.
* **GRPO**: with ``use_vllm=True`` (``vllm_mode="colocate"``) TRL keeps its own ``vllm.LLM`` in
  sync with the policy before every rollout call; :class:`VLLMTurns` generates the agent's turns
  with it, token ids in and out (``include_stop_str_in_output``, special tokens kept), so the
  rollout contract of :mod:`medkit.grpo` — sampled ids kept verbatim, tool responses masked —
  holds on the GPU as on the CPU.

Out of scope: the CPU engine (:mod:`medkit.engine`), the agent loop.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, MedkitError
from .llm import Seed, row_seeds

DEFAULT_PORT = 8011
READY_TIMEOUT_S = 900.0   # a 7B model loads and compiles CUDA graphs in minutes
SERVED_NAME = "medkit-policy"


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# --------------------------------------------------------------------------- evaluation: a server


def serve_command(model_dir: str | Path, *, port: int = DEFAULT_PORT, served_name: str = SERVED_NAME,
                  dtype: str = "bfloat16", max_model_len: int = 16384, gpu_memory_utilization: float = 0.85,
                  executable: str = "vllm") -> list[str]:
    """The ``vllm serve`` command line for a merged model folder (OpenAI-compatible API on 127.0.0.1)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir}: not a model folder (no config.json); save the merged model there first")
    if not 0 < gpu_memory_utilization <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    return [executable, "serve", str(model_dir), "--served-model-name", served_name, "--host", "127.0.0.1",
            "--port", str(int(port)), "--dtype", dtype, "--max-model-len", str(int(max_model_len)),
            "--gpu-memory-utilization", str(gpu_memory_utilization), "--generation-config", "vllm"]


def wait_until_ready(check: Callable[[], tuple[bool, str]], alive: Callable[[], bool], *,
                     timeout: float = READY_TIMEOUT_S, interval: float = 2.0,
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll ``check`` until it reports ok; raise when the process dies (``alive`` false) or time runs out."""
    start, last = clock(), ""
    while True:
        ok, last = check()
        if ok:
            return last
        if not alive():
            raise MedkitError(f"the vLLM server exited before it served the model (last check: {last})")
        if clock() - start > timeout:
            raise MedkitError(f"the vLLM server did not serve the model within {timeout:g} s (last check: {last})")
        sleep(interval)


class VLLMServer:
    """``with VLLMServer(model_dir) as backend:`` — a vLLM server for one model, and a backend for it."""

    def __init__(self, model_dir: str | Path, *, port: int = DEFAULT_PORT, log_path: str | Path | None = None,
                 timeout: float = READY_TIMEOUT_S, concurrency: int = 64, **serve_options: Any) -> None:
        self.command = serve_command(model_dir, port=port, **serve_options)
        self.base_url = f"http://127.0.0.1:{int(port)}/v1"
        self.log_path = Path(log_path) if log_path else Path(model_dir).parent / "vllm_server.log"
        self.timeout = timeout
        self.concurrency = concurrency
        self.process: subprocess.Popen | None = None

    def backend(self) -> Any:
        from .llm import OpenAICompatibleBackend

        return OpenAICompatibleBackend(self.base_url, SERVED_NAME, timeout=600, concurrency=self.concurrency,
                                       name=f"vllm:{SERVED_NAME}", progress=False)

    def _tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Any:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            try:
                self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
            except FileNotFoundError:
                raise ConfigError(f"{self.command[0]!r} not found: install vLLM on the GPU machine (pip install vllm)") \
                    from None
        backend = self.backend()
        try:
            wait_until_ready(backend.check, lambda: self.process is not None and self.process.poll() is None,
                             timeout=self.timeout)
        except MedkitError as e:
            self.__exit__()
            raise MedkitError(f"{e}; log {self.log_path}: {self._tail()}") from None
        return backend

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


# --------------------------------------------------------------------------- GRPO: TRL's colocated vLLM


COLOCATE_GPU_MEMORY = 0.35  # share of the GPU TRL's colocated vLLM may take; the rest trains the 4-bit policy


def colocate_options() -> dict[str, Any]:
    """GRPOConfig settings for TRL's vLLM in the trainer's process, kept in sync with the policy every step."""
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": COLOCATE_GPU_MEMORY,
            "vllm_enable_sleep_mode": True}


def sampling_params(*, max_tokens: int, temperature: float, stop: Sequence[str], seed: int | None) -> dict[str, Any]:
    """vLLM ``SamplingParams`` keyword arguments for one agent turn (plain temperature sampling, ids kept)."""
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    params: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": float(temperature), "top_p": 1.0,
                              "top_k": -1, "stop": list(stop), "include_stop_str_in_output": True,
                              "skip_special_tokens": False, "detokenize": True}
    if seed is not None:
        params["seed"] = int(seed)
    return params


class VLLMTurns:
    """Agent turns from a ``vllm.LLM`` (TRL's colocated engine, kept in sync with the policy by TRL).

    Same call as :meth:`medkit.engine.CTranslate2Backend.generate_ids`, so
    :func:`medkit.grpo.engine_turns` drives either. ``make_params`` builds a ``SamplingParams``
    from keyword arguments (``vllm.SamplingParams`` on a GPU; a stand-in in tests).
    """

    def __init__(self, llm: Any, tokenizer: Any, make_params: Callable[..., Any] | None = None) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.make_params = make_params

    def _params(self, **kwargs: Any) -> Any:
        if self.make_params is None:
            from vllm import SamplingParams  # only on the GPU path

            self.make_params = SamplingParams
        return self.make_params(**sampling_params(**kwargs))

    def generate_ids(self, inputs: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int],
                     temperature: float = 0.0, stop: Sequence[str] | None = None, seed: Seed = None,
                     min_new_tokens: int = 0) -> list[list[int]]:
        limits = [int(max_new_tokens)] * len(inputs) if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
        if len(limits) != len(inputs):
            raise ConfigError("one max_new_tokens per input")
        prompts = [{"prompt_token_ids": list(ids)} for ids in inputs]
        params = [self._params(max_tokens=m, temperature=temperature, stop=stop or [], seed=row_seed)
                  for m, row_seed in zip(limits, row_seeds(seed, len(inputs)))]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if len(outputs) != len(inputs):
            raise MedkitError(f"vLLM returned {len(outputs)} outputs for {len(inputs)} prompts")
        return [list(out.outputs[0].token_ids)[:m] for out, m in zip(outputs, limits)]
