"""OpenVINO GenAI on CPU: continuous batching with prefix caching behind :class:`medkit.llm.ChatBackend`.

Scope:

* **Why this engine** (``bench/bench_engine.py``): an agent rollout is many short turns over a
  long, growing conversation whose first ~800 tokens (system prompt and tool schemas) are the
  same for every question. OpenVINO GenAI's :class:`ContinuousBatchingPipeline` keeps the KV
  cache of every prompt in blocks and reuses them by content (prefix caching), so a turn only
  computes the tokens a tool added since the last turn and the shared system turn is computed
  once; conversations of different lengths are scheduled together without padding, and the
  decoding loop runs in C++. CTranslate2 and transformers re-prefill the whole conversation at
  every turn.
* **Export** (:func:`export`): the model in memory (the base, or base + merged LoRA) is written
  as a GGUF file — every matrix in float16, norms in float32, llama's rotary layout for the
  query and key projections, the architecture from the model's config, the tokenizer from the
  profile's own GGUF (:func:`medkit.model.small_model_gguf`) — which OpenVINO GenAI reads
  directly. OpenVINO's GGUF reader takes no float32 matrices; the float16 rounding
  of the weights is measured by the parity check. The compute and the KV cache run in the
  backend's ``precision``: ``float32``, or ``bf16`` where the CPU has it (1.5x faster on agent
  rollouts, like the transformers path's bf16; chosen by :func:`medkit.engine.resolve_precision`).
  Cached by weights digest under ``cache_dir()/engines/ov-<digest>-float16`` and built
  atomically (:func:`medkit.io.build_folder`), like the CTranslate2 conversions.
* **Parity** (:func:`check_parity`): the engine's greedy continuation of fixed prompts with its
  per-token log-probs, against the source model's greedy continuation and its log-probs of the
  engine's tokens (teacher forcing); the tolerance of the precision and the cache file name of
  the CTranslate2 check.
* :class:`OpenVINOBackend`: ``generate`` (chat) and ``generate_ids`` (token level, for GRPO:
  ids in, ids out). Greedy at ``temperature == 0``; sampling seeds each row with its own seed
  (``seed + row``, or one seed per row: :func:`medkit.llm.row_seeds`), so a row's sample does not
  depend on what else is in the batch.
* :class:`PipelineProcess`: the pipeline runs in a child process (``spawn``; token ids and plain
  settings cross a pipe), watched while it works (:func:`wait_while_working` on the child's CPU time).
  OpenVINO GenAI 2026.4's sampler sometimes waits forever with every thread idle; a thread stuck in
  C++ cannot be stopped, so the 20-step ``cpu_long`` run (commit 0f4e337) rebuilt a pipeline beside the
  hung one and peaked at 18.9 GiB. A hung child is killed, which returns its memory (KV cache included), and the
  batch is rerun once on a new one; a second hang raises. The child ignores SIGINT: Jupyter sends it to
  the kernel's whole process group (its interrupt button, and papermill before every kernel shutdown);
  an interrupted wait kills the child instead (a late reply must not answer the next call), and the
  backend starts a new one at its next call.

Out of scope: choosing the engine (:mod:`medkit.engine`), the agent loop, GPU serving.
openvino, openvino_genai and gguf are imported lazily; nothing here imports a GPU package.
"""

from __future__ import annotations

import os
import json
import logging
import multiprocessing
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, MedkitError
from .io import build_folder, package_version, provenance, write_json
from .llm import Seed, TokenIdChat, chat_prompt_ids, eos_ids, row_seeds

