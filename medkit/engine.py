"""Fast generation on CPU: choosing an engine, and the CTranslate2 backend behind :class:`medkit.llm.ChatBackend`.

Scope:

* **Engines** (``ENGINE`` in the notebooks' parameters): ``transformers`` (the reference
  implementation, :class:`medkit.llm.LocalTransformersBackend`), ``openvino`` (OpenVINO GenAI,
  CPU: :mod:`medkit.openvino_engine`), ``ctranslate2`` (this module, CPU), ``vllm`` (GPU:
  :mod:`medkit.vllm_engine`) and ``auto`` (:func:`resolve_engine`: on CPU OpenVINO when it is
  installed, else CTranslate2, and transformers with a printed note when the model does not
  export or fails the parity check; on a GPU vLLM when it is installed, otherwise transformers).
  Chosen by measurement (``bench/bench_engine.py`` -> ``results/bench/engine.json``).
* **Conversion** (:func:`convert`): a loaded transformers model (the base, or base + merged LoRA
  adapter) is converted once per weights digest and precision into
  ``cache_dir()/engines/ct2-<digest>-<quantization>``. The digest is a sha256 over every tensor's
  name, dtype, shape and bytes and the tokenizer's vocabulary, so a changed policy never reuses
  a stale conversion. The folder is built beside its place and renamed in when complete
  (:func:`medkit.io.build_folder`); a stamp written last marks it complete, so a conversion
  killed half way is never reused.
* **Parity** (:func:`check_parity`): the source model's greedy continuation of fixed prompts is
  scored by both models (teacher forcing). The mean absolute gap of the per-token log-probs must
  stay within :data:`PARITY_TOLERANCE` of the compute type, or the conversion is rejected. The
  result is cached in the conversion folder.
* **The policy being trained** (:class:`PolicySync`, GRPO): the frozen base (freshly
  dequantized for QLoRA) plus the current LoRA deltas (:func:`lora_deltas`) are written into a
  plain float32 model every ``every`` optimizer steps, exported to OpenVINO or converted to
  CTranslate2 and checked like any model, and the previous export of the run is deleted.
* :class:`CTranslate2Backend`: batched generation (prompts sorted by length, finished rows
  leave the batch at once), stop strings and per-row token limits through CTranslate2's
  per-token callback, a cached static prefix (the system turn shared by every conversation of a
  batch) at ``float32`` where it is exact, and :meth:`CTranslate2Backend.generate_ids` — the
  token-level call GRPO rollouts need (ids in, ids out, nothing re-tokenised).
  Sampling with a seed is reproducible: CTranslate2 seeds a worker thread's random generator
  once, so a seeded sampling call runs on a freshly created generator.

Out of scope: the agent loop (:mod:`medkit.agent`), GPU serving (vLLM: :mod:`medkit.vllm_engine`).
ctranslate2, torch and transformers are imported lazily; nothing here imports a GPU package.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, MedkitError
from .io import build_folder, package_version, provenance, write_json
from .llm import Seed, TokenIdChat, call_seed, chat_prompt_ids, eos_ids
from .paths import cache_dir

ENGINES: tuple[str, ...] = ("transformers", "openvino", "ctranslate2", "vllm", "auto")
CPU_ENGINES: tuple[str, ...] = ("openvino", "ctranslate2")  # engines that hold their own copy of the weights
DEFAULT_ENGINE = "auto"  # OpenVINO on CPU (6.3x the transformers baseline in results/bench/engine.json), vLLM on a GPU
COMPUTE_TYPES: tuple[str, ...] = ("auto", "float32", "bf16", "int8")
DEFAULT_COMPUTE_TYPE = "auto"  # resolve_precision: bf16 on OpenVINO where the CPU computes bf16 natively, else float32
ENGINE_PRECISIONS: dict[str, tuple[str, ...]] = {"openvino": ("float32", "bf16"), "ctranslate2": ("float32", "int8")}
DEFAULT_ENGINE_BATCH = 64  # conversations the engine schedules at once (bench/bench_engine.py)
# mean |log p_engine - log p_source| per token on the parity prompts, above which a conversion is rejected
PARITY_TOLERANCE: dict[str, float] = {"float32": 0.01, "bf16": 0.1, "int8": 0.3}  # bf16: OpenVINO 0.034 and transformers 0.035 measured
PARITY_PROMPTS: tuple[str, ...] = (
    "What is Marfan syndrome?",
    "Name a gene associated with cystic fibrosis and say how it is inherited.",
)
PARITY_NEW_TOKENS = 24
PARITY_REFERENCE = ("Marfan syndrome is an inherited disorder of connective tissue caused by mutations in FBN1; "
                    "it affects the heart, the eyes and the skeleton.")
CONVERSION_FORMAT = 1  # bump when the recipe changes: every cached conversion is redone
STAMP = "medkit_engine.json"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
STOP_WINDOW = 12  # tokens decoded at the end of a row to look for a stop string
# CTranslate2 prefills a batch only up to its shortest prompt and feeds the rest of each longer
# prompt one decoding step at a time: a batch never mixes prompts whose lengths differ by more
DEFAULT_MAX_SPREAD = 64


# --------------------------------------------------------------------------- choosing an engine


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"unknown ENGINE {engine!r}: choose one of {', '.join(ENGINES)}")
    return engine


def resolve_engine(engine: str, *, on_gpu: bool) -> str:
    """The engine ``auto`` stands for on this hardware (other names are returned as they are)."""
    check_engine(engine)
    if engine != "auto":
        return engine
    if on_gpu:
        from .vllm_engine import vllm_available

        return "vllm" if vllm_available() else "transformers"
    from .openvino_engine import available as openvino_available

    return "openvino" if openvino_available() else "ctranslate2"


def ctranslate2_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ctranslate2") is not None


def check_compute_type(compute_type: str) -> str:
    if compute_type not in COMPUTE_TYPES:
        raise ConfigError(f"unknown ENGINE_PRECISION {compute_type!r}: choose one of {', '.join(COMPUTE_TYPES)}")
    return compute_type


def resolve_precision(precision: str, engine: str) -> str:
    """The compute precision ``precision`` stands for on ``engine`` (a resolved CPU engine name).

    ``auto``: ``bf16`` on OpenVINO where the CPU computes bf16 natively (the rule the transformers
    path follows, :func:`medkit.model.cpu_has_bf16`; measured 1.5x faster than float32 on agent
    rollouts, ``bench/bench_engine.py``), ``float32`` otherwise. A precision the engine does not
    have is a :class:`ConfigError`.
    """
    check_compute_type(precision)
    if precision == "auto":
        from .model import cpu_has_bf16

        return "bf16" if engine == "openvino" and cpu_has_bf16() else "float32"
    allowed = ENGINE_PRECISIONS.get(engine)
    if allowed is not None and precision not in allowed:
        raise ConfigError(f"ENGINE_PRECISION={precision!r} is not available on ENGINE={engine!r}: "
                          f"choose auto or one of {', '.join(allowed)}")
    return precision


# --------------------------------------------------------------------------- conversion


def weights_digest(model: Any, tokenizer: Any) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes) and the tokenizer's vocabulary."""
    import torch

    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()


