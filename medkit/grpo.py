"""GRPO on the agent: token-level multi-turn rollouts against the real tools, the composite reward.

Scope (notebooks 06-07):

* :class:`AgentRollouts` is TRL's ``rollout_func``: for every prompt of a generation batch it
  runs the agent loop (the same protocol, parser and stop rules as :func:`medkit.agent.run_agent`)
  **at the token level** with the policy being trained. A rollout's completion is the generated
  token ids of every assistant turn, joined by the chat template's continuation after each turn
  (tool responses, error notes, the next assistant header) tokenised on its own. Nothing is ever
  re-tokenised after generation, so the ids TRL computes the loss on are the ids the policy
  sampled; ``env_mask`` is 1 on the policy's tokens and 0 on every tool-response token, which
  TRL then keeps out of the loss. Each rollout (messages, prediction, counts, stop reason) is
  forwarded to the reward functions and kept in :attr:`AgentRollouts.history` for plots.
* :func:`reward_functions` turns the terms of :mod:`medkit.rewards` into separate TRL reward
  functions (``accuracy``, ``preference``, ``efficiency``; weights ``w_acc, w_pref, -w_eff`` in
  :func:`grpo_config`), so TRL logs each one on its own. A term that raises on one rollout gives
  ``None`` for it (TRL treats it as missing), is counted under ``reward_errors/<term>`` and
  training goes on. Tool-call and tool-failure frequency, answer rate and the preference parts
  are logged as metrics too.
* :func:`load_policy` loads the policy: the profile's base (4-bit nf4 when the SFT adapter was
  trained with QLoRA) with the SFT adapter trainable, or the bare base with a fresh LoRA adapter
  (the "GRPO from base" ablation); :func:`build_trainer` wires :class:`trl.GRPOTrainer`;
  training, resuming from checkpoints and NaN handling reuse :func:`medkit.sft.train` plus
  :class:`StopOnNaN`.

Out of scope: the reward terms themselves (:mod:`medkit.rewards`), evaluation
(:mod:`medkit.evaluation`).
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import agent as A
from . import rewards as R
from .engine import CPU_ENGINES, DEFAULT_COMPUTE_TYPE
from .errors import ConfigError, InputError

log = logging.getLogger(__name__)

_MARK = "\x00medkit-turn\x00"  # placeholder assistant content used to cut the template's continuation


# --------------------------------------------------------------------------- the chat template's joins


def turn_close_and_continuation(tokenizer: Any, after: Sequence[dict[str, str]]) -> tuple[str, str]:
    """(closing, continuation) the chat template renders after an assistant turn's text.

    ``closing`` ends the assistant turn (the EOS token, ``<|im_end|>`` for ChatML), and
    ``continuation`` is everything the template puts between it and the next assistant turn's
    text: ``after`` (text-protocol messages: tool responses as user turns, error notes) and the
    next assistant header. Taken from the tokenizer's own template with a placeholder turn, so
    the joined rollout is byte for byte the conversation the template would render.
    """
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": _MARK}]
    full = tokenizer.apply_chat_template([*base, *after], add_generation_prompt=bool(after), tokenize=False)
    tail = full[full.index(_MARK) + len(_MARK):]
    eos = tokenizer.eos_token or ""
    if not eos or not tail.startswith(eos):
        raise ConfigError(f"the chat template does not end an assistant turn with the EOS token {eos!r} "
                          f"(it renders {tail[:40]!r}); token-level rollouts need a template that does")
    return eos, tail[len(eos):]


def text_messages_after_last_assistant(messages: Sequence[dict[str, Any]],
                                       schemas: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """The text-protocol messages that follow the newest assistant turn."""
    text = A.to_text_messages(messages, schemas)
    last = max(i for i, m in enumerate(text) if m["role"] == "assistant")
    return text[last + 1:]


# --------------------------------------------------------------------------- rollouts


@dataclass
class RolloutConfig:
    """Stop rules and sampling of the GRPO rollouts (the agent's, plus the completion budget)."""

    max_calls: int = 10                # model calls per rollout
    max_new_tokens: int = 160          # per assistant turn
    max_completion_length: int = 1536  # all completion tokens: assistant turns + tool responses (TRL counts both)
    max_format_errors: int = 2         # consecutive turns without a usable call or answer
    temperature: float = 0.7
    seed: int = 13
    batch_size: int = 16               # conversations per generate() call (transformers; the engine takes them all)
    engine: str = "transformers"       # transformers: the policy itself generates | openvino | ctranslate2 (PolicySync) | auto
    engine_precision: str = DEFAULT_COMPUTE_TYPE
    engine_sync_steps: int = 1         # export the policy to the engine every N optimizer steps
    engine_batch: int = 64             # conversations per engine batch
    redraws: int = 0                   # dynamic sampling: a group all right or all wrong is replaced by a fresh
                                       # question's group, at most this many times per group (0 = off)

    def agent_config(self) -> A.AgentConfig:
        """The agent's stop rules and sampling for these rollouts (the completion budget is GRPO's own)."""
        return A.AgentConfig(max_calls=self.max_calls, max_new_tokens=self.max_new_tokens,
                             max_format_errors=self.max_format_errors, temperature=self.temperature, seed=self.seed)


@dataclass
class TokenRollout:
    """One rollout: the agent's state (as :func:`medkit.agent.run_agent` returns it) and its tokens."""

    state: dict[str, Any]
    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]
    turn_ids: list[list[int]]          # ids the policy generated, one list per turn
    turn_texts: list[str]              # their text (special tokens kept)

    def summary(self) -> dict[str, Any]:
        """The rollout dict the reward terms read, plus token counts."""
        s = self.state
        return {"question_id": s["question_id"], "messages": s["messages"], "prediction": s["prediction"],
                "stop_reason": s["stop_reason"], "format_errors": s["format_errors"],
                "tool_errors": s["tool_errors"], "n_model_calls": s["n_model_calls"],
                "n_tool_calls": s["n_tool_calls"], "n_format_errors": len(s["format_errors"]),
                "n_tokens": len(self.prompt_ids) + len(self.completion_ids),
                "n_completion_tokens": len(self.completion_ids), "n_policy_tokens": sum(self.env_mask)}


