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

Out of scope: choosing the engine (:mod:`medkit.engine`), the agent loop, GPU serving.
openvino, openvino_genai and gguf are imported lazily; nothing here imports a GPU package.
"""

from __future__ import annotations

import os
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
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
# sampler was seen (once, in a smoke run) waiting forever on its own thread pool with every thread idle.
# The batch is then rerun once on a fresh pipeline; a second hang raises. The longest legitimate call
# measured here (64 agent turns of the 135M model at once) takes about a minute.
GENERATE_WATCHDOG_S = 600.0
# ... and a call is taken as hung sooner when the process has done (next to) no work for this long: the hang
# leaves every thread idle, while a working call keeps the cores busy. The 2026-12-04 cpu reference run lost
# 30 minutes to three hangs waited out at the 600 s limit; each was seen as idle within a minute.
GENERATE_IDLE_S = 45.0
IDLE_CPU_FRACTION = 0.02  # "no work": the process's CPU time grew by less than this share of the idle window
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


class OpenVINOBackend(TokenIdChat):
    """An OpenVINO GenAI continuous-batching pipeline (CPU) with the model's tokenizer; see the module docstring."""

    def __init__(self, folder: str | Path, tokenizer: Any, *, precision: str = "float32", batch_size: int = 64,
                 threads: int | None = None, kv_cache_gb: float = DEFAULT_KV_CACHE_GB, prefix_caching: bool = True,
                 name: str | None = None, progress: bool = True) -> None:
        import openvino_genai as ov_genai

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
        self.restarts = 0  # pipelines rebuilt after a hung generate call
        sched = ov_genai.SchedulerConfig()
        sched.enable_prefix_caching = bool(prefix_caching)
        sched.cache_size = max(1, int(round(kv_cache_gb)))
        sched.max_num_seqs = batch_size
        sched.max_num_batched_tokens = DEFAULT_MAX_BATCHED_TOKENS
        hint, kv = PRECISION_PROPERTIES[precision]
        properties = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": hint, "KV_CACHE_PRECISION": kv}
        self._new_pipe = lambda: ov_genai.ContinuousBatchingPipeline(str(self.folder / GGUF_FILE), sched, "CPU",
                                                                      properties)
        self.pipe = self._new_pipe()

    def __repr__(self) -> str:
        return f"OpenVINOBackend(name={self.name!r})"

    # -- token level
    def _config(self, limit: int, temperature: float, stops: list[str], seed: int | None, min_new_tokens: int,
                logprobs: bool = False) -> Any:
        cfg = self.pipe.get_config()
        cfg.max_new_tokens = int(limit)
        cfg.min_new_tokens = int(min_new_tokens)
        cfg.stop_token_ids = set(self.eos_ids)
        cfg.stop_strings = set(stops)
        cfg.include_stop_str_in_output = True
        cfg.num_return_sequences = 1
        if logprobs:
            cfg.logprobs = 1
        if temperature > 0:
            cfg.do_sample = True
            cfg.temperature = float(temperature)
            cfg.top_p = 1.0
            cfg.rng_seed = int(seed if seed is not None else random.SystemRandom().randrange(2**31)) % (2**31)
        else:
            cfg.do_sample = False
        return cfg

    def generate_ids(self, inputs: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int],
                     temperature: float = 0.0, stop: Sequence[str] | None = None, seed: Seed = None,
                     min_new_tokens: int = 0) -> list[list[int]]:
        """Generated ids for every input id list, in input order (an EOS token ends a row and is kept;
        a row may run a token past the end of a stop string: :func:`medkit.llm.finish_row` cuts it)."""
        import numpy as np
        import openvino as ov

        if not inputs:
            return []
        limits = [int(max_new_tokens)] * len(inputs) if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
        if len(limits) != len(inputs) or any(x < 1 for x in limits):
            raise ConfigError("max_new_tokens must be >= 1 for every input")
        stops = [s for s in (stop or []) if s]
        configs = [self._config(limit, temperature, stops, row_seed, min_new_tokens)
                   for limit, row_seed in zip(limits, row_seeds(seed, len(inputs)))]
        tensors = [ov.Tensor(np.asarray([list(x)], dtype=np.int64)) for x in inputs]
        results = self._guarded_generate(tensors, configs)
        return [list(r.m_generation_ids[0])[:limit] for r, limit in zip(results, limits)]

    def _guarded_generate(self, tensors: list[Any], configs: list[Any]) -> list[Any]:
        """``pipe.generate`` under a watchdog (:func:`wait_while_working`: idle for :data:`GENERATE_IDLE_S`, or
        running past :data:`GENERATE_WATCHDOG_S`): a call that hangs is rerun once on a freshly built pipeline
        (the hung one is abandoned in its daemon thread); a second hang raises."""
        for attempt in (1, 2):
            box: dict[str, Any] = {}
            pipe = self.pipe

            def work() -> None:
                try:
                    box["out"] = pipe.generate(tensors, configs)
                except BaseException as e:  # handed to the caller's thread below
                    box["err"] = e

            worker = threading.Thread(target=work, name="openvino-generate", daemon=True)
            worker.start()
            verdict = wait_while_working(worker, limit_s=self.watchdog_s, idle_s=self.idle_s)
            if verdict == "done":
                if "err" in box:
                    raise box["err"]
                return box["out"]
            why = (f"did no work for {self.idle_s:.0f} s" if verdict == "idle"
                   else f"did not return within {self.watchdog_s:.0f} s")
            if attempt == 2:
                raise MedkitError(f"{self.name}: the OpenVINO engine's generate call {why}, twice (a hung call); "
                                  "rerun, or use ENGINE='transformers'")
            log.warning("%s: generate %s; rebuilding the pipeline and retrying the batch", self.name, why)
            self.restarts += 1
            self.pipe = self._new_pipe()
        raise AssertionError("unreachable")

    def greedy_logprobs(self, ids: Sequence[int], n_tokens: int) -> tuple[list[int], list[float]]:
        """The engine's greedy continuation of ``ids`` (exactly ``n_tokens``) and its per-token log-probs."""
        import numpy as np
        import openvino as ov

        cfg = self._config(n_tokens, 0.0, [], None, n_tokens, logprobs=True)
        handle = self.pipe.add_request(random.SystemRandom().randrange(2**62),
                                       ov.Tensor(np.asarray([list(ids)], dtype=np.int64)), cfg)
        while self.pipe.has_non_finished_requests():
            self.pipe.step()
        outputs = handle.read_all()
        if not outputs:
            raise MedkitError(f"{self.name}: the engine returned no continuation")
        return list(outputs[0].generated_ids), [float(x) for x in outputs[0].generated_log_probs]


def wait_while_working(worker: threading.Thread, *, limit_s: float, idle_s: float, poll_s: float = 1.0,
                       idle_cpu_fraction: float = IDLE_CPU_FRACTION) -> str:
    """Wait for ``worker``: "done" when it ends, "idle" when the process's CPU time (all threads) grew by less
    than ``idle_cpu_fraction`` of ``idle_s`` over the last ``idle_s`` seconds while it ran (a hang: nothing
    computes), "limit" when it still runs after ``limit_s`` seconds."""
    start = time.monotonic()
    window: list[tuple[float, float]] = [(start, time.process_time())]  # (wall, process CPU) samples
    while True:
        worker.join(poll_s)
        if not worker.is_alive():
            return "done"
        now, cpu = time.monotonic(), time.process_time()
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