def conversion_dir(digest: str, quantization: str, root: Path | None = None) -> Path:
    return (root or cache_dir() / "engines") / f"ct2-{digest[:24]}-{quantization}"


def is_complete(folder: Path) -> bool:
    """A finished conversion: model, vocabulary and a stamp of the current format."""
    folder = Path(folder)
    if folder.name.startswith(".") or not all((folder / f).is_file() for f in ("model.bin", "config.json", STAMP)):
        return False
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return stamp.get("parameters", {}).get("conversion_format") == CONVERSION_FORMAT


def _architecture(model: Any) -> str:
    archs = getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__]
    return str(archs[0])


def convert(model: Any, tokenizer: Any, quantization: str = DEFAULT_COMPUTE_TYPE, *,
            digest: str | None = None, root: Path | None = None) -> Path:
    """``model`` in CTranslate2's format, cached by weights digest and quantization under ``root``
    (default ``cache_dir()/engines``)."""
    quantization = resolve_precision(quantization, "ctranslate2")
    if not ctranslate2_available():
        raise ConfigError("ENGINE=ctranslate2 needs the ctranslate2 package (pip install ctranslate2); "
                          "use ENGINE='transformers' or 'auto'")
    arch = _architecture(model)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"{arch} is not an architecture the CTranslate2 path supports "
                          f"({', '.join(SUPPORTED_ARCHITECTURES)}); use ENGINE='transformers'")
    digest = digest or weights_digest(model, tokenizer)

    def build(folder: Path) -> None:
        import tempfile
        import time

        import ctranslate2

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as config_dir:
            model.config.save_pretrained(config_dir)
            # CTranslate2's loaders take modules apart while converting: they get a copy, the caller keeps its model
            _InMemoryConverter(config_dir, copy.deepcopy(model), tokenizer).convert(str(folder), quantization=quantization,
                                                                   force=True)
        write_json(folder / STAMP, provenance(
            conversion_format=CONVERSION_FORMAT, weights_sha256=digest, quantization=quantization,
            architecture=arch, seconds=round(time.perf_counter() - t0, 2),
            versions={"ctranslate2": ctranslate2.__version__, "transformers": package_version("transformers")}))

    try:
        return build_folder(conversion_dir(digest, quantization, root), build, is_complete)
    except (ValueError, NotImplementedError, RuntimeError) as e:
        raise MedkitError(f"CTranslate2 could not convert {getattr(model.config, '_name_or_path', arch)}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _converter_base() -> type:
    from ctranslate2.converters import TransformersConverter

    return TransformersConverter


class _InMemoryConverter:
    """CTranslate2's TransformersConverter fed with a model already in memory (no save and reload)."""

    def __new__(cls, config_dir: str, model: Any, tokenizer: Any) -> Any:
        base = _converter_base()

        class Converter(base):  # type: ignore[misc, valid-type]
            def load_model(self, model_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
                return model

            def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
                return tokenizer

        return Converter(config_dir)


# --------------------------------------------------------------------------- parity


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": question}])


def source_greedy(model: Any, tokenizer: Any, ids: list[int], n: int = PARITY_NEW_TOKENS) -> list[int]:
    """The transformers model's greedy continuation of ``ids``: exactly ``n`` new token ids (the parity reference)."""
    import torch

    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids], device=model.device), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, pad_token_id=tokenizer.eos_token_id)
    return out[0, len(ids):].tolist()