def _question_index(prompt: Sequence[dict[str, Any]]) -> int:
    """Index of the prompt's question: its last user message."""
    last = max((i for i, m in enumerate(prompt) if m.get("role") == "user"), default=None)
    if last is None:
        raise InputError("GRPO prompt", "a prompt has no user message (the question)")
    return last


def _question_of(prompt: Sequence[dict[str, Any]]) -> str:
    return str(prompt[_question_index(prompt)]["content"])


def prompt_messages(record: dict[str, Any], schemas: list[dict[str, Any]] | None,
                    system: str = A.SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The prompt the agent starts from (system prompt, optional tool block, the question)."""
    return A.to_text_messages([{"role": "system", "content": system}, {"role": "user", "content": record["question"]}],
                              schemas)


def prompt_dataset(records: Sequence[dict[str, Any]], schemas: list[dict[str, Any]] | None) -> Any:
    """A datasets.Dataset with ``prompt`` (chat messages) and ``question_id`` for GRPOTrainer."""
    from datasets import Dataset

    if not records:
        raise InputError("GRPO questions", "no questions to train on")
    rows = []
    for i, r in enumerate(records):
        if not r.get("question") or not r.get("answer"):
            raise InputError("GRPO questions", "record has no question or answer", line=i + 1,
                             field="question" if not r.get("question") else "answer")
        rows.append({"prompt": prompt_messages(r, schemas), "question_id": str(r.get("id") or i)})
    return Dataset.from_list(rows)


def generate_turns(model: Any, tokenizer: Any, inputs: list[list[int]], *, max_new_tokens: list[int],
                   temperature: float, seed: int | None, eos_ids: set[int]) -> list[tuple[list[int], Any]]:
    """One assistant turn for each input id list: (generated ids up to the stop, Completion)."""
    import torch

    from .llm import finish_row

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(x) for x in inputs)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in inputs], dtype=torch.long, device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in inputs], dtype=torch.long,
                        device=model.device)
    sampling: dict[str, Any] = ({"do_sample": False} if temperature == 0 else
                                {"do_sample": True, "temperature": float(temperature), "top_p": 1.0, "top_k": 0})
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(max_new_tokens),
                             pad_token_id=pad, use_cache=True, stop_strings=A.STOP_STRINGS, tokenizer=tokenizer,
                             repetition_penalty=1.0, **sampling)

    def decode(x: list[int]) -> str:
        return tokenizer.decode(x, skip_special_tokens=True)

    rows = []
    for r, limit in enumerate(max_new_tokens):
        row = out[r, width:].tolist()[:limit]
        done = finish_row(row, n_prompt_tokens=len(inputs[r]), eos_ids=eos_ids, stop=A.STOP_STRINGS,
                          decode=decode, pad_id=pad)
        rows.append((row[:done.n_completion_tokens], done))
    return rows


def engine_turns(backend: Any, inputs: list[list[int]], *, max_new_tokens: list[int], temperature: float,
                 seed: int | None, eos_ids: set[int]) -> list[tuple[list[int], Any]]:
    """:func:`generate_turns` through an engine backend's ``generate_ids`` (same result shape)."""
    from .llm import finish_row

    generated = backend.generate_ids(inputs, max_new_tokens=max_new_tokens, temperature=temperature,
                                     stop=A.STOP_STRINGS, seed=seed)

    def decode(x: list[int]) -> str:
        return backend.tokenizer.decode(x, skip_special_tokens=True)

    rows = []
    for prompt, ids in zip(inputs, generated):
        done = finish_row(ids, n_prompt_tokens=len(prompt), eos_ids=eos_ids, stop=A.STOP_STRINGS, decode=decode)
        rows.append((ids[:done.n_completion_tokens], done))
    return rows


class AgentRollouts:
    """TRL ``rollout_func``: token-level multi-turn agent rollouts with the policy being trained.

    ``records`` are the question records the prompts were built from (matched by question
    text); ``schemas`` the tool schemas shown in the prompt (``None``: all of the toolbox's, as
    :func:`medkit.evaluation.evaluate` does; ``[]``: none, as the cpu SFT model was trained).
    Call it as TRL does, ``rollouts(prompts, trainer)``, or directly with a model and tokenizer
    through :meth:`run`. With ``config.engine`` ``openvino`` / ``ctranslate2`` / ``auto`` the turns are
    generated by an engine copy of the policy (:class:`medkit.engine.PolicySync`, exported every
    ``engine_sync_steps`` optimizer steps into ``export_dir``, on the frozen base ``base_loader()``
    returns); the ids it samples are kept verbatim exactly as on the transformers path.
    """

    def __init__(self, toolbox: Any, records: Iterable[dict[str, Any]], config: RolloutConfig | None = None,
                 schemas: list[dict[str, Any]] | None = None, export_dir: str | Path | None = None,
                 base_loader: Callable[[], Any] | None = None,
                 resolve: Callable[[str], Iterable[str]] | None = None) -> None:
        self.toolbox = toolbox
        self.records = {str(r["question"]): r for r in records}
        self.resolve = resolve if resolve is not None else getattr(toolbox, "resolve_ids", None)
        self.sampling = DynamicSampling()
        self.config = config or RolloutConfig()
        self.schemas = schemas if schemas is not None else A.tool_schemas(toolbox.tools())
        self.history: list[dict[str, Any]] = []   # one entry per rollout, with its step and (later) rewards
        self.calls = 0
        self.seconds = 0.0                         # wall time spent rolling out (generation + tools + exports)
        self.n_rollouts = 0
        self.memory: list[dict[str, Any]] = []     # process memory as each step's rollouts start (rss_mb, peak_rss_mb)
        self.sync: Any = None
        if self.config.engine in (*CPU_ENGINES, "auto"):
            if export_dir is None or base_loader is None:
                raise ConfigError("GRPO rollouts through an engine need an export_dir for the policy exports and a "
                                  "base_loader for the frozen base weights")
            self.export_dir = Path(export_dir)
            self.base_loader = base_loader

    # -- TRL's interface
    def __call__(self, prompts: list[list[dict[str, Any]]], trainer: Any) -> dict[str, Any]:
        from .llm import eval_mode

        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        step = int(trainer.state.global_step)
        self.memory.append({"step": step, **step_memory()})
        t0 = time.perf_counter()
        engine = self.engine_for(model, tokenizer, step, trainer) if self.config.engine != "transformers" else None
        with eval_mode(model), _autocast(bool(getattr(trainer.args, "bf16", False)), model):
            rollouts = self.run_groups(model, tokenizer, prompts, group_size=int(trainer.num_generations), step=step,
                                       engine=engine)
        self.seconds += time.perf_counter() - t0
        self.n_rollouts += len(rollouts)
        return {"prompt_ids": [r.prompt_ids for r in rollouts],
                "completion_ids": [r.completion_ids for r in rollouts],
                "logprobs": None,  # no sampling log-probs: TRL computes the old policy's in its own forward pass
                "env_mask": [r.env_mask for r in rollouts],
                "rollout": [self._remember(r, step) for r in rollouts]}

    def engine_for(self, model: Any, tokenizer: Any, step: int, trainer: Any = None) -> Any:
        """The engine copy of the current policy; ``auto`` falls back to transformers with a note."""
        from .engine import PolicySync, resolve_engine
        from .errors import MedkitError

        if self.config.engine == "vllm":  # TRL synced its colocated vLLM with the policy before this call
            from .vllm_engine import VLLMTurns

            llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
            if llm is None:
                raise ConfigError("ENGINE='vllm' needs TRL's colocated vLLM (GRPOConfig use_vllm=True, "
                                  "vllm_mode='colocate'; grpo_config sets it)")
            return VLLMTurns(llm, tokenizer)

        try:
            if self.sync is None:
                self.sync = PolicySync(self.base_loader(), tokenizer, self.export_dir,
                                       precision=self.config.engine_precision, every=self.config.engine_sync_steps,
                                       batch_size=self.config.engine_batch,
                                       engine=resolve_engine(self.config.engine, on_gpu=False))
            return self.sync.backend(model, step)
        except MedkitError as e:
            if self.config.engine != "auto":
                raise
            print(f"note: ENGINE='auto': GRPO rollouts fall back to transformers: {e}")
            self.config.engine = "transformers"
            return None

    def _remember(self, r: TokenRollout, step: int) -> dict[str, Any]:
        summary = {**r.summary(), "step": step, "record": self.records.get(r.state["question"]), "rewards": {}}
        self.history.append(summary)
        return summary

    # -- dynamic sampling (DAPO): only groups whose rewards differ teach anything
    def run_groups(self, model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, Any]]], *, group_size: int,
                   step: int = 0, engine: Any = None) -> list[TokenRollout]:
        """:meth:`run`, then every group of ``group_size`` consecutive rollouts (one question's, as TRL orders
        them) that is all right or all wrong is rolled out again on a fresh pool question, up to
        ``config.redraws`` times; a group still uniform after that is kept (its advantage is zero). Counts go to
        :attr:`sampling`."""
        if group_size < 1 or len(prompts) % group_size:
            raise ConfigError(f"{len(prompts)} prompts do not split into groups of {group_size}")
        rollouts = self.run(model, tokenizer, prompts, step=step, engine=engine)
        groups = [rollouts[i:i + group_size] for i in range(0, len(rollouts), group_size)]
        self.sampling.groups += len(groups)
        uniform = [i for i, g in enumerate(groups) if self.uniform(g)]  # each group judged once, a redrawn one again
        for _ in range(self.config.redraws):
            if not uniform:
                break
            in_use = {g[0].state["question"] for g in groups}
            fresh_prompts: list[Sequence[dict[str, Any]]] = []
            for i in uniform:
                question = self.sampling.next_question(list(self.records), in_use, seed=self.config.seed)
                in_use.add(question)
                fresh_prompts += [with_question(prompts[i * group_size], question)] * group_size
            fresh = self.run(model, tokenizer, fresh_prompts, step=step, engine=engine)
            for n, i in enumerate(uniform):
                groups[i] = fresh[n * group_size:(n + 1) * group_size]
            self.sampling.redrawn += len(uniform)
            uniform = [i for i in uniform if self.uniform(groups[i])]
        self.sampling.uniform_kept += len(uniform)
        return [r for g in groups for r in g]

    def uniform(self, group: Sequence[TokenRollout]) -> bool:
        """Whether every rollout of ``group`` gets the same accuracy reward (:func:`medkit.rewards.accuracy`)."""
        records = [self.records.get(r.state["question"]) for r in group]
        if any(record is None for record in records):
            return False  # a prompt from outside the pool: nothing to judge it by here, and nothing to replace it with
        return len({R.accuracy(r.state, record, resolve=self.resolve) for r, record in zip(group, records)}) < 2

    # -- the loop
    def run(self, model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, Any]]], *,
            step: int = 0, engine: Any = None) -> list[TokenRollout]:
        """Roll out every prompt to the end (answer or a stop rule); results in input order.

        ``engine`` (an engine backend holding the same policy, :class:`medkit.engine.PolicySync`) generates
        the turns instead of ``model`` when given.
        """
        from .llm import eos_ids as turn_end_ids

        cfg = self.config
        eos_ids = turn_end_ids(tokenizer, model)
        eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        rollouts = []
        for prompt in prompts:
            question = _question_of(prompt)
            record = self.records.get(question, {"question": question, "id": None})
            state = A.new_state(record, prompt[0]["content"] if prompt[0].get("role") == "system" else A.SYSTEM_PROMPT)
            prompt_ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
            if hasattr(prompt_ids, "keys"):  # some tokenizers return a BatchEncoding
                prompt_ids = prompt_ids["input_ids"]
            rollouts.append(TokenRollout(state, list(prompt_ids), [], [], [], []))
        seed0 = cfg.seed + 7919 * self.calls + 104_729 * step
        self.calls += 1
        turn = 0
        while True:
            active = [r for r in rollouts if self._still_going(r)]
            if not active:
                break
            step_size = len(active) if engine is not None else cfg.batch_size  # the engine batches by itself
            for lo in range(0, len(active), step_size):
                batch = active[lo:lo + step_size]
                budgets = [min(cfg.max_new_tokens, cfg.max_completion_length - len(r.completion_ids) - 1)
                           for r in batch]
                inputs = [r.prompt_ids + r.completion_ids for r in batch]
                seed = seed0 + 1000 * turn + lo
                outs = (engine_turns(engine, inputs, max_new_tokens=budgets, temperature=cfg.temperature, seed=seed,
                                     eos_ids=eos_ids) if engine is not None else
                        generate_turns(model, tokenizer, inputs, max_new_tokens=budgets,
                                       temperature=cfg.temperature, seed=seed, eos_ids=eos_ids))
                for r, (ids, done) in zip(batch, outs):
                    self._apply(r, ids, done, tokenizer, eos_ids, eos_id)
            turn += 1
        for r in rollouts:
            A.finish_state(r.state)
        return rollouts

    def _still_going(self, r: TokenRollout) -> bool:
        s, cfg = r.state, self.config
        if not A.stop_before_call(s, cfg.agent_config()):
            return False
        if len(r.completion_ids) >= cfg.max_completion_length - 1:
            s["stop_reason"] = "token_budget"
        return s["stop_reason"] is None

    def _apply(self, r: TokenRollout, ids: list[int], done: Any, tokenizer: Any, eos_ids: set[int],
               eos_id: int) -> None:
        """Append one generated turn (and, if the rollout goes on, the template's continuation)."""
        s, cfg = r.state, self.config
        ended_with_eos = bool(ids) and ids[-1] in eos_ids
        r.turn_ids.append(list(ids))
        r.turn_texts.append(tokenizer.decode(ids, skip_special_tokens=False))
        r.completion_ids += ids
        r.env_mask += [1] * len(ids)
        n_before = len(s["messages"])
        A.take_turn(s, done.text, done.finish_reason, self.toolbox.call, cfg=cfg.agent_config())
        if not ended_with_eos:  # the turn ended at a stop string (or its budget): close it as the template does
            r.completion_ids.append(eos_id)
            r.env_mask.append(1 if done.finish_reason == "stop" else 0)
        if s["stop_reason"] is not None or len(s["messages"]) == n_before:
            return
        if not A.stop_before_call(s, cfg.agent_config()):
            return  # it stops before the next turn (call budget, malformed turns): no continuation to append
        _, continuation = turn_close_and_continuation(
            tokenizer, text_messages_after_last_assistant(s["messages"], self.schemas))
        more = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if len(r.completion_ids) + len(more) + 8 > cfg.max_completion_length:
            s["stop_reason"] = "token_budget"  # the tool response does not fit: stop here, the rollout is kept
            return
        r.completion_ids += more
        r.env_mask += [0] * len(more)


