"""Chat-completion backends: one interface over a local transformers model and an HTTP endpoint.

Scope:

* :class:`ChatBackend` is the protocol every caller codes against (difficulty-calibration
  solvers, the optional question polisher, later the ReAct agent and evaluation):
  ``generate(conversations, *, max_new_tokens, temperature, stop, seed) -> list[Completion]``,
  one :class:`Completion` per conversation, in the order given. ``seed`` is an int (row ``i``
  samples with ``seed + i``) or one seed per conversation (:func:`row_seeds`): the agent gives
  each conversation its own, so a conversation's sample does not depend on what else is in the
  batch on the engines that seed each request (OpenVINO, vLLM, an endpoint);
  :func:`call_seed` folds them into one for the backends that seed a whole call.
* :class:`LocalTransformersBackend` runs a loaded causal LM in-process: chat template with the
  generation prompt, left-padded batches of conversations sorted by prompt length (the order is
  restored afterwards), greedy decoding at ``temperature == 0`` and seeded sampling otherwise,
  stop strings honoured (transformers' ``stop_strings`` stops early, the text is cut at the
  first stop string), prompt and completion token counts.
* :class:`OpenAICompatibleBackend` speaks ``POST {base_url}/chat/completions`` (vLLM, sglang,
  hosted APIs) with the standard library. Endpoint failures (unreachable, timeout, HTTP
  error, malformed JSON) never raise out of ``generate``: the affected completions carry
  ``finish_reason="error"`` and a one-line ``error`` naming the URL and the reason.
  :meth:`OpenAICompatibleBackend.check` probes the endpoint for a one-line status.
  The API key is never logged, printed or put into an error message.
* :func:`backend_from_config` builds either from ``"local:<profile>"`` (through the engine
  :mod:`medkit.engine` picks: OpenVINO, CTranslate2 or this transformers backend) or a dict.

Out of scope: prompts, answer parsing, tool calling and the agent loop (their own modules).
torch and transformers are imported lazily so that ``import medkit.llm`` stays cheap.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import ConfigError, InputError

Seed = int | Sequence[int] | None  # one seed for a call (row i: seed + i), or one per row

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FINISH_REASONS: tuple[str, ...] = ("stop", "length", "error")
BACKEND_TYPES: tuple[str, ...] = ("local", "openai")
DEFAULT_LOCAL_PROFILE = "cpu"

Conversation = list[dict[str, Any]]


# --------------------------------------------------------------------------- interface


@dataclass(frozen=True)
class Completion:
    """One generated reply.

    ``finish_reason`` is ``"stop"`` (end of turn or a stop string), ``"length"``
    (``max_new_tokens`` reached) or ``"error"`` (then ``text`` is empty and ``error`` says
    why). Token counts are 0 when unknown (an error, or a server that reports no usage).
    """

    text: str
    n_prompt_tokens: int
    n_completion_tokens: int
    finish_reason: str
    error: str | None = None

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"

    @classmethod
    def failed(cls, message: str) -> Completion:
        return cls(text="", n_prompt_tokens=0, n_completion_tokens=0, finish_reason="error", error=message)


@runtime_checkable
class ChatBackend(Protocol):
    """What every chat-completion backend offers."""

    name: str

    def generate(self, conversations: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: Seed = None) -> list[Completion]:
        """One completion per conversation, in the order given."""
        ...


# --------------------------------------------------------------------------- shared helpers


def validate_conversations(conversations: Sequence[Sequence[dict[str, Any]]]) -> list[Conversation]:
    """The conversations as lists of ``{"role", "content"}`` dicts; InputError names the bad one."""
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
        raise InputError(None, "conversations must be a list of conversations (lists of message dicts)")
    checked: list[Conversation] = []
    for i, conv in enumerate(conversations):
        if isinstance(conv, (str, bytes, dict)) or not isinstance(conv, Sequence) or len(conv) == 0:
            raise InputError(None, f"conversation {i} must be a non-empty list of message dicts")
        for j, msg in enumerate(conv):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or "content" not in msg:
                raise InputError(None, f"conversation {i}, message {j}: expected a dict with 'role' and 'content'")
        checked.append(list(conv))
    return checked


def check_generation_args(max_new_tokens: int, temperature: float, stop: Sequence[str] | None) -> list[str]:
    """Validate the sampling arguments; returns the stop strings as a list (empty strings dropped)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature!r}")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not all(isinstance(s, str) for s in stop):
        raise ConfigError(f"stop must be a list of strings, got {stop!r}")
    return [s for s in stop if s]