def source_logprobs(model: Any, ids: list[int], start: int) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= start under the transformers model (float32)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[i - 1, ids[i]]) for i in range(start, len(ids))]


def check_parity(model: Any, tokenizer: Any, folder: Path, compute_type: str, *, greedy: bool = True) -> dict[str, Any]:
    """Compare the converted model with its source on :data:`PARITY_PROMPTS` (cached in ``folder``).

    Reports the mean absolute per-token log-prob gap on the source's greedy continuations and
    how many greedy continuations are identical; raises when the gap exceeds the tolerance.
    ``greedy=False`` (a policy re-exported during training: the recipe was checked at its first
    export) scores :data:`PARITY_REFERENCE` instead — two forward passes, no generation.
    """
    cache = Path(folder) / f"parity-{compute_type}{'' if greedy else '-scored'}.json"
    if cache.is_file():
        return within_tolerance(json.loads(cache.read_text(encoding="utf-8")), folder)
    backend = CTranslate2Backend.load(folder, tokenizer, compute_type=compute_type, progress=False)
    gaps, identical = [], 0
    for question in PARITY_PROMPTS:
        ids = prompt_ids(tokenizer, question)
        if greedy:
            cont = source_greedy(model, tokenizer, ids)
        else:
            cont = tokenizer(PARITY_REFERENCE, add_special_tokens=False)["input_ids"]
        src = source_logprobs(model, ids + cont, len(ids))
        eng = backend.score(ids + cont)[len(ids) - 1:]
        gaps += [abs(a - b) for a, b in zip(src, eng)]
        if greedy:
            mine = backend.generate_ids([ids], max_new_tokens=PARITY_NEW_TOKENS, temperature=0.0,
                                        min_new_tokens=PARITY_NEW_TOKENS)[0]
            identical += int(mine[:len(cont)] == cont)
    result = {"compute_type": compute_type, "mean_abs_logprob_gap": round(sum(gaps) / len(gaps), 5),
              "max_abs_logprob_gap": round(max(gaps), 5), "greedy_identical": identical if greedy else None,
              "prompts": len(PARITY_PROMPTS), "tolerance": PARITY_TOLERANCE[compute_type]}
    write_json(cache, result)
    return within_tolerance(result, folder)