@dataclass
class DynamicSampling:
    """What :meth:`AgentRollouts.run_groups` did: groups asked for, groups replaced, groups kept uniform."""

    groups: int = 0
    redrawn: int = 0
    uniform_kept: int = 0
    cursor: int = 0

    def next_question(self, questions: Sequence[str], in_use: set[str], *, seed: int) -> str:
        """The next pool question not in ``in_use``, walking a seeded shuffle of ``questions`` in turn."""
        import random

        order = list(questions)
        random.Random(seed).shuffle(order)
        for _ in range(len(order)):
            question = order[self.cursor % len(order)]
            self.cursor += 1
            if question not in in_use:
                return question
        raise ConfigError(f"dynamic sampling: the pool's {len(order)} questions are all in this step already; "
                          "set REDRAWS to 0 or give GRPO more questions")

    def summary(self) -> dict[str, Any]:
        return {"groups": self.groups, "redrawn": self.redrawn, "uniform_kept": self.uniform_kept}


def with_question(prompt: Sequence[dict[str, Any]], question: str) -> list[dict[str, Any]]:
    """``prompt`` (system turn, tool block and all) with its question — the last user message — replaced."""
    last = _question_index(prompt)
    return [{**m, "content": question} if i == last else dict(m) for i, m in enumerate(prompt)]