GGUF_FILE = "model.gguf"
STAMP = "medkit_engine.json"
EXPORT_FORMAT = 1  # bump when the recipe changes: every cached export is redone
log = logging.getLogger(__name__)
WEIGHT_PRECISION = "float16"  # what OpenVINO's GGUF reader takes for matrices
DEFAULT_KV_CACHE_GB = 4.0  # KV-cache blocks (prefix cache included); SmolLM2-135M: ~46 kB per token at float32
DEFAULT_MAX_BATCHED_TOKENS = 2048  # tokens per scheduler step (long prompts are prefilled in chunks)
# A generate call that has not returned after this many seconds is taken as hung: OpenVINO GenAI 2026.4's
# sampler was seen (in smoke, cpu and cpu_long runs) waiting forever on its own thread pool with every thread
# idle. The batch is then rerun once in a fresh pipeline process; a second hang raises. The longest legitimate
# call measured here (64 agent turns of the 135M model at once) takes about a minute.
GENERATE_WATCHDOG_S = 600.0
# ... and a call is taken as hung sooner when the process has done (next to) no work for this long: the hang
# leaves every thread idle, while a working call keeps the cores busy. The 2026-12-04 cpu reference run lost
# 30 minutes to three hangs waited out at the 600 s limit; each was seen as idle within a minute.
GENERATE_IDLE_S = 45.0
IDLE_CPU_FRACTION = 0.02  # "no work": the process's CPU time grew by less than this share of the idle window
PIPELINE_START_S = 600.0  # building a pipeline (reading the GGUF file, compiling) in a new process: ~5-15 s measured
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# ENGINE_PRECISION -> (INFERENCE_PRECISION_HINT, KV_CACHE_PRECISION): OpenVINO's CPU plugin needs the
# KV cache in the compute precision (or u8), and picks bf16 by itself on a bf16 CPU unless told
PRECISION_PROPERTIES: dict[str, tuple[str, str]] = {"float32": ("f32", "f32"), "bf16": ("bf16", "bf16")}


def available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "openvino_genai", "gguf"))


def export_dir(digest: str, root: Path | None = None) -> Path:
    from .paths import cache_dir

    return (root or cache_dir() / "engines") / f"ov-{digest[:24]}-{WEIGHT_PRECISION}"


def is_complete(folder: Path) -> bool:
    """A finished export: the GGUF file and a stamp of the current format."""
    folder = Path(folder)
    if folder.name.startswith(".") or not (folder / GGUF_FILE).is_file() or not (folder / STAMP).is_file():
        return False
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return stamp.get("parameters", {}).get("export_format") == EXPORT_FORMAT


def _rotary_layout(weight: Any, n_head: int) -> Any:
    """Rows of a query/key projection reordered from transformers' rotary halves to GGUF's interleaved pairs."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(model: Any, template: Path, target: Path) -> None:
    """``model``'s weights as a GGUF file at ``target``: architecture from the model's config,
    tokenizer and chat template from ``template`` (a GGUF of a model with the same vocabulary)."""
    import gguf
    import numpy as np

    cfg = model.config
    reader = gguf.GGUFReader(str(template))
    writer = gguf.GGUFWriter(str(target), "llama")
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_name(str(getattr(cfg, "_name_or_path", "") or "medkit policy"))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(cfg)))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False):
            continue  # tied to the embeddings: GGUF stores them once
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise MedkitError(f"no GGUF name for the model's weight {hf_name}")
        array = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            array = _rotary_layout(array, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            array = _rotary_layout(array, cfg.num_key_value_heads)
        writer.add_tensor(name, np.ascontiguousarray(array.astype(np.float16) if array.ndim == 2 else array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _rope_theta(cfg: Any) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        params = getattr(cfg, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0)
    scaling = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if scaling.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"rope_type {scaling.get('rope_type')!r}: the OpenVINO export writes plain rotary embeddings only")
    return float(theta)


def check_exportable(model: Any, tokenizer: Any, template: Path) -> None:
    """ConfigError unless ``model`` is an architecture and vocabulary the template GGUF describes."""
    import gguf

    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"{archs[0]} is not an architecture the OpenVINO path exports "
                          f"({', '.join(SUPPORTED_ARCHITECTURES)}); use ENGINE='transformers'")
    tokens = gguf.GGUFReader(str(template)).fields["tokenizer.ggml.tokens"].contents()
    if len(tokens) != len(tokenizer) or tokenizer.convert_ids_to_tokens(len(tokens) - 1) != tokens[-1]:
        raise ConfigError(f"{template}: its vocabulary ({len(tokens)} tokens) is not the tokenizer's "
                          f"({len(tokenizer)}); the OpenVINO export needs the profile's own model")


def export(model: Any, tokenizer: Any, *, digest: str | None = None, root: Path | None = None,
           template: Path | None = None) -> Path:
    """``model`` as a GGUF folder OpenVINO GenAI loads, cached by weights digest under ``root``."""
    from .engine import weights_digest
    from .model import small_model_gguf

    if not available():
        raise ConfigError("ENGINE=openvino needs the openvino, openvino-genai and gguf packages "
                          "(pip install openvino-genai gguf); use ENGINE='transformers'")
    template = Path(template or small_model_gguf())
    check_exportable(model, tokenizer, template)
    digest = digest or weights_digest(model, tokenizer)

    def build(folder: Path) -> None:
        t0 = time.perf_counter()
        write_gguf(model, template, folder / GGUF_FILE)
        write_json(folder / STAMP, provenance(
            export_format=EXPORT_FORMAT, weights_sha256=digest, weight_precision=WEIGHT_PRECISION,
            template=template.name, seconds=round(time.perf_counter() - t0, 2),
            versions={p: package_version(p) for p in ("openvino", "openvino-genai", "gguf", "transformers")}))

    return build_folder(export_dir(digest, root), build, is_complete)


class HungCall(MedkitError):
    """A pipeline process's call that stopped working (idle) or ran past its limit; the process was killed."""