def within_tolerance(result: dict[str, Any], folder: Path) -> dict[str, Any]:
    compute_type = result["compute_type"]
    if result["mean_abs_logprob_gap"] > PARITY_TOLERANCE[compute_type]:
        raise MedkitError(f"{folder}: the converted model disagrees with its source (mean |log-prob gap| "
                          f"{result['mean_abs_logprob_gap']} > {PARITY_TOLERANCE[compute_type]} at {compute_type}); "
                          "delete the folder to reconvert, or use ENGINE='transformers'")
    return result


# --------------------------------------------------------------------------- the backend


@dataclass
class _Row:
    """One row of a generate call: its token limit, generated ids and whether it is finished."""

    limit: int
    ids: list[int]
    done: bool = False


class CTranslate2Backend(TokenIdChat):
    """A CTranslate2 generator (CPU) with the model's tokenizer; see the module docstring."""

    def __init__(self, folder: str | Path, tokenizer: Any, *, compute_type: str = DEFAULT_COMPUTE_TYPE,
                 batch_size: int = DEFAULT_ENGINE_BATCH, threads: int | None = None, name: str | None = None,
                 progress: bool = True, static_prefix: bool | None = None, max_spread: int | None = DEFAULT_MAX_SPREAD) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.folder = Path(folder)
        self.tokenizer = tokenizer
        self.compute_type = resolve_precision(compute_type, "ctranslate2")
        self.batch_size = batch_size
        self.max_spread = max_spread
        self.threads = threads or _torch_threads()
        self.progress = progress
        # a static prefix is computed on its own; exact at float32, not at int8 (activations quantized per batch)
        self.static_prefix = (self.compute_type == "float32") if static_prefix is None else bool(static_prefix)
        self.name = name or f"ct2:{self.folder.name}"
        self.eos_ids = eos_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.parity: dict[str, Any] | None = None
        self.generator = self._new_generator()

    @classmethod
    def load(cls, folder: str | Path, tokenizer: Any, **kwargs: Any) -> CTranslate2Backend:
        folder = Path(folder)
        if not is_complete(folder):
            raise MedkitError(f"{folder}: not a complete CTranslate2 conversion (medkit.engine.convert writes one)")
        return cls(folder, tokenizer, **kwargs)

    def _new_generator(self, seed: int | None = None) -> Any:
        import ctranslate2

        if seed is not None:
            ctranslate2.set_random_seed(int(seed) % (2**31))
        return ctranslate2.Generator(str(self.folder), device="cpu", compute_type=self.compute_type,
                                     inter_threads=1, intra_threads=self.threads)

    def __repr__(self) -> str:
        return f"CTranslate2Backend(name={self.name!r}, compute_type={self.compute_type!r})"

    # -- token level
    def score(self, ids: list[int]) -> list[float]:
        """log p(ids[i] | ids[:i]) for i >= 1 (teacher forcing)."""
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        return list(self.generator.score_batch([tokens], max_input_length=0)[0].log_probs)

    def generate_ids(self, inputs: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int],
                     temperature: float = 0.0, stop: Sequence[str] | None = None, seed: Seed = None,
                     min_new_tokens: int = 0) -> list[list[int]]:
        """Generated ids for every input id list, in input order (an EOS token ends a row and is kept).

        A row also ends at the token that completes a stop string, or at its own ``max_new_tokens``.
        """
        limits = [int(max_new_tokens)] * len(inputs) if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
        if len(limits) != len(inputs) or any(x < 1 for x in limits):
            raise ConfigError("max_new_tokens must be >= 1 for every input")
        stops = [s for s in (stop or []) if s]
        if temperature > 0 and seed is not None:  # one seed per call (call_seed): a row's sample depends on its batch
            self.generator = self._new_generator(call_seed(seed))  # module docstring: per-call seeds need a fresh thread
        out: list[list[int]] = [[] for _ in inputs]
        with _bar(len(inputs), self.name, self.progress and len(inputs) > 1) as bar:
            for chunk in length_buckets([len(x) for x in inputs], self.batch_size, self.max_spread):
                rows = self._generate_chunk([list(inputs[i]) for i in chunk], [limits[i] for i in chunk],
                                            temperature, stops, min_new_tokens)
                for i, ids in zip(chunk, rows):
                    out[i] = ids
                bar.update(len(chunk))
        return out

    def _static_prefix(self, inputs: list[list[int]]) -> int:
        """Tokens shared by every input up to the end of the first turn (0: none / not used)."""
        if not self.static_prefix or len(inputs) < 2:
            return 0
        first = inputs[0]
        end = next((i + 1 for i, t in enumerate(first) if t in self.eos_ids), 0)
        n = 0
        while n < end and all(len(x) > n + 1 and x[n] == first[n] for x in inputs):
            n += 1
        return n if n == end else 0

    def _generate_chunk(self, inputs: list[list[int]], limits: list[int], temperature: float, stops: list[str],
                        min_new_tokens: int) -> list[list[int]]:
        tok = self.tokenizer
        rows = [_Row(limit, []) for limit in limits]
        on_token = _stop_callback(rows, self.eos_ids, stops, tok)
        n_static = self._static_prefix(inputs)
        tokens = [tok.convert_ids_to_tokens(x[n_static:]) for x in inputs]
        sampling = ({"sampling_topk": 1} if temperature == 0 else
                    {"sampling_topk": 0, "sampling_topp": 1.0, "sampling_temperature": float(temperature)})
        kwargs: dict[str, Any] = {"max_length": max(limits), "min_length": min_new_tokens,
                                  "include_prompt_in_result": False, "end_token": sorted(self.eos_ids),
                                  "return_end_token": True, "callback": on_token, **sampling}
        if n_static:
            kwargs["static_prompt"] = tok.convert_ids_to_tokens(inputs[0][:n_static])
        results = self.generator.generate_batch(tokens, **kwargs)
        # the callback saw every token in order; the result holds the same ids (a check, not a second source)
        for row, res in zip(rows, results):
            if not row.ids:
                row.ids = list(res.sequences_ids[0])[:row.limit]
        return [row.ids for row in rows]