class _autocast:
    """bf16 autocast on CPU around generation when the trainer trains in bf16 (a no-op otherwise)."""

    def __init__(self, enabled: bool, model: Any) -> None:
        import torch

        device = getattr(model, "device", None)
        self.ctx = (torch.autocast(device_type=getattr(device, "type", "cpu"), dtype=torch.bfloat16)
                    if enabled else None)

    def __enter__(self) -> None:
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


# --------------------------------------------------------------------------- rewards


_UNJUDGED = object()  # a rollout whose accuracy term has not run yet


def reward_functions(*, call_budget: int = 8, token_budget: int = 3072, gate: bool = True,
                     resolve: Callable[[str], Iterable[str]] | None = None) -> list[Callable[..., list[float | None]]]:
    """TRL reward functions ``accuracy``, ``preference``, ``efficiency`` over forwarded rollouts.

    Each returns one value per rollout (``None`` where the term raised), stores it in the
    rollout's ``rewards`` dict (so :attr:`AgentRollouts.history` has every term per rollout) and
    logs ``reward_errors/<term>``; ``preference`` also logs its parts and the tool statistics.
    With ``gate`` (see :mod:`medkit.rewards`) the process terms pay only alongside a correct answer.
    """

    def acc(r: dict[str, Any]) -> float:
        if not r.get("record"):
            raise InputError("GRPO rollout", "no question record for this prompt", field="record")
        return R.accuracy(r, r["record"], resolve=resolve)

    def correct(r: dict[str, Any]) -> bool:
        """The accuracy term's verdict, judged once: the accuracy reward (computed first) stored it."""
        stored = (r.get("rewards") or {}).get("accuracy", _UNJUDGED)
        return (acc(r) if stored is _UNJUDGED else stored) == 1.0

    def pref(r: dict[str, Any]) -> float:
        return R.preference(r, correct=correct(r) if gate else None)

    def eff(r: dict[str, Any]) -> float:
        if gate:
            return R.gated_efficiency(r, correct=correct(r), call_budget=call_budget, token_budget=token_budget)
        return R.efficiency_penalty(r, call_budget=call_budget, token_budget=token_budget)

    # in rewards.TERMS order: TRL pairs the functions with RewardWeights.signed() by position (tested)
    terms: dict[str, Callable[[dict[str, Any]], float]] = {"accuracy": acc, "preference": pref, "efficiency": eff}
    funcs = []
    for name, term in terms.items():
        funcs.append(_reward_func(name, term, extra_metrics=(name == "preference")))
    return funcs