def row_seeds(seed: Seed, n: int) -> list[int | None]:
    """The sampling seed of each of ``n`` rows: ``seed + i`` for an int, the given one per row for a sequence
    (which must hold ``n`` ints), None for every row without a seed."""
    if seed is None:
        return [None] * n
    if isinstance(seed, bool):
        raise ConfigError(f"seed must be an int or one int per row, got {seed!r}")
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
        raise ConfigError(f"seed must be an int or one int per row ({n} rows), got {seed!r}")
    return seeds


def call_seed(seed: Seed) -> int | None:
    """One seed for a backend that seeds a whole call (transformers, CTranslate2): an int as given, one seed
    per row folded into one (a stable digest). The call is reproducible, but on these backends a row's sample
    depends on the rows beside it."""
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return seed
    import hashlib

    seeds = row_seeds(seed, len(list(seed)))
    digest = hashlib.blake2b(",".join(str(x) for x in seeds).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from .notebook_output import progress as tqdm  # tqdm.auto, off in headless runs

    return tqdm(total=total, desc=desc, unit="conv", disable=not enabled, leave=False)


# --------------------------------------------------------------------------- local transformers model


@contextlib.contextmanager
def eval_mode(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """The model in eval mode (no dropout) for the block; a model that was training goes back to it."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


@contextlib.contextmanager
def left_padding(tokenizer: PreTrainedTokenizerBase) -> Iterator[PreTrainedTokenizerBase]:
    """Left padding with a pad token (the EOS token if there is none); restores both afterwards."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    try:
        if pad is None:
            if tokenizer.eos_token is None:
                raise ConfigError("the tokenizer has neither a pad token nor an EOS token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def eos_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> set[int]:
    """The token ids that end a turn: the tokenizer's EOS, the model's generation-config EOS and
    ChatML's ``<|im_end|>`` when the vocabulary has it (every backend stops on the same set)."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(int(tokenizer.convert_tokens_to_ids("<|im_end|>")))
    return ids


def _first_stop_prefix(ids: list[int], stop: list[str], decode: Any) -> int | None:
    """The fewest leading tokens of ``ids`` whose text contains a stop string (None: no stop string)."""
    if not stop or not ids or not truncate_at_stop(decode(ids), stop)[1]:
        return None
    lo, hi = 1, len(ids)  # the prefix of hi tokens contains a stop string; find the smallest such
    while lo < hi:
        mid = (lo + hi) // 2
        if truncate_at_stop(decode(ids[:mid]), stop)[1]:
            hi = mid
        else:
            lo = mid + 1
    return hi


def finish_row(generated: list[int], *, n_prompt_tokens: int, eos_ids: set[int], stop: list[str],
               decode: Any, pad_id: int | None = None) -> Completion:
    """Turn one row of generated token ids (possibly padded after it finished) into a Completion.

    The row ends at the first EOS token or at the token that completed a stop string,
    whichever comes first; the EOS token counts as generated, padding after the end does not
    (a ``pad_id`` other than EOS is stripped from the end of the row: a padded row had finished).
    """
    padded = False
    if pad_id is not None and pad_id not in eos_ids:
        end = len(generated)
        while end and generated[end - 1] == pad_id:
            end -= 1
        padded, generated = end < len(generated), generated[:end]
    eos_pos = next((i for i, t in enumerate(generated) if t in eos_ids), None)
    body = generated if eos_pos is None else generated[:eos_pos]
    k = _first_stop_prefix(body, stop, decode)
    if k is not None:
        text, _ = truncate_at_stop(decode(body[:k]), stop)
        return Completion(text, n_prompt_tokens, k, "stop")
    if eos_pos is not None:
        return Completion(decode(body), n_prompt_tokens, eos_pos + 1, "stop")
    return Completion(decode(body), n_prompt_tokens, len(generated), "stop" if padded else "length")


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, conversation: Sequence[dict[str, Any]]) -> list[int]:
    """The token ids of ``conversation`` under the chat template, generation prompt appended."""
    ids = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def generate_through_ids(backend: Any, conversations: list[list[dict]], *, max_new_tokens: int,
                         temperature: float = 0.0, stop: list[str] | None = None,
                         seed: Seed = None) -> list[Completion]:
    """The :class:`ChatBackend` call for an engine that generates from token ids (``backend.generate_ids``,
    ``backend.tokenizer``, ``backend.eos_ids``): one completion per conversation, in the order given."""
    convs = validate_conversations(conversations)
    stops = check_generation_args(max_new_tokens, temperature, stop)
    prompts = [chat_prompt_ids(backend.tokenizer, c) for c in convs]
    generated = backend.generate_ids(prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stops,
                                     seed=seed)

    def decode(ids: list[int]) -> str:
        return backend.tokenizer.decode(ids, skip_special_tokens=True)

    return [finish_row(ids, n_prompt_tokens=len(p), eos_ids=backend.eos_ids, stop=stops, decode=decode)
            for p, ids in zip(prompts, generated)]


class TokenIdChat:
    """The :class:`ChatBackend` calls of an engine that generates from token ids: a subclass provides
    ``tokenizer``, ``eos_ids`` and ``generate_ids`` (the CTranslate2 and OpenVINO backends)."""

    tokenizer: Any

    def prompt_ids(self, conversation: list[dict[str, Any]]) -> list[int]:
        """The conversation's token ids under the chat template, generation prompt appended."""
        return chat_prompt_ids(self.tokenizer, conversation)

    def generate(self, conversations: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: Seed = None) -> list[Completion]:
        """One completion per conversation, in the order given (the :class:`ChatBackend` call)."""
        return generate_through_ids(self, conversations, max_new_tokens=max_new_tokens, temperature=temperature,
                                    stop=stop, seed=seed)


class LocalTransformersBackend:
    """A transformers causal LM in this process, generating in left-padded batches.

    ``generation_kwargs`` are passed to ``model.generate`` on every call (e.g.
    ``{"min_new_tokens": 64}`` for a benchmark that must not stop early).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 8,
                 name: str | None = None, progress: bool = True,
                 generation_kwargs: dict[str, Any] | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.generation_kwargs = dict(generation_kwargs or {})
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.name = name or f"local:{Path(str(source)).name}"

    @classmethod
    def from_profile(cls, profile: str, *, batch_size: int = 8, progress: bool = True,
                     name: str | None = None) -> LocalTransformersBackend:
        """The policy model of ``profile`` (see :func:`medkit.model.load_model`), ready for inference."""
        from .model import load_model

        model, tokenizer = load_model(profile)
        return cls(model, tokenizer, batch_size=batch_size, progress=progress, name=name or f"local:{profile}")

    def __repr__(self) -> str:
        return f"LocalTransformersBackend(name={self.name!r}, batch_size={self.batch_size})"

    def prompt_texts(self, conversations: list[Conversation]) -> list[str]:
        """Each conversation rendered by the chat template, ending with the assistant prompt."""
        return [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                for c in conversations]

    def _sampling_kwargs(self, temperature: float) -> dict[str, Any]:
        if temperature == 0:
            return {"do_sample": False}
        # plain temperature sampling, as the OpenAI API does: no top-k / top-p / repetition penalty
        return {"do_sample": True, "temperature": float(temperature), "top_p": 1.0, "top_k": 0,
                "repetition_penalty": 1.0}

    def _generate_batch(self, texts: list[str], *, max_new_tokens: int, temperature: float,
                        stop: list[str], eos_ids: set[int]) -> list[Completion]:
        import torch

        tok = self.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id,
                                  "use_cache": True,  # a model loaded for training has it off in its config
                                  **self._sampling_kwargs(temperature), **self.generation_kwargs}
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=tok)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        n_prompt = enc["attention_mask"].sum(dim=1).tolist()

        def decode(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)

        return [finish_row(out[r, width:].tolist(), n_prompt_tokens=int(n_prompt[r]), eos_ids=eos_ids,
                           stop=stop, decode=decode, pad_id=tok.pad_token_id) for r in range(len(texts))]

    def generate(self, conversations: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: Seed = None) -> list[Completion]:
        """Generate in batches of ``batch_size`` (longest prompts first); results in input order.

        Sampling (``temperature > 0``) with a ``seed`` is reproducible: the seed (:func:`call_seed`: one for
        the whole call, so a row's sample depends on the rows beside it) is applied to a forked RNG, so the
        caller's global torch RNG state is left untouched. The model runs in
        eval mode (a training model is put back into train mode afterwards). Malformed
        conversations raise InputError, bad arguments ConfigError.
        """
        import torch

        convs = validate_conversations(conversations)
        stops = check_generation_args(max_new_tokens, temperature, stop)
        if not convs:
            return []
        turn_end = eos_ids(self.tokenizer, self.model)
        results: list[Completion | None] = [None] * len(convs)
        device = torch.device(self.model.device)
        rng_devices = [device] if device.type == "cuda" else []
        with left_padding(self.tokenizer), eval_mode(self.model), torch.random.fork_rng(devices=rng_devices):
            if seed is not None:
                torch.manual_seed(call_seed(seed))
            texts = self.prompt_texts(convs)
            lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # stable: ties keep input order
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            with _progress(len(convs), self.name, self.progress and len(batches) > 1) as bar:
                for batch in batches:
                    done = self._generate_batch([texts[i] for i in batch], max_new_tokens=max_new_tokens,
                                                temperature=temperature, stop=stops, eos_ids=turn_end)
                    for i, completion in zip(batch, done):
                        results[i] = completion
                    bar.update(len(batch))
        return [c for c in results if c is not None]


# --------------------------------------------------------------------------- OpenAI-compatible endpoint


class _RequestFailed(Exception):
    """One failed HTTP exchange: ``retryable`` for transient faults (network, timeout, 429, 5xx)."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


def _snippet(raw: bytes | str, limit: int = 120) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def parse_chat_response(payload: Any) -> tuple[str, str, int, int]:
    """(text, finish_reason, prompt tokens, completion tokens) of a chat-completions response.

    Raises ``ValueError`` naming what is missing when the JSON is not of that shape.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    if "error" in payload and "choices" not in payload:
        err = payload["error"]
        raise ValueError(f"server error: {_snippet(json.dumps(err) if not isinstance(err, str) else err)}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no 'choices' in the response")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("no 'choices[0].message' in the response")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"'choices[0].message.content' is a {type(content).__name__}, not a string")
    reason = "length" if choices[0].get("finish_reason") == "length" else "stop"
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    n_prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    n_completion = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else 0
    return content or "", reason, n_prompt, n_completion


class _Breaker:
    """Stops sending after ``limit`` consecutive transient failures in one generate() call."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0
        self.last_reason = ""
        self.lock = threading.Lock()

    def tripped(self) -> bool:
        with self.lock:
            return self.limit > 0 and self.failures >= self.limit

    def record(self, ok: bool, reason: str = "") -> None:
        with self.lock:
            if ok:
                self.failures = 0
            else:
                self.failures += 1
                self.last_reason = reason


class OpenAICompatibleBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint (vLLM, sglang, hosted APIs).

    One request per conversation, ``concurrency`` requests in flight. Transient failures
    (connection refused, timeouts, HTTP 408/429/5xx, dropped connections) are retried up to
    ``max_retries`` times with exponential backoff; after ``max_consecutive_failures``
    conversations in a row failed that way, the rest of the call fails fast instead of waiting
    out every timeout against a dead endpoint.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60,
                 max_retries: int = 2, *, name: str | None = None, concurrency: int = 1,
                 retry_backoff: float = 0.5, max_consecutive_failures: int = 3, progress: bool = True,
                 slow_after: float | None = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be a non-empty string (the model name the server serves)")
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        if max_retries < 0 or concurrency < 1:
            raise ConfigError(f"max_retries must be >= 0 and concurrency >= 1, got {max_retries!r}, {concurrency!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self._api_key = api_key or None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.retry_backoff = float(retry_backoff)
        self.max_consecutive_failures = int(max_consecutive_failures)
        # a request still unanswered after this long is said so, once per backend (a slow or stuck endpoint
        # otherwise looks like a hung notebook for up to timeout x attempts)
        self.slow_after = float(slow_after) if slow_after is not None else min(15.0, self.timeout / 2)
        self._said_slow = threading.Event()
        self.progress = progress
        self.name = name or f"openai:{model}@{self.base_url}"

    def __repr__(self) -> str:  # never shows the key
        key = "set" if self._api_key else "none"
        return f"OpenAICompatibleBackend(url={self.url!r}, model={self.model!r}, api_key={key})"

    # ------------------------------------------------------------------ HTTP

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _exchange(self, url: str, body: dict[str, Any] | None, timeout: float) -> Any:
        """One request (POST with ``body``, GET without); the decoded JSON or _RequestFailed."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers=self._headers(),
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            try:
                detail = _snippet(e.read())
            except Exception:  # the error body itself may be unreadable
                detail = ""
            retryable = e.code in (408, 429) or e.code >= 500
            raise _RequestFailed(f"HTTP {e.code} {e.reason}" + (f": {detail}" if detail else ""),
                                 retryable=retryable) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _RequestFailed(f"timed out after {timeout:g} s", retryable=True) from None
            raise _RequestFailed(f"unreachable ({reason})", retryable=True) from None
        except (TimeoutError, socket.timeout):
            raise _RequestFailed(f"timed out after {timeout:g} s", retryable=True) from None
        except (http.client.HTTPException, ConnectionError, OSError) as e:
            raise _RequestFailed(f"connection failed ({type(e).__name__}: {e})", retryable=True) from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _RequestFailed(f"response is not valid JSON: {_snippet(raw, 80)!r}", retryable=False) from None

    def _with_retries(self, url: str, body: dict[str, Any] | None, timeout: float) -> Any:
        attempt = 0
        while True:
            try:
                return self._exchange(url, body, timeout)
            except _RequestFailed as e:
                if not e.retryable or attempt >= self.max_retries:
                    if attempt:
                        e.reason += f" (after {attempt + 1} attempts)"
                    raise
            time.sleep(self.retry_backoff * 2 ** attempt)
            attempt += 1

    # ------------------------------------------------------------------ API

    def request_body(self, conversation: Conversation, *, max_new_tokens: int, temperature: float,
                     stop: list[str], seed: int | None) -> dict[str, Any]:
        """The JSON body sent for one conversation."""
        body: dict[str, Any] = {"model": self.model, "messages": conversation, "max_tokens": max_new_tokens,
                                "temperature": float(temperature)}
        if stop:
            body["stop"] = stop
        if seed is not None:
            body["seed"] = int(seed)
        return body

    def _complete_one(self, conversation: Conversation, breaker: _Breaker, **kwargs: Any) -> Completion:
        if breaker.tripped():
            return Completion.failed(f"POST {self.url}: not sent, the endpoint failed {breaker.failures} times "
                                     f"in a row in this call (last: {breaker.last_reason})")
        stop = kwargs["stop"]
        watchdog = threading.Timer(self.slow_after, self._say_slow)
        watchdog.daemon = True
        watchdog.start()
        try:
            payload = self._with_retries(self.url, self.request_body(conversation, **kwargs), self.timeout)
            text, reason, n_prompt, n_completion = parse_chat_response(payload)
        except _RequestFailed as e:
            breaker.record(not e.retryable, e.reason)
            return Completion.failed(self._redact(f"POST {self.url}: {e.reason}"))
        except ValueError as e:
            breaker.record(True)
            return Completion.failed(self._redact(f"POST {self.url}: malformed response ({e})"))
        finally:
            watchdog.cancel()
        breaker.record(True)
        text, cut = truncate_at_stop(text, stop)
        return Completion(text, n_prompt, n_completion, "stop" if cut else reason)

    def generate(self, conversations: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: Seed = None) -> list[Completion]:
        """One request per conversation, results in input order; each request carries its row's seed
        (:func:`row_seeds`).

        Endpoint failures become error completions, never exceptions; only caller bugs raise
        (malformed conversations: InputError, bad arguments: ConfigError).
        """
        convs = validate_conversations(conversations)
        stops = check_generation_args(max_new_tokens, temperature, stop)
        seeds = row_seeds(seed, len(convs))
        breaker = _Breaker(self.max_consecutive_failures)
        kwargs = {"max_new_tokens": max_new_tokens, "temperature": temperature, "stop": stops}
        with _progress(len(convs), self.name, self.progress and len(convs) > 1) as bar:
            def run(row: tuple[Conversation, int | None]) -> Completion:
                conv, row_seed = row
                try:
                    return self._complete_one(conv, breaker, seed=row_seed, **kwargs)
                except Exception as e:  # a bug must not cost the other conversations their results
                    return Completion.failed(self._redact(f"POST {self.url}: {type(e).__name__}: {e}"))
                finally:
                    bar.update(1)

            rows = list(zip(convs, seeds))
            if self.concurrency == 1 or len(rows) <= 1:
                return [run(r) for r in rows]
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(rows))) as pool:
                return list(pool.map(run, rows))

    def _say_slow(self) -> None:
        if not self._said_slow.is_set():
            self._said_slow.set()
            warnings.warn(f"POST {self.url}: no answer after {self.slow_after:g} s; waiting up to {self.timeout:g} s "
                          f"per attempt, {self.max_retries + 1} attempts (a slow or stuck endpoint? set 'timeout' "
                          "in the endpoint spec to fail sooner)", RuntimeWarning, stacklevel=1)

    def check(self) -> tuple[bool, str]:
        """(ok, one line) on whether the endpoint answers and serves ``model``; never raises.

        Asks ``GET {base_url}/models``; a server without that route gets a 1-token chat request.
        """
        models_url = self.base_url + "/models"
        try:
            payload = self._exchange(models_url, None, min(self.timeout, 10.0))
        except _RequestFailed as e:
            if not e.reason.startswith(("HTTP 404", "HTTP 405")):
                return False, self._redact(f"GET {models_url}: {e.reason}")
            return self._check_by_chat()
        data = payload.get("data") if isinstance(payload, dict) else None
        served = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else None
        if served is None:
            return self._check_by_chat()
        if self.model not in served:
            listed = ", ".join(str(s) for s in served[:8]) + (" ..." if len(served) > 8 else "")
            return False, f"{self.base_url}: reachable, but model {self.model!r} is not served (serves: {listed or 'none'})"
        return True, f"{self.base_url}: OK, serves {self.model!r}"

    def _check_by_chat(self) -> tuple[bool, str]:
        body = self.request_body([{"role": "user", "content": "ping"}], max_new_tokens=1, temperature=0.0,
                                 stop=[], seed=None)
        try:
            parse_chat_response(self._exchange(self.url, body, min(self.timeout, 30.0)))
        except _RequestFailed as e:
            return False, self._redact(f"POST {self.url}: {e.reason}")
        except ValueError as e:
            return False, self._redact(f"POST {self.url}: malformed response ({e})")
        return True, f"{self.base_url}: OK, {self.model!r} answers chat completions"


# --------------------------------------------------------------------------- configuration

_LOCAL_KEYS = ("type", "profile", "batch_size", "name", "progress", "engine", "precision", "engine_batch")
_OPENAI_KEYS = ("type", "base_url", "model", "api_key_env", "timeout", "slow_after", "max_retries", "name",
                "concurrency", "retry_backoff", "max_consecutive_failures", "progress")


def _check_keys(spec: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} for a {spec['type']!r} backend; "
                          f"allowed: {', '.join(allowed)}")


def _openai_from_dict(spec: dict[str, Any]) -> OpenAICompatibleBackend:
    _check_keys(spec, _OPENAI_KEYS)
    missing = [k for k in ("base_url", "model") if not spec.get(k)]
    if missing:
        raise ConfigError(f"an 'openai' backend needs {' and '.join(missing)}")
    api_key = None
    env = spec.get("api_key_env")
    if env:
        api_key = os.environ.get(env)
        if not api_key:
            raise ConfigError(f"environment variable {env} (api_key_env) is not set or empty")
    options = {k: v for k, v in spec.items() if k not in ("type", "base_url", "model", "api_key_env")}
    return OpenAICompatibleBackend(spec["base_url"], spec["model"], api_key=api_key, **options)


def parse_backend_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """The dict form of a backend spec (``"local"`` / ``"local:<profile>"`` or a dict with ``type``)."""
    if isinstance(spec, str):
        kind, _, arg = spec.strip().partition(":")
        if kind == "local":
            return {"type": "local", "profile": arg or DEFAULT_LOCAL_PROFILE}
        if kind == "openai":
            raise ConfigError("an 'openai' backend is configured with a dict: "
                              "{'type': 'openai', 'base_url': ..., 'model': ..., 'api_key_env': ...}")
        raise ConfigError(f"unknown backend {spec!r}: choose one of {', '.join(BACKEND_TYPES)} "
                          "(e.g. 'local:cpu', or a dict with type 'openai')")
    if not isinstance(spec, dict):
        raise ConfigError(f"a backend spec is a string or a dict, got {type(spec).__name__}")
    if spec.get("type") not in BACKEND_TYPES:
        raise ConfigError(f"unknown backend type {spec.get('type')!r}: choose one of {', '.join(BACKEND_TYPES)}")
    return dict(spec)


def backend_from_config(spec: str | dict[str, Any]) -> ChatBackend:
    """A backend from ``"local:<profile>"`` or ``{"type": "local" | "openai", ...}``.

    A local spec takes ``engine`` (:data:`medkit.engine.DEFAULT_ENGINE` by default; ``auto``:
    OpenVINO on CPU where it runs, else transformers; see :mod:`medkit.engine`), ``precision``
    (``float32`` | ``int8``) and ``engine_batch`` (conversations the engine schedules at once;
    ``batch_size`` is transformers').

    ``{"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "...",
    "api_key_env": "OPENAI_API_KEY"}`` reads the key from that environment variable.
    The spec is validated before any model is loaded.
    """
    from .profiles import check_profile

    parsed = parse_backend_spec(spec)
    if parsed["type"] == "openai":
        return _openai_from_dict(parsed)
    _check_keys(parsed, _LOCAL_KEYS)
    profile = check_profile(parsed.get("profile", DEFAULT_LOCAL_PROFILE))
    from .engine import DEFAULT_COMPUTE_TYPE, DEFAULT_ENGINE, DEFAULT_ENGINE_BATCH, inference_backend

    return inference_backend(profile, engine=parsed.get("engine", DEFAULT_ENGINE),
                             precision=parsed.get("precision", DEFAULT_COMPUTE_TYPE),
                             batch_size=parsed.get("batch_size", 8),
                             engine_batch=parsed.get("engine_batch", DEFAULT_ENGINE_BATCH),
                             progress=parsed.get("progress", True),
                             name=parsed.get("name") or f"local:{profile}")