def length_buckets(lengths: Sequence[int], batch_size: int, max_spread: int | None) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size``, shortest first, each spanning at most
    ``max_spread`` tokens of prompt length (None: no limit)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if (not buckets or len(buckets[-1]) >= batch_size
                or (max_spread is not None and lengths[i] - lengths[buckets[-1][0]] > max_spread)):
            buckets.append([])
        buckets[-1].append(i)
    return buckets


def _stop_callback(rows: list[_Row], eos_ids: set[int], stops: list[str], tokenizer: Any) -> Any:
    """CTranslate2's per-token callback: records each row's ids and says when the row is finished.

    It holds no reference to the backend or its Generator: CTranslate2 may release the callback in
    its own worker thread, and a Generator freed there joins that thread and aborts the process
    ("Resource deadlock avoided", seen here when the last reference to a backend was the callback).
    """

    def on_token(step: Any) -> bool:
        row = rows[step.batch_id]
        if row.done:
            return True
        row.ids.append(int(step.token_id))
        if step.token_id in eos_ids or len(row.ids) >= row.limit:
            row.done = True
        elif stops and any(s in tokenizer.decode(row.ids[-STOP_WINDOW:], skip_special_tokens=True) for s in stops):
            row.done = True
        return row.done

    return on_token


def _torch_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


@contextlib.contextmanager
def _bar(total: int, desc: str, enabled: bool) -> Iterator[Any]:
    from .notebook_output import progress as tqdm  # tqdm.auto, off in headless runs

    bar = tqdm(total=total, desc=desc, unit="conv", disable=not enabled, leave=False)
    try:
        yield bar
    finally:
        bar.close()


# --------------------------------------------------------------------------- one entry point