def _reward_func(name: str, term: Callable[[dict[str, Any]], float], *,
                 extra_metrics: bool = False) -> Callable[..., list[float | None]]:
    def reward(prompts: Any = None, completions: Any = None, rollout: list[dict[str, Any]] | None = None,
               log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float | None]:
        if rollout is None:
            raise ConfigError("the GRPO reward functions need the rollouts that AgentRollouts forwards "
                              "(pass rollout_func=AgentRollouts(...) to the trainer)")
        values: list[float | None] = []
        errors = 0
        for r in rollout:
            try:
                v = float(term(r))
                if math.isnan(v):
                    raise ValueError("NaN")
            except Exception as e:  # a broken term must not stop training: it becomes a missing value
                errors += 1
                log.warning("reward term %s failed on question %s: %s: %s", name, r.get("question_id"),
                            type(e).__name__, e)
                v = None
            values.append(v)
            r.setdefault("rewards", {})[name] = v
        if log_metric is not None:
            log_metric(f"reward_errors/{name}", float(errors))
            if extra_metrics:
                for key, value in rollout_metrics(rollout).items():
                    log_metric(key, value)
        return values

    reward.__name__ = name
    return reward


def rollout_metrics(rollouts: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Tool-call / tool-failure frequency, answer and length-limit rates, preference parts."""
    n = max(len(rollouts), 1)
    calls = sum(int(r.get("n_tool_calls") or 0) for r in rollouts)
    failures = sum(len(r.get("tool_errors") or []) for r in rollouts)
    out = {"tools/call_frequency": calls / n, "tools/failure_frequency": failures / calls if calls else 0.0,
           "rollout/answer_rate": sum(r.get("stop_reason") == "answer" for r in rollouts) / n,
           "rollout/token_budget_rate": sum(r.get("stop_reason") == "token_budget" for r in rollouts) / n,
           "rollout/format_errors": sum(int(r.get("n_format_errors") or 0) for r in rollouts) / n}
    parts = [R.preference_parts(r) for r in rollouts]
    for key in ("well_formed", "grounded", "verified"):
        out[f"preference/{key}"] = statistics.fmean(p[key] for p in parts) if parts else 0.0
    return out


def history_frame(history: Sequence[dict[str, Any]], weights: R.RewardWeights | None = None) -> Any:
    """One row per rollout of :attr:`AgentRollouts.history`: step, stop reason, counts, each reward term
    (``reward_<term>``) and, given the run's ``weights``, the composite ``reward_total`` a missing term
    counting 0."""
    import pandas as pd

    rows = []
    for h in history:
        row = {k: h.get(k) for k in ("step", "question_id", "stop_reason", "prediction", "n_tool_calls",
                                     "n_model_calls", "n_format_errors", "n_completion_tokens", "n_policy_tokens")}
        row["n_tool_errors"] = len(h.get("tool_errors") or [])
        row["answer"] = (h.get("record") or {}).get("answer")
        row.update({f"reward_{k}": v for k, v in (h.get("rewards") or {}).items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if weights is not None:
        terms = {t: frame[f"reward_{t}"].fillna(0) if f"reward_{t}" in frame else 0.0 for t in R.TERMS}
        frame["reward_total"] = weights.total(terms)
    return frame


# --------------------------------------------------------------------------- the trainer


def grpo_config(params: dict[str, Any], output_dir: str | Path, *, use_cpu: bool) -> Any:
    """TRL's GRPOConfig from notebook 06's parameters (one optimizer step = QUESTIONS_PER_STEP x NUM_GENERATIONS)."""
    from trl import GRPOConfig

    from .engine import DEFAULT_ENGINE
    from .model import use_bf16
    from .notebook_output import headless
    from .sft import checkpointing_args
    from .vllm_engine import colocate_options

    g = int(params["NUM_GENERATIONS"])
    if g < 2:
        raise ConfigError(f"NUM_GENERATIONS must be >= 2 (GRPO compares rollouts of one question), got {g}")
    per_step = g * int(params["QUESTIONS_PER_STEP"])  # rollouts per optimizer step: one generation batch
    micro = int(params.get("MICRO_BATCH") or g)
    if micro < 1 or per_step % micro:
        raise ConfigError(f"MICRO_BATCH ({micro}) must divide the rollouts of one step "
                          f"(QUESTIONS_PER_STEP x NUM_GENERATIONS = {per_step})")
    engine = rollout_engine(str(params.get("ENGINE") or DEFAULT_ENGINE), use_cpu=use_cpu)
    return GRPOConfig(
        **(colocate_options() if engine == "vllm" else {}),
        output_dir=str(output_dir), seed=int(params["SEED"]), data_seed=int(params["SEED"]),
        max_steps=int(params["MAX_STEPS"]), learning_rate=float(params["LEARNING_RATE"]),
        lr_scheduler_type="constant", warmup_steps=0,
        # the loss runs over MICRO_BATCH rollouts at a time (activation memory); gradients accumulate to the
        # whole generation batch, so one optimizer step still sees every group of the step
        per_device_train_batch_size=micro, gradient_accumulation_steps=per_step // micro,
        num_generations=g, max_completion_length=int(params["MAX_COMPLETION_LENGTH"]),
        beta=float(params["BETA"]), loss_type=str(params["LOSS_TYPE"]), scale_rewards=str(params["SCALE_REWARDS"]),
        reward_weights=list(R.RewardWeights.from_params(params).signed()),
        temperature=float(params["TEMPERATURE"]), mask_truncated_completions=False,
        **checkpointing_args(params.get("GRADIENT_CHECKPOINTING"), use_cpu=use_cpu), use_cpu=use_cpu, bf16=use_bf16(params.get("BF16"), on_cuda=not use_cpu),
        logging_steps=1, save_strategy="steps", save_steps=int(params["SAVE_STEPS"]), save_total_limit=2,
        report_to="none", dataloader_num_workers=0, disable_tqdm=headless(), log_completions=False,
    )


def policy_quantized(adapter_dir: str | Path | None, params: dict[str, Any]) -> bool:
    """Whether the policy trains on a 4-bit nf4 base: as the SFT adapter was trained, or ``QUANTIZE`` for a fresh one."""
    from .adapters import adapter_base

    if adapter_dir is None:
        return str(params.get("QUANTIZE") or "").lower() == "nf4"
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise InputError(adapter_dir, "no LoRA adapter here (adapter_config.json missing); run notebook 05 first")
    return str(adapter_base(adapter_dir).get("quantize") or "").lower() == "nf4"


def load_policy(profile: str, adapter_dir: str | Path | None, params: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config): the SFT adapter on its base, trainable; or the base and a new adapter.

    The base is 4-bit nf4 when the SFT adapter was trained with QLoRA (recorded in its folder;
    for a fresh adapter, when ``QUANTIZE`` is nf4), so GRPO continues on the weights SFT saw.
    """
    from peft import PeftModel

    from .model import load_model
    from .sft import lora_config

    quantized = policy_quantized(adapter_dir, params)
    model, tokenizer = load_model(profile, for_training=True, quantize_4bit=quantized)
    if adapter_dir is None:
        return model, tokenizer, lora_config(params)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), tokenizer, None