class PipelineProcess:
    """One OpenVINO GenAI :class:`ContinuousBatchingPipeline` in a child process (see the module docstring).

    ``call(kind, *args)`` runs a request in the child (``"generate"``: id lists and settings in, id lists
    out; ``"greedy_logprobs"``) and waits while the child works: a child idle for ``idle_s`` or running past
    ``limit_s`` is killed and :class:`HungCall` raised; a child that dies or raises gives a
    :class:`MedkitError` naming what happened. ``serve`` is the child's loop (:func:`serve_pipeline`).
    """

    def __init__(self, model_path: str | Path, scheduler: dict[str, Any], properties: dict[str, Any], *,
                 serve: Callable[..., None] | None = None, start_s: float = PIPELINE_START_S) -> None:
        import psutil

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state, no forked locks
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=run_child, name="openvino-pipeline", daemon=True,
                                   args=(serve or serve_pipeline, child, str(model_path), dict(scheduler),
                                         dict(properties)))
        self.process.start()
        child.close()
        self._ps = psutil.Process(self.process.pid)
        self._await(limit_s=start_s, idle_s=start_s, what="building the pipeline")

    def _cpu_seconds(self) -> float:
        import psutil

        try:
            t = self._ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:  # gone: the pipe reports it at once
            return float("inf")

    def _await(self, *, limit_s: float, idle_s: float, what: str) -> Any:
        try:
            verdict = wait_while_working(self._conn.poll, cpu_seconds=self._cpu_seconds, limit_s=limit_s,
                                         idle_s=idle_s)
            if verdict != "done":
                raise HungCall(f"did no work for {idle_s:.0f} s" if verdict == "idle"
                               else f"did not return within {limit_s:.0f} s")
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            self.kill()
            raise MedkitError(f"the OpenVINO pipeline process died while {what} (exit code {code}); "
                              "rerun, or use ENGINE='transformers'") from None
        except BaseException:  # hung, or interrupted (KeyboardInterrupt): a late reply would answer the next call
            self.kill()
            raise
        if status != "ok":
            raise MedkitError(f"the OpenVINO pipeline process failed while {what}: {value}")
        return value

    def call(self, kind: str, *args: Any, limit_s: float = GENERATE_WATCHDOG_S, idle_s: float = GENERATE_IDLE_S) -> Any:
        if not self.alive:
            raise MedkitError("the OpenVINO pipeline process has ended")
        self._conn.send((kind, args))
        return self._await(limit_s=limit_s, idle_s=idle_s, what=kind)

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        """End the child at once (its memory goes with it)."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self._conn.close()

    def close(self) -> None:
        """Ask the child to stop; kill it if it does not within a few seconds."""
        if self.process.is_alive():
            try:
                self._conn.send(("close", ()))
            except (OSError, ValueError):
                pass
            self.process.join(5)
        self.kill()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: multiprocessing ends daemon children itself
            pass


def generation_settings(limit: int, temperature: float, stops: Sequence[str], seed: int | None, min_new_tokens: int,
                        stop_token_ids: Sequence[int], logprobs: bool = False) -> dict[str, Any]:
    """One row's generation settings as plain data (what crosses the pipe; :func:`apply_settings` reads it)."""
    sampled = temperature > 0
    return {"max_new_tokens": int(limit), "min_new_tokens": int(min_new_tokens),
            "stop_token_ids": sorted({int(t) for t in stop_token_ids}), "stop_strings": sorted(set(stops)),
            "logprobs": bool(logprobs), "do_sample": sampled, "temperature": float(temperature) if sampled else None,
            "rng_seed": (int(seed if seed is not None else random.SystemRandom().randrange(2**31)) % (2**31)
                         if sampled else None)}