def engine_backend(model: Any, tokenizer: Any, *, compute_type: str = DEFAULT_COMPUTE_TYPE,
                   batch_size: int = DEFAULT_ENGINE_BATCH,
                   name: str | None = None, progress: bool = True) -> CTranslate2Backend:
    """``model`` (float32, in memory) converted, verified against itself and loaded in CTranslate2."""
    compute_type = resolve_precision(compute_type, "ctranslate2")
    folder = convert(model, tokenizer, compute_type)
    parity = check_parity(model, tokenizer, folder, compute_type)
    backend = CTranslate2Backend.load(folder, tokenizer, compute_type=compute_type, batch_size=batch_size,
                                      name=name, progress=progress)
    backend.parity = parity
    return backend


def make_backend(engine: str, model: Any, tokenizer: Any, *, compute_type: str = DEFAULT_COMPUTE_TYPE,
                 batch_size: int = 16, engine_batch: int = DEFAULT_ENGINE_BATCH, name: str | None = None,
                 progress: bool = True, echo: Any = print) -> Any:
    """The backend ``engine`` asks for over a loaded float32 model (``auto`` falls back with a note).

    ``batch_size`` is the transformers backend's, ``engine_batch`` the engine's (conversations per batch).
    ``transformers`` gives :class:`medkit.llm.LocalTransformersBackend` over ``model`` itself;
    ``openvino`` / ``ctranslate2`` raise a one-line :class:`MedkitError` / :class:`ConfigError` when it cannot run;
    ``vllm`` needs a server with a lifetime (:class:`medkit.vllm_engine.VLLMServer`), not this call.
    """
    from .llm import LocalTransformersBackend

    check_compute_type(compute_type)
    on_gpu = getattr(getattr(model, "device", None), "type", "cpu") != "cpu"
    if engine == "vllm":
        raise ConfigError("ENGINE='vllm' serves a saved model folder: use medkit.vllm_engine.VLLMServer "
                          "(medkit.evaluation.evaluate_adapter does)")
    resolved = resolve_engine(engine, on_gpu=on_gpu)  # auto on a GPU: the model generates in-process
    if resolved in CPU_ENGINES:
        try:
            precision = resolve_precision(compute_type, resolved)
            if resolved == "openvino":
                from .openvino_engine import engine_backend as openvino_backend

                return openvino_backend(model, tokenizer, precision=precision, batch_size=engine_batch, name=name,
                                        progress=progress)
            return engine_backend(model, tokenizer, compute_type=precision, batch_size=engine_batch, name=name,
                                  progress=progress)
        except MedkitError as e:  # ConfigError included
            if engine != "auto":
                raise
            echo(f"note: ENGINE='auto' falls back to transformers: {e}")
    return LocalTransformersBackend(model, tokenizer, batch_size=batch_size, name=name, progress=progress)


def inference_backend(profile: str, adapter_dir: str | Path | None = None, *, engine: str = DEFAULT_ENGINE,
                      precision: str = DEFAULT_COMPUTE_TYPE, bf16: bool | None = False, batch_size: int = 16,
                      engine_batch: int = DEFAULT_ENGINE_BATCH, name: str | None = None, progress: bool = True,
                      echo: Any = print) -> Any:
    """A generation backend for the profile's model with ``adapter_dir`` merged in (None: the base).

    The float32 merged model is what the engine converts; the transformers path (chosen, or the
    fallback of ``auto``) casts it to bf16 when ``bf16`` asks for it (None: where the CPU computes
    bf16 natively), as the reference configuration does.
    """
    from .model import use_bf16
    from .adapters import load_for_inference

    check_engine(engine)
    check_compute_type(precision)
    model, tokenizer = load_for_inference(profile, adapter_dir, bf16=False)
    backend = make_backend(engine, model, tokenizer, compute_type=precision, batch_size=batch_size,
                           engine_batch=engine_batch, name=name, progress=progress, echo=echo)
    if not hasattr(backend, "model"):
        del model  # an engine holds its own copy of the weights
    elif use_bf16(bf16, on_cuda=model.device.type == "cuda"):
        import torch

        backend.model = model.to(torch.bfloat16)
    return backend


# --------------------------------------------------------------------------- the policy being trained (GRPO)