def step_memory() -> dict[str, float | None]:
    """This process's RSS now and its peak so far, in MB (:func:`medkit.model.memory_report`)."""
    from .model import memory_report

    report = memory_report()
    return {"rss_mb": report["rss_mb"], "peak_rss_mb": report["peak_rss_mb"]}


class StopOnNaN:
    """Trainer callback: a NaN loss stops training at once (the run then fails with a clear message)."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class _StopOnNaN(TrainerCallback):
            seen_nan = False

            def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> Any:
                loss = (logs or {}).get("loss")
                if isinstance(loss, float) and math.isnan(loss):
                    self.seen_nan = True
                    control.should_training_stop = True
                return control

        return _StopOnNaN()


def build_trainer(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], rollouts: AgentRollouts,
                  params: dict[str, Any], output_dir: str | Path, *, use_cpu: bool = True,
                  peft_config: Any = None, resolve: Callable[[str], Iterable[str]] | None = None) -> Any:
    """A GRPOTrainer over ``records`` whose rollouts come from ``rollouts`` (see the module docstring)."""
    import os

    from trl import GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from .sft import prepare_tokenizer

    prepare_tokenizer(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    funcs = reward_functions(call_budget=int(params["CALL_BUDGET"]), token_budget=int(params["TOKEN_BUDGET"]),
                             gate=bool(params["GATE_PROCESS"]), resolve=resolve)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=grpo_config(params, output_dir, use_cpu=use_cpu),
                          train_dataset=prompt_dataset(records, rollouts.schemas), processing_class=tokenizer,
                          peft_config=peft_config, rollout_func=rollouts, callbacks=[StopOnNaN()])
    return trainer


def train(trainer: Any) -> dict[str, Any]:
    """:func:`medkit.sft.train` (resume, finished runs loaded) plus GRPO's logged curves and timing."""
    from .sft import train as train_any

    out = train_any(trainer)
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    out["log"] = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in logs]
    steps = out["steps_this_run"]
    out["seconds_per_step"] = round(out["seconds"] / steps, 1) if steps else None
    return out


ABLATIONS = {  # notebook 07's GRPO ablations: what each changes against notebook 06's run
    "grpo_from_base": "a fresh adapter on the base model (no SFT cold start), tool schemas in the prompt",
    "grpo_accuracy_only": "the SFT start, W_PREFERENCE = W_EFFICIENCY = 0",
    "grpo_ungated": "the SFT start, GATE_PROCESS = False (the plain sum of the reward terms)",
}