def apply_settings(cfg: Any, settings: dict[str, Any]) -> Any:
    """``settings`` (:func:`generation_settings`) on an OpenVINO GenAI ``GenerationConfig``."""
    cfg.max_new_tokens = settings["max_new_tokens"]
    cfg.min_new_tokens = settings["min_new_tokens"]
    cfg.stop_token_ids = set(settings["stop_token_ids"])
    cfg.stop_strings = set(settings["stop_strings"])
    cfg.include_stop_str_in_output = True
    cfg.num_return_sequences = 1
    if settings["logprobs"]:
        cfg.logprobs = 1
    cfg.do_sample = settings["do_sample"]
    if settings["do_sample"]:
        cfg.temperature = settings["temperature"]
        cfg.top_p = 1.0
        cfg.rng_seed = settings["rng_seed"]
    return cfg


def build_pipeline(model_path: str, scheduler: dict[str, Any], properties: dict[str, Any]) -> Any:
    """An OpenVINO GenAI ``ContinuousBatchingPipeline`` on the CPU (in the calling process)."""
    import openvino_genai as ov_genai

    sched = ov_genai.SchedulerConfig()
    for key, value in scheduler.items():
        setattr(sched, key, value)
    return ov_genai.ContinuousBatchingPipeline(model_path, sched, "CPU", properties)


def handle_request(pipe: Any, kind: str, args: Sequence[Any]) -> Any:
    """One request on a pipeline: ``"generate"`` (id lists and :func:`generation_settings` in, generated id
    lists out) or ``"greedy_logprobs"`` (one id list in; its continuation's ids and log-probs out)."""
    import numpy as np
    import openvino as ov

    def tensor(ids: Sequence[int]) -> Any:
        return ov.Tensor(np.asarray([list(ids)], dtype=np.int64))

    if kind == "generate":
        inputs, settings = args
        configs = [apply_settings(pipe.get_config(), s) for s in settings]
        return [list(r.m_generation_ids[0]) for r in pipe.generate([tensor(x) for x in inputs], configs)]
    if kind == "greedy_logprobs":
        ids, settings = args
        handle = pipe.add_request(random.SystemRandom().randrange(2**62), tensor(ids),
                                  apply_settings(pipe.get_config(), settings))
        while pipe.has_non_finished_requests():
            pipe.step()
        outputs = handle.read_all()
        return [list(outputs[0].generated_ids), [float(x) for x in outputs[0].generated_log_probs]] if outputs else None
    raise ValueError(f"unknown request {kind!r}")