def lora_deltas(model: Any) -> dict[str, Any]:
    """``{"<module>.weight": ΔW}``: each LoRA layer's current float32 weight delta (B·A·scale, every active adapter).

    Only the adapters are read: a bitsandbytes 4-bit base is never dequantized here, because on
    CPU bitsandbytes repacks 4-bit weights at their first forward pass, after which
    ``dequantize_4bit`` returns wrong values (measured: errors of 2x the largest weight). The base
    weights come from a fresh load instead (:func:`medkit.adapters.dequantized_base`).
    """
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and not module.merged:
                deltas = [module.get_delta_weight(a).float() for a in module.active_adapters if a in module.lora_A]
                if deltas:
                    out[f"{name}.weight"] = torch.stack(deltas).sum(0)
    return out


class PolicySync:
    """An engine copy (OpenVINO or CTranslate2) of a policy being trained, exported again every ``every`` optimizer steps.

    ``base`` is a plain float32 model holding the policy's frozen base weights (for a QLoRA policy:
    its 4-bit base dequantized from a fresh load, as :func:`medkit.adapters.merge_adapter` does); it
    becomes the export model. ``backend(model, step)`` returns the engine for rollouts at ``step``,
    re-exported — base + the current LoRA deltas (:func:`lora_deltas`), converted under ``root``,
    parity-checked against the export — when ``every`` steps have passed since the last export
    (``every=1``: always the current policy). Exports are timed in :attr:`syncs`; the previous
    export's folder is deleted.
    """

    def __init__(self, base: Any, tokenizer: Any, root: str | Path, *, precision: str = DEFAULT_COMPUTE_TYPE,
                 every: int = 1, batch_size: int = DEFAULT_ENGINE_BATCH, engine: str = "ctranslate2") -> None:
        if engine not in CPU_ENGINES:
            raise ConfigError(f"PolicySync exports to {', '.join(CPU_ENGINES)}, not {engine!r}")
        self.engine = engine
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"ENGINE_SYNC_STEPS must be a positive integer, got {every!r}")
        self.export = base.eval()
        self.tokenizer = tokenizer
        self.root = Path(root)
        self.precision = resolve_precision(precision, engine)
        self.every = every
        self.batch_size = batch_size
        self.syncs: list[dict[str, Any]] = []
        self._frozen: dict[str, Any] = {}
        self._backend: Any = None
        self._step = -1

    def backend(self, model: Any, step: int) -> Any:
        import shutil
        import time

        import torch

        if self._backend is not None and step - self._step < self.every:
            return self._backend
        t0 = time.perf_counter()
        deltas = lora_deltas(model)
        weights = dict(self.export.named_parameters())
        unknown = sorted(set(deltas) - set(weights))
        if unknown:
            raise MedkitError(f"policy export: LoRA layers {unknown[:3]} have no weight in the base model")
        with torch.no_grad():
            for name, delta in deltas.items():
                frozen = self._frozen.setdefault(name, weights[name].detach().clone())
                weights[name].copy_(frozen + delta)
        previous = self._backend.folder if self._backend is not None else None
        if self.engine == "openvino":
            from .openvino_engine import OpenVINOBackend
            from .openvino_engine import check_parity as openvino_parity
            from .openvino_engine import export as openvino_export

            if self._backend is not None:
                self._backend.close()  # the previous pipeline process (and its KV cache) ends before the next starts
            self._backend = None
            folder = openvino_export(self.export, self.tokenizer, root=self.root)
            self._backend = OpenVINOBackend(folder, self.tokenizer, precision=self.precision,
                                            batch_size=self.batch_size, progress=False)
            parity = openvino_parity(self.export, self.tokenizer, self._backend, greedy=not self.syncs)
        else:
            folder = convert(self.export, self.tokenizer, self.precision, root=self.root)
            parity = check_parity(self.export, self.tokenizer, folder, self.precision, greedy=not self.syncs)
            self._backend = CTranslate2Backend.load(folder, self.tokenizer, compute_type=self.precision,
                                                    batch_size=self.batch_size, progress=False)
        if previous is not None and previous != folder:
            shutil.rmtree(previous, ignore_errors=True)
        self._step = step
        self.syncs.append({"step": step, "seconds": round(time.perf_counter() - t0, 2),
                           "mean_abs_logprob_gap": parity["mean_abs_logprob_gap"]})
        return self._backend