def ablation_params(name: str, params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(GRPO parameters, starts from the base model) of the ablation ``name`` (see :data:`ABLATIONS`)."""
    if name not in ABLATIONS:
        raise ConfigError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
    changes = {"grpo_accuracy_only": {"W_PREFERENCE": 0.0, "W_EFFICIENCY": 0.0},
               "grpo_ungated": {"GATE_PROCESS": False}}.get(name, {})
    return {**params, **changes}, name == "grpo_from_base"


def select_training_questions(records: Sequence[dict[str, Any]], n: int, *, max_hops: int | None,
                              seed: int) -> list[dict[str, Any]]:
    """``n`` training questions (at most ``max_hops`` hops), a seeded shuffle mixing hop counts."""
    import random

    kept = [r for r in records if max_hops is None or int(r.get("hops") or 0) <= max_hops]
    random.Random(seed).shuffle(kept)
    return kept[:n]


def probe_settings(eval_params: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Notebook 05's evaluation settings changed to sample like GRPO's rollouts (``POOL_PROBE_K`` rollouts per
    question at the rollout ``TEMPERATURE``, ``MAX_CALLS`` calls, ``TURN_MAX_NEW_TOKENS`` per turn): the
    probe that measures which pool questions the starting policy answers sometimes."""
    return {**eval_params, "EVAL_K": int(params["POOL_PROBE_K"]), "EVAL_TEMPERATURE": float(params["TEMPERATURE"]),
            "EVAL_MAX_CALLS": int(params["MAX_CALLS"]), "EVAL_MAX_NEW_TOKENS": int(params["TURN_MAX_NEW_TOKENS"])}


def learnable_questions(candidates: Sequence[dict[str, Any]], probe_rows: Sequence[dict[str, Any]], *,
                        n: int | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The candidates the starting policy answers *sometimes*: measured success rate strictly between 0
    and 1 over its probe rollouts (``probe_rows``: :func:`medkit.evaluation.evaluate` rows of the policy on
    ``candidates``). Only such questions give a GRPO group rewards that differ, so an advantage that is
    not zero for the accuracy term; always-right and never-right questions teach nothing. Returns (at most
    ``n`` of them, in candidate order; every candidate's rate by question id). A candidate without probe
    rollouts is an error (the probe and the pool must be the same question set)."""
    from .bootstrap import per_question
    from .questions import question_id

    rates = per_question(probe_rows)
    missing = [question_id(q) for q in candidates if question_id(q) not in rates]
    if missing:
        raise InputError(None, f"{len(missing)} of {len(candidates)} pool candidates have no probe rollouts "
                         f"(e.g. {missing[:3]}): probe the same questions you select from", field="question_id")
    kept = [q for q in candidates if 0.0 < rates[question_id(q)] < 1.0]
    return (kept[:n] if n else kept), {question_id(q): rates[question_id(q)] for q in candidates}


def stop_reason_counts(history: Sequence[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(h.get("stop_reason") for h in history).items()))


def reward_hacking_check(log: Sequence[dict[str, Any]], heldout: Sequence[tuple[int, Sequence[dict[str, Any]]]]
                         ) -> dict[str, Any]:
    """Did the training reward rise while held-out accuracy fell?

    ``log``: the run's per-step log (:func:`train`'s ``log``: ``step``, ``reward``, TRL's
    ``rewards/accuracy/mean`` and ``rollout/answer_rate``); ``heldout``: (step, evaluation rows) of the
    starting policy (step 0), the checkpoints and the final adapter, all on the same held-out questions.
    Returns one row per checkpoint (training reward, accuracy term and answer rate over the steps since
    the previous checkpoint; held-out pass@1 with its interval and answer rate), the paired held-out
    difference last − start (:func:`medkit.bootstrap.paired_difference`), the change of the training
    reward (mean of the later half of the steps − the earlier half) and a verdict:
    ``"hacking"`` — the reward rose and held-out pass@1 fell with the paired interval below 0;
    ``"suspect"`` — the reward rose and held-out pass@1 fell within the noise; ``"none"`` otherwise.
    """
    from .bootstrap import paired_difference, pass_at_1

    points = sorted(heldout, key=lambda p: p[0])
    if len(points) < 2 or points[0][0] != 0:
        raise ConfigError("reward_hacking_check needs the starting policy (step 0) and at least one later evaluation")
    steps = sorted((int(h["step"]), h) for h in log if "step" in h)
    rows, prev = [], 0
    for step, ev in points:
        window = [h for s, h in steps if prev < s <= step] if step else []
        mean = (lambda key: round(statistics.fmean(h[key] for h in window if key in h), 4)
                if any(key in h for h in window) else None)
        p1 = pass_at_1(ev)
        rows.append({"step": step, "train_reward": mean("reward"), "train_accuracy": mean("rewards/accuracy/mean"),
                     "train_answer_rate": mean("rollout/answer_rate"), "heldout_pass@1": p1["mean"],
                     "heldout_ci95": p1["ci95"],
                     "heldout_answer_rate": round(sum(r.get("stop_reason") == "answer" for r in ev) / max(len(ev), 1), 4)})
        prev = step
    rewards = [float(h["reward"]) for _, h in steps if isinstance(h.get("reward"), (int, float))]
    half = len(rewards) // 2
    reward_change = (round(statistics.fmean(rewards[half:]) - statistics.fmean(rewards[:half]), 4)
                     if half else None)
    diff = paired_difference(points[0][1], points[-1][1], names=("start", f"step {points[-1][0]}"))
    rose = reward_change is not None and reward_change > 0
    verdict = ("hacking" if rose and diff["ci95"][1] < 0 else
               "suspect" if rose and diff["mean"] < 0 else "none")
    return {"checkpoints": rows, "reward_change": reward_change, "heldout_change": diff, "verdict": verdict}


# --------------------------------------------------------------------------- one whole run (notebooks 06 and 07)


def rollout_engine(engine: str, *, use_cpu: bool = True) -> str:
    """The engine GRPO rollouts use for ``ENGINE`` (:func:`medkit.engine.resolve_engine`): ``auto`` is
    OpenVINO (else CTranslate2) on CPU when it is installed (falling back to transformers if the
    policy does not export), vLLM on a GPU when it is installed (TRL's colocated engine), else
    transformers."""
    from .engine import ctranslate2_available, resolve_engine

    resolved = resolve_engine(engine, on_gpu=not use_cpu)
    if engine == "auto" and resolved in CPU_ENGINES:
        return "auto" if resolved == "openvino" or ctranslate2_available() else "transformers"
    return resolved


def rollout_config(params: dict[str, Any], *, use_cpu: bool = True) -> RolloutConfig:
    from .engine import DEFAULT_ENGINE, DEFAULT_ENGINE_BATCH

    return RolloutConfig(max_calls=int(params["MAX_CALLS"]), max_new_tokens=int(params["TURN_MAX_NEW_TOKENS"]),
                         max_completion_length=int(params["MAX_COMPLETION_LENGTH"]),
                         temperature=float(params["TEMPERATURE"]), seed=int(params["SEED"]),
                         engine=rollout_engine(str(params.get("ENGINE") or DEFAULT_ENGINE), use_cpu=use_cpu),
                         engine_precision=str(params.get("ENGINE_PRECISION") or DEFAULT_COMPUTE_TYPE),
                         engine_sync_steps=int(params.get("ENGINE_SYNC_STEPS") or 1),
                         engine_batch=int(params.get("ENGINE_BATCH") or DEFAULT_ENGINE_BATCH),
                         redraws=int(params.get("REDRAWS") or 0))


def run_grpo(profile: str, params: dict[str, Any], *, adapter_dir: str | Path | None,
             questions: Sequence[dict[str, Any]], toolbox: Any, out_dir: str | Path,
             schemas: list[dict[str, Any]] | None, use_cpu: bool = True,
             resolve: Callable[[str], Iterable[str]] | None = None) -> dict[str, Any]:
    """Train GRPO from ``adapter_dir`` (None: a fresh adapter on the base) and save the adapter.

    ``out_dir`` gets ``checkpoints/`` (a rerun resumes; a finished run is loaded, not retrained),
    ``adapter/`` (with the base it needs, for :func:`medkit.adapters.load_for_inference`) and
    ``rollouts.jsonl`` (every training rollout with its step and reward terms, kept from the run
    that trained, so a rerun that only loads still has them) and, with ``CURVE``, ``curve/step-N``:
    the adapter after those shares of ``MAX_STEPS``, for held-out checkpoints (returned as
    ``curve``: (step, folder) pairs before the last step, which is ``adapter/``).
    """
    from .io import read_jsonl, write_json, write_jsonl
    from .model import model_spec, release_memory
    from .paths import portable
    from .adapters import (ADAPTER_META, adapter_base, adapter_meta, claim_run, curve_steps, dequantized_base, file_digest,
                           run_key, snapshot_callback, snapshots)

    out = Path(out_dir)
    start = {"profile": profile, "base": model_spec(profile).name_or_path, "schemas": schemas,
             "adapter": file_digest(Path(adapter_dir) / "adapter_model.safetensors") if adapter_dir else None}
    stale = claim_run(out, run_key(list(questions), params, **start),
                      ("checkpoints", "curve", "rollouts.jsonl", "adapter"))
    model, tokenizer, peft_config = load_policy(profile, adapter_dir, params)
    quantized = policy_quantized(adapter_dir, params)
    quantize = (adapter_base(adapter_dir).get("quantize") if adapter_dir is not None else params.get("QUANTIZE"))
    meta = {**adapter_meta({"QUANTIZE": quantize}, profile=profile, base_model=model_spec(profile).name_or_path),
            "started_from": portable(adapter_dir) if adapter_dir else "base"}
    resolve = resolve if resolve is not None else getattr(toolbox, "resolve_ids", None)
    rollouts = AgentRollouts(toolbox, questions, rollout_config(params, use_cpu=use_cpu), schemas=schemas,
                             export_dir=out / "engine_exports",
                             base_loader=lambda: dequantized_base(profile, quantized)[0], resolve=resolve)
    trainer = build_trainer(model, tokenizer, questions, rollouts, params, out / "checkpoints", use_cpu=use_cpu,
                            peft_config=peft_config, resolve=resolve)
    if params.get("CURVE"):  # held-out checkpoints: the adapter after these shares of MAX_STEPS (out/curve/step-N)
        trainer.add_callback(snapshot_callback(curve_steps(int(params["MAX_STEPS"]), params["CURVE"]),
                                               out / "curve", meta))
    result = train(trainer)
    result["stale_parts_removed"] = stale  # another run's checkpoints were here: not resumed
    result["rollout_seconds"] = round(rollouts.seconds, 1)
    result["rollouts"] = rollouts.n_rollouts  # generated in this run (a resumed run: since it resumed)
    result["rollouts_per_second"] = round(rollouts.n_rollouts / rollouts.seconds, 4) if rollouts.seconds else None
    result["engine"] = rollouts.config.engine
    result["dynamic_sampling"] = rollouts.sampling.summary()  # groups replaced for being all right / all wrong
    result["engine_syncs"] = rollouts.sync.syncs if rollouts.sync is not None else []
    result["engine_sync_seconds"] = round(sum(x["seconds"] for x in result["engine_syncs"]), 1)
    result["memory_by_step"] = rollouts.memory  # RSS as each step's rollouts start: where the peak grows
    shutil.rmtree(out / "engine_exports", ignore_errors=True)  # the adapter below is what later stages load
    history_path = out / "rollouts.jsonl"
    if rollouts.history:
        write_jsonl(history_path, rollouts.history)
    history = read_jsonl(history_path) if history_path.exists() else []
    adapter = out / "adapter"
    trainer.model.save_pretrained(str(adapter), selected_adapters=["default"])
    tokenizer.save_pretrained(str(adapter))
    write_json(adapter / ADAPTER_META, {**meta, "step": result["steps"]})
    curve = [(step, str(folder)) for step, folder in snapshots(out / "curve") if step < result["steps"]]
    # the trainer, the policy and the rollouts' engine copy (an OpenVINO pipeline and its KV cache) hold each
    # other in reference cycles: collected now, not whenever Python's cyclic collector next runs, so the
    # evaluation that follows does not load its model and engine beside them; the freed heap goes back to the OS
    del trainer, model, rollouts
    release_memory()
    return {"train": result, "history": history, "adapter": str(adapter), "curve": curve}