def _outcome(work: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` of ``work()``, or ``("error", "Type: message")``: the child's reply to a request."""
    try:
        return "ok", work()
    except Exception as e:
        return "error", f"{type(e).__name__}: {e}"


def run_child(serve: Callable[..., None], *args: Any) -> None:
    """The child process's entry: ignore SIGINT (the parent owns the child's life: it closes or kills it),
    then ``serve(*args)``. Jupyter interrupts a kernel's whole process group, so without this every
    interrupt, and papermill's before each kernel shutdown, ended the child with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(*args)


def serve_pipeline(conn: Any, model_path: str, scheduler: dict[str, Any], properties: dict[str, Any]) -> None:
    """The child's loop: build the pipeline, then answer requests until "close" or the pipe ends."""
    status, pipe = _outcome(lambda: build_pipeline(model_path, scheduler, properties))
    conn.send((status, None if status == "ok" else pipe))  # the pipeline itself stays here
    if status != "ok":
        return
    while True:
        try:
            kind, args = conn.recv()
        except (EOFError, OSError):
            return
        if kind == "close":
            return
        conn.send(_outcome(lambda: handle_request(pipe, kind, args)))


class OpenVINOBackend(TokenIdChat):
    """An OpenVINO GenAI continuous-batching pipeline (CPU, in a :class:`PipelineProcess`) with the model's
    tokenizer; see the module docstring."""

    def __init__(self, folder: str | Path, tokenizer: Any, *, precision: str = "float32", batch_size: int = 64,
                 threads: int | None = None, kv_cache_gb: float = DEFAULT_KV_CACHE_GB, prefix_caching: bool = True,
                 name: str | None = None, progress: bool = True) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if precision not in PRECISION_PROPERTIES:
            raise ConfigError(f"the OpenVINO engine computes in {' or '.join(PRECISION_PROPERTIES)}, not {precision!r}")
        if precision == "bf16":
            from .model import cpu_has_bf16

            if not cpu_has_bf16():  # OpenVINO's AVX2 kernels refuse a bf16 KV cache deep inside the plugin
                raise ConfigError("ENGINE_PRECISION bf16 needs a CPU with native bf16 (avx512_bf16 or AMX); "
                                  "this one has neither: use float32 (or auto)")
        self.precision = precision
        self.folder = Path(folder)
        if not is_complete(self.folder):
            raise MedkitError(f"{self.folder}: not a complete OpenVINO export (medkit.openvino_engine.export writes one)")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.threads = threads or _torch_threads()
        self.name = name or f"openvino:{self.folder.name}:{precision}"
        self.progress = progress
        self.eos_ids = eos_ids(tokenizer)
        self.parity: dict[str, Any] | None = None
        self.watchdog_s = GENERATE_WATCHDOG_S
        self.idle_s = GENERATE_IDLE_S
        self.restarts = 0  # pipeline processes replaced after a hung call
        scheduler = {"enable_prefix_caching": bool(prefix_caching), "cache_size": max(1, int(round(kv_cache_gb))),
                     "max_num_seqs": batch_size, "max_num_batched_tokens": DEFAULT_MAX_BATCHED_TOKENS}
        hint, kv = PRECISION_PROPERTIES[precision]
        properties = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": hint, "KV_CACHE_PRECISION": kv}
        model_path = self.folder / GGUF_FILE  # not self: a backend dropped ends its process at once, without gc
        self._new_pipe: Callable[[], PipelineProcess] = lambda: PipelineProcess(model_path, scheduler, properties)
        self.pipe = self._new_pipe()

    def __repr__(self) -> str:
        return f"OpenVINOBackend(name={self.name!r})"

    def close(self) -> None:
        """End the pipeline process now (it also ends when the backend is dropped)."""
        self.pipe.close()

    # -- token level
    def generate_ids(self, inputs: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int],
                     temperature: float = 0.0, stop: Sequence[str] | None = None, seed: Seed = None,
                     min_new_tokens: int = 0) -> list[list[int]]:
        """Generated ids for every input id list, in input order (an EOS token ends a row and is kept;
        a row may run a token past the end of a stop string: :func:`medkit.llm.finish_row` cuts it)."""
        if not inputs:
            return []
        limits = [int(max_new_tokens)] * len(inputs) if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
        if len(limits) != len(inputs) or any(x < 1 for x in limits):
            raise ConfigError("max_new_tokens must be >= 1 for every input")
        stops = [s for s in (stop or []) if s]
        settings = [generation_settings(limit, temperature, stops, row_seed, min_new_tokens, self.eos_ids)
                    for limit, row_seed in zip(limits, row_seeds(seed, len(inputs)))]
        results = self._guarded("generate", [[int(t) for t in x] for x in inputs], settings)
        return [ids[:limit] for ids, limit in zip(results, limits)]

    def _guarded(self, kind: str, *args: Any) -> Any:
        """A request to the pipeline process under its watchdog: a call that hangs is rerun once in a new
        process (the hung one is killed: :class:`PipelineProcess`); a second hang raises. A process that has
        ended (closed, or killed by an interrupted call) is replaced first."""
        if not self.pipe.alive:
            log.info("%s: the pipeline process had ended; starting a new one", self.name)
            self.pipe = self._new_pipe()
        for attempt in (1, 2):
            try:
                return self.pipe.call(kind, *args, limit_s=self.watchdog_s, idle_s=self.idle_s)
            except HungCall as e:
                if attempt == 2:
                    raise MedkitError(f"{self.name}: the OpenVINO engine's {kind} call {e}, twice (a hung call); "
                                      "rerun, or use ENGINE='transformers'") from None
                log.warning("%s: %s %s; its process was killed, retrying the batch in a new one", self.name, kind, e)
                self.restarts += 1
                self.pipe = self._new_pipe()
        raise AssertionError("unreachable")

    def greedy_logprobs(self, ids: Sequence[int], n_tokens: int) -> tuple[list[int], list[float]]:
        """The engine's greedy continuation of ``ids`` (exactly ``n_tokens``) and its per-token log-probs."""
        settings = generation_settings(n_tokens, 0.0, [], None, n_tokens, self.eos_ids, logprobs=True)
        out = self._guarded("greedy_logprobs", [int(t) for t in ids], settings)
        if not out:
            raise MedkitError(f"{self.name}: the engine returned no continuation")
        return out[0], out[1]


def wait_while_working(done: Callable[[float], bool], *, cpu_seconds: Callable[[], float] = time.process_time,
                       limit_s: float, idle_s: float, poll_s: float = 1.0,
                       idle_cpu_fraction: float = IDLE_CPU_FRACTION) -> str:
    """Wait until ``done(timeout)`` (which waits up to ``timeout`` seconds) says the work is done: "done";
    "idle" when ``cpu_seconds()`` (the worker's CPU time, all threads) grew by less than ``idle_cpu_fraction``
    of ``idle_s`` over the last ``idle_s`` seconds (a hang: nothing computes); "limit" when it still runs
    after ``limit_s`` seconds."""
    start = time.monotonic()
    window: list[tuple[float, float]] = [(start, cpu_seconds())]  # (wall, CPU) samples
    while True:
        if done(poll_s):
            return "done"
        now, cpu = time.monotonic(), cpu_seconds()
        if now - start >= limit_s:
            return "limit"
        window.append((now, cpu))
        while len(window) > 1 and now - window[1][0] >= idle_s:
            window.pop(0)  # keep the latest sample at least idle_s old
        first_wall, first_cpu = window[0]
        if now - first_wall >= idle_s and cpu - first_cpu < idle_cpu_fraction * (now - first_wall):
            return "idle"


def check_parity(model: Any, tokenizer: Any, backend: OpenVINOBackend, *, greedy: bool = True) -> dict[str, Any]:
    """The export against its source on :data:`medkit.engine.PARITY_PROMPTS` (cached in the export folder).

    Mean absolute gap between the engine's per-token log-probs of its own greedy continuation and
    the source's (teacher forcing) on the same tokens; with ``greedy`` also how many of the
    engine's greedy continuations equal the source's. Raises beyond the tolerance of the backend's precision.
    """
    from .engine import (PARITY_NEW_TOKENS, PARITY_PROMPTS, PARITY_TOLERANCE, prompt_ids, source_greedy,
                         source_logprobs, within_tolerance)

    cache = backend.folder / f"parity-{backend.precision}{'' if greedy else '-scored'}.json"
    if cache.is_file():
        return within_tolerance(json.loads(cache.read_text(encoding="utf-8")), backend.folder)
    gaps: list[float] = []
    identical = 0
    for question in PARITY_PROMPTS:
        ids = prompt_ids(tokenizer, question)
        cont, logps = backend.greedy_logprobs(ids, PARITY_NEW_TOKENS)
        src = source_logprobs(model, ids + cont, len(ids))
        gaps += [abs(a - b) for a, b in zip(src, logps)]
        if greedy:
            identical += int(source_greedy(model, tokenizer, ids) == cont)
    result = {"compute_type": backend.precision, "weights": WEIGHT_PRECISION, "engine": "openvino",
              "mean_abs_logprob_gap": round(sum(gaps) / len(gaps), 5), "max_abs_logprob_gap": round(max(gaps), 5),
              "greedy_identical": identical if greedy else None, "prompts": len(PARITY_PROMPTS),
              "tolerance": PARITY_TOLERANCE[backend.precision]}
    write_json(cache, result)
    return within_tolerance(result, backend.folder)


def engine_backend(model: Any, tokenizer: Any, *, precision: str = "float32", batch_size: int = 64,
                   name: str | None = None, progress: bool = True, root: Path | None = None,
                   greedy_parity: bool = True) -> OpenVINOBackend:
    """``model`` (float32, in memory) exported, loaded in OpenVINO GenAI at ``precision`` and checked against itself."""
    folder = export(model, tokenizer, root=root)
    backend = OpenVINOBackend(folder, tokenizer, precision=precision, batch_size=batch_size, name=name,
                              progress=progress)
    backend.parity = check_parity(model, tokenizer, backend, greedy=greedy_parity)
    return backend


def _torch_threads() -> int:
    """torch's intra-op threads, but never 1 on a machine with more cores: OpenVINO 2026.4.1's CPU plugin
    dies of an integer division by zero (SIGFPE, "trap divide error in libopenvino_intel_cpu_plugin.so")
    when a pipeline is built with INFERENCE_NUM_THREADS 1 on an Intel Xeon with AMX — measured here
    2026-12-04 on a 2-core one, whatever NUM_STREAMS / pinning / hyper-threading say; 2 threads work.
    An inherited OMP_NUM_THREADS=1 used to bring that about (dask's nanny sets it: medkit.mining)."""
    import torch

    return max(min(2, os.cpu_count() or 1), torch.get_num_threads())
