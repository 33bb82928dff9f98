"""The ReAct agent: protocol, defensive parser and the batched think -> act -> observe loop.

Scope:

* **Protocol** (upstream's text protocol, which is also exactly what the Qwen2.5 chat
  template renders for native tool calls): an assistant turn is ``<think>…</think>``
  followed by either ``<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`` or
  ``<answer>…</answer>``; tool results come back as ``<tool_response>…</tool_response>``.
* **Two views of one trajectory.** Trajectories are stored as TRL-ready chat messages —
  assistant messages with ``tool_calls`` and ``role: "tool"`` messages — plus the tool
  schemas. :func:`to_text_messages` renders them as plain system / user / assistant text
  messages for any chat model or OpenAI-compatible endpoint. For a ChatML model both views
  give the same token stream (tested), so what SFT trains on is what the agent sees.
* :func:`parse_turn` never raises on any text: malformed JSON, unknown fields, unclosed
  tags and text outside the tags become recorded format errors.
* :func:`run_agent` runs many questions at once against one :class:`medkit.llm.ChatBackend`
  (one batched ``generate`` per step over every unfinished conversation) and the kit's
  tools (:class:`medkit.tools.MedicalToolbox`). When sampling, every conversation's turn has its own
  seed (:func:`conversation_seed`: the run's seed, the question, which copy of it, the turn), so a
  question's draws do not depend on which other questions run beside it (on engines that seed each
  request; the engine's float arithmetic may still vary with the batch); stop rules: an answer, the maximum number
  of model calls, the token budget, an identical repeated tool call (beyond
  ``AgentConfig.max_repeated_calls`` repeats answered with a reminder), repeated format
  errors, or a backend error.
* Masked Trajectory Guidance hooks: an optional per-question guidance text is shown to the
  model in its system prompt and never stored in the trajectory.

Out of scope: judging answers (:mod:`medkit.judge`), KG-guided synthesis and filtering
(:mod:`medkit.synthesis`, :mod:`medkit.trajectories`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The tools, one line each (:func:`compact_tools` of :meth:`medkit.tools.MedicalToolbox.tools`; a test keeps
# this text equal to it). It is part of the system prompt, so training rows (synthesis stores the prompt)
# and the agent (``run_agent``'s default ``system``) see the same bytes whatever the JSON schema block.
TOOLS_TEXT = (
    "Tools (arguments as a JSON object):\n"
    "- search(query, k=3): BM25 search over entity definitions.\n"
    "- read(entity_id): An entity's entry: definition, synonyms, relations.\n"
    "- lookup(name): Ids for an exact name or synonym.\n"
    "- related(entity_id, relation, direction=\"both\"): Neighbours through one relation.\n"
    "- common(entity_ids: list[str], relation): Neighbours shared by several entities.\n"
    "- diagnose(phenotypes: list[str], k=2, within=\"\"): Rank diseases for phenotypes (naive Bayes over HPO "
    "frequencies)."
)

SYSTEM_PROMPT = (
    "You are a medical research agent with tools over a private medical knowledge base. "
    "Each turn: reason in <think>...</think>, then call one tool in <tool_call>...</tool_call>, "
    "or give the entity's name in <answer>...</answer> once the evidence suffices.\n\n"
    + TOOLS_TEXT
)

TOOLS_HEADER = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call>")
GUIDANCE_HEADER = "\n\n# Search guidance (private; never mention it)\n"
STOP_STRINGS = ["</tool_call>", "</answer>"]
PROTOCOL_VERSION = 5  # 5: the first repeated call gets a reminder (max_repeated_calls), not a stop; bump when the prompt or the protocol changes: stored free rollouts are redone

STOP_REASONS = ("answer", "max_calls", "token_budget", "repeated_call", "format_errors", "backend_error",
                "length")

_TAG = re.compile(r"<(/?)(think|tool_call|answer|tool_response)>")


# --------------------------------------------------------------------------- rendering


def tool_schemas(tools: Sequence[Callable[..., Any]]) -> list[dict[str, Any]]:
    """JSON schemas (``{"type": "function", "function": {...}}``) from the tools' docstrings."""
    from transformers.utils import get_json_schema

    schemas = []
    for t in tools:
        schema = get_json_schema(t)
        schema["function"].pop("return", None)  # the docstring's Returns section is for readers, not tokens
        schemas.append(schema)
    return schemas


def compact_tools(tools: Sequence[Callable[..., Any]]) -> str:
    """The tools as :data:`TOOLS_TEXT` lists them: one line per tool, its arguments (a type unless it is a
    string or shown by a default) and the first line of its docstring (the JSON schemas' gist at ~1/8 of
    the tokens; each argument's details stay in the docstrings and the JSON schemas)."""
    import inspect

    lines = ["Tools (arguments as a JSON object):"]
    for t in tools:
        params = []
        for p in inspect.signature(t).parameters.values():
            ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
            if p.default is not inspect.Parameter.empty:
                text = f"{p.name}={json.dumps(p.default)}"  # the default shows the type
            else:
                text = p.name if ann in ("str", "") or p.annotation is inspect.Parameter.empty else f"{p.name}: {ann}"
            params.append(text)
        doc = (inspect.getdoc(t) or "").strip().split("\n")[0]
        lines.append(f"- {t.__name__}({', '.join(params)}): {doc}")
    return "\n".join(lines)


def tools_block(schemas: Sequence[dict[str, Any]]) -> str:
    """The tool section the Qwen2.5 chat template appends to the system prompt (same bytes)."""
    return TOOLS_HEADER + "".join("\n" + json.dumps(s, ensure_ascii=False) for s in schemas) + TOOLS_FOOTER


def render_tool_call(name: str, arguments: Any) -> str:
    """One call as the Qwen2.5 template renders it (``tojson`` = ``json.dumps(ensure_ascii=False)``)."""
    return '<tool_call>\n{"name": ' + json.dumps(str(name), ensure_ascii=False) + ', "arguments": ' \
        + json.dumps(arguments, ensure_ascii=False) + "}\n</tool_call>"  # the name escaped too: a quote cannot break the JSON


def assistant_text(message: dict[str, Any]) -> str:
    """An assistant message (with or without ``tool_calls``) as the text the model produces."""
    content = message.get("content") or ""
    calls = message.get("tool_calls") or []
    if not calls:
        return content
    parts = [content] if content else []
    for c in calls:
        fn = c.get("function", c)
        parts.append(render_tool_call(fn.get("name"), fn.get("arguments")))
    return "\n".join(parts)


def to_text_messages(messages: Sequence[dict[str, Any]], schemas: Sequence[dict[str, Any]] | None = None,
                     guidance: str | None = None, demo: Sequence[dict[str, Any]] | None = None
                     ) -> list[dict[str, str]]:
    """Plain role/content messages of the text protocol (tools listed in the system prompt).

    Consecutive tool results are joined in one user message, as the Qwen2.5 template does.
    ``guidance`` (MTG) is appended to the system prompt and ``demo`` (an example trajectory's
    messages after its system prompt) is put before the question — both for the model only.
    """
    out: list[dict[str, str]] = []
    msgs = list(messages)
    system = msgs[0]["content"] if msgs and msgs[0].get("role") == "system" else SYSTEM_PROMPT
    if msgs and msgs[0].get("role") == "system":
        msgs = msgs[1:]
    msgs = [*(demo or []), *msgs]
    if schemas:
        system += tools_block(schemas)
    if guidance:
        system += GUIDANCE_HEADER + guidance
    out.append({"role": "system", "content": system})
    for m in msgs:
        role = m.get("role")
        if role == "tool":
            block = "<tool_response>\n" + str(m.get("content", "")) + "\n</tool_response>"
            if out[-1]["role"] == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": "1"})
        elif role == "assistant":
            out.append({"role": "assistant", "content": assistant_text(m)})
        else:
            out.append({"role": str(role), "content": str(m.get("content", ""))})
    return [{"role": m["role"], "content": m["content"]} for m in out]


# --------------------------------------------------------------------------- parsing


@dataclass
class ParsedTurn:
    """What one assistant reply contains; ``errors`` lists every protocol violation found."""

    text: str
    think: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    answer: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def content(self) -> str:
        """The message content stored next to ``tool_calls`` (the reasoning, or reasoning + answer)."""
        parts = []
        if self.think is not None:
            parts.append(f"<think>{self.think}</think>")
        if self.answer is not None:
            parts.append(f"<answer>{self.answer}</answer>")
        return "\n".join(parts)


def _blocks(text: str, tag: str) -> tuple[list[str], list[str]]:
    """Contents of every ``<tag>…</tag>`` and the errors of unbalanced tags."""
    found, errors = [], []
    pos = 0
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    j = -2  # the next close tag, kept until the scan passes it: nested unclosed tags cost linear time, not quadratic
    while True:
        i = text.find(open_t, pos)
        if i < 0:
            if text.find(close_t, pos) >= 0:
                errors.append(f"{close_t} without {open_t}")
            break
        if j < i + len(open_t):
            j = text.find(close_t, i + len(open_t))
        nxt = text.find(open_t, i + len(open_t))
        if j < 0 or (0 <= nxt < j):
            errors.append(f"unclosed {open_t}")
            pos = i + len(open_t)
            if j < 0:
                break
            continue
        found.append(text[i + len(open_t):j])
        pos = j + len(close_t)
    return found, errors


def parse_tool_call(body: str) -> tuple[dict[str, Any] | None, str | None]:
    """``{"name": str, "arguments": dict}`` from a tool-call body, or an error message."""
    raw = body.strip()
    if not raw:
        return None, "empty <tool_call>"
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return None, f"malformed tool-call JSON ({type(e).__name__}: {str(e)[:80]})"
    if not isinstance(obj, dict):
        return None, f"tool call must be a JSON object, got {type(obj).__name__}"
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, "tool call without a string 'name'"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return None, "tool-call 'arguments' is a string that is not valid JSON"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, f"tool-call 'arguments' must be an object, got {type(args).__name__}"
    return {"name": name.strip(), "arguments": args}, None


def parse_turn(text: Any) -> ParsedTurn:
    """Parse one assistant reply. Never raises; every violation is listed in ``errors``."""
    try:
        return _parse_turn(text if isinstance(text, str) else str(text))
    except Exception as e:  # noqa: BLE001 - the parser must survive any text
        return ParsedTurn(text=str(text)[:10_000], errors=[f"parser failure: {type(e).__name__}"])


def _parse_turn(text: str) -> ParsedTurn:
    turn = ParsedTurn(text=text)
    thinks, errs = _blocks(text, "think")
    turn.errors += errs
    if thinks:
        turn.think = "\n".join(t.strip() for t in thinks)
        if len(thinks) > 1:
            turn.errors.append(f"{len(thinks)} <think> blocks")
    else:
        turn.errors.append("no <think> block")
    calls, errs = _blocks(text, "tool_call")
    turn.errors += errs
    for body in calls:
        call, err = parse_tool_call(body)
        if err:
            turn.errors.append(err)
        else:
            turn.tool_calls.append(call)
    answers, errs = _blocks(text, "answer")
    turn.errors += errs
    if answers:
        turn.answer = answers[-1].strip()
        if not turn.answer:
            turn.errors.append("empty <answer>")
    if "<tool_response>" in text:
        turn.errors.append("the model wrote a <tool_response> itself")
    if len(turn.tool_calls) > 1:
        turn.errors.append(f"{len(turn.tool_calls)} tool calls in one turn; only the first is run")
    if turn.tool_calls and turn.answer is not None:
        turn.errors.append("both a tool call and an answer in one turn")
    if not calls and not answers:
        turn.errors.append("neither <tool_call> nor <answer>")
    return turn


def close_open_tag(text: str) -> str:
    """Re-append the stop string a backend cut off (``…<tool_call>{…}`` -> ``…</tool_call>``)."""
    for tag in ("tool_call", "answer"):
        if text.rfind(f"<{tag}>") > text.rfind(f"</{tag}>"):
            return text + f"</{tag}>"
    return text


# --------------------------------------------------------------------------- the loop


@dataclass
class AgentConfig:
    """Stop rules and decoding settings of :func:`run_agent`."""

    max_calls: int = 30            # model calls per question (upstream: 30)
    token_budget: int = 8192       # prompt + completion tokens of the last model call
    max_new_tokens: int = 384      # per assistant turn
    max_format_errors: int = 2     # consecutive turns without a usable call or answer
    max_repeated_calls: int = 1    # repeats of an earlier call answered with a reminder; the next one stops the run
    #                                (0: the first repeat stops it, as before 2026-12-04; bench/bench_agent_rules.py)
    temperature: float = 0.0
    seed: int | None = None


def new_state(q: dict[str, Any], system: str = SYSTEM_PROMPT) -> dict[str, Any]:
    """A fresh conversation state for question record ``q`` — the one state every agent loop
    (:func:`run_agent`, GRPO's token-level rollouts) steps through :func:`take_turn`.

    Public keys: ``question_id``, ``question``, ``messages``, ``format_errors``, ``tool_errors``,
    ``n_model_calls``, ``n_tool_calls``, ``n_tokens``, ``prediction``, ``stop_reason``. Keys that
    start with ``_`` are the step rules' own bookkeeping, removed by :func:`finish_state`."""
    return {"question_id": str(q.get("question_id") or q.get("id")), "question": q["question"],
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": q["question"]}],
            "format_errors": [], "tool_errors": [], "n_model_calls": 0, "n_tool_calls": 0,
            "n_tokens": 0, "prediction": None, "stop_reason": None, "_seen": set(), "_bad_turns": 0, "_repeats": 0}


def stop_before_call(state: dict[str, Any], cfg: AgentConfig) -> bool:
    """Apply the stop rules that hold before the next model call (call budget, consecutive
    malformed turns); ``True`` when the state may take another turn."""
    if state["stop_reason"] is None:
        if state["n_model_calls"] >= cfg.max_calls:
            state["stop_reason"] = "max_calls"
        elif state["_bad_turns"] >= cfg.max_format_errors:
            state["stop_reason"] = "format_errors"
    return state["stop_reason"] is None


def take_turn(state: dict[str, Any], text: str, finish_reason: str, call_tool: Callable[[str, dict], str], *,
              cfg: AgentConfig, n_tokens: int | None = None) -> None:
    """One model reply applied to ``state``: parse it (closing a tag cut by a stop string), append
    the messages, run its tool call, and apply the stop rules that follow a reply (answer, repeated
    call, token budget). ``finish_reason`` is the backend's (``stop`` / ``length``); ``n_tokens``
    the prompt + completion tokens of this call, when the caller counts them."""
    state["n_model_calls"] += 1
    if n_tokens is not None:
        state["n_tokens"] = n_tokens
    if finish_reason == "stop":
        text = close_open_tag(text)
    _act(state, parse_turn(text), call_tool, cfg)
    if state["stop_reason"] is None and n_tokens is not None and n_tokens > cfg.token_budget:
        state["stop_reason"] = "token_budget"
    if state["stop_reason"] is None and finish_reason == "length" and state["_bad_turns"]:
        state["format_errors"][-1]["errors"].append("reply cut at max_new_tokens")


def backend_failed(state: dict[str, Any], error: str) -> None:
    """Record a model call that returned no text (the backend's error) and stop the state."""
    state["n_model_calls"] += 1
    state["stop_reason"] = "backend_error"
    state["format_errors"].append({"turn": state["n_model_calls"], "errors": [f"backend: {error}"]})


def finish_state(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the step rules' bookkeeping and count the format errors: the trajectory as stored."""
    for key in ("_seen", "_bad_turns", "_repeats", "_copy"):  # _copy: run_agent's, for the sampling seeds
        state.pop(key, None)
    state["n_format_errors"] = len(state["format_errors"])
    return state


def _call_key(call: dict[str, Any]) -> str:
    return json.dumps([call["name"], call["arguments"]], sort_keys=True, default=str)


TOOL_ERROR = "Error:"  # how every tool error begins (tools.error_text writes it; is_tool_error reads it)


def is_tool_error(text: Any) -> bool:
    """Whether a tool response is an error: the one test the agent loop, the trajectory filter, grounding,
    synthesis and recovery turns apply."""
    return str(text).startswith(TOOL_ERROR)


REPEATED_CALL = "Error: identical to an earlier call; its result is above. Use it, or make another call."
REPEATED_CALL_STOP = "Error: identical to an earlier call; the run stops here."


def _act(state: dict[str, Any], turn: ParsedTurn, call_tool: Callable[[str, dict], str], cfg: AgentConfig) -> None:
    """Apply one parsed reply to the conversation state (append messages, run the tool)."""
    msgs = state["messages"]
    if turn.errors:
        state["format_errors"].append({"turn": state["n_model_calls"], "errors": turn.errors})
    if turn.answer:
        msgs.append({"role": "assistant", "content": turn.content})
        state["prediction"], state["stop_reason"] = turn.answer, "answer"
        return
    if turn.tool_calls:
        call = turn.tool_calls[0]  # one call per turn; extra calls are recorded as a format error
        msgs.append({"role": "assistant", "content": turn.content,
                     "tool_calls": [{"type": "function", "function": call}]})
        key = _call_key(call)
        if key in state["_seen"]:
            if state["_repeats"] >= cfg.max_repeated_calls:
                msgs.append({"role": "tool", "name": call["name"], "content": REPEATED_CALL_STOP})
                state["stop_reason"] = "repeated_call"
                return
            state["_repeats"] += 1  # answered with a reminder, not run again: a tool call that failed
            state["n_tool_calls"] += 1
            state["tool_errors"].append({"turn": state["n_model_calls"], "call": call, "error": REPEATED_CALL})
            msgs.append({"role": "tool", "name": call["name"], "content": REPEATED_CALL})
            return
        state["_seen"].add(key)
        result = call_tool(call["name"], call["arguments"])
        state["n_tool_calls"] += 1
        if is_tool_error(result):
            state["tool_errors"].append({"turn": state["n_model_calls"], "call": call, "error": result})
        msgs.append({"role": "tool", "name": call["name"], "content": result})
        state["_bad_turns"] = 0
        return
    # no usable call or answer: keep the raw text, tell the model, count it
    msgs.append({"role": "assistant", "content": turn.text})
    msgs.append({"role": "user", "content": "Error: " + "; ".join(turn.errors)
                 + ". Reply with <think>...</think> then one <tool_call> or an <answer>."})
    state["_bad_turns"] += 1


def conversation_seed(seed: int, question_id: str, copy: int, step: int) -> int:
    """The sampling seed of one conversation's turn ``step``: a digest of the run's ``seed``, the question,
    which ``copy`` of it (0 for the first; a GRPO group runs one question several times) and the turn.

    It depends on nothing else, so a question gets the same seeds whether it runs alone, beside other
    questions, or after others have finished (a seed per position in the batch would not: the position
    moves with the company); on OpenVINO that repeated 60 of 60 and 38 of 40 rollouts, the rest moved by
    bf16 arithmetic over another batch. Different turns of one conversation never share a seed."""
    key = f"{int(seed)}\x1f{question_id}\x1f{int(copy)}\x1f{int(step)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % (2**31)


def run_agent(backend: Any, toolbox: Any, questions: Sequence[dict[str, Any]], *, config: AgentConfig | None = None,
              guidance: dict[str, str] | None = None, schemas: list[dict[str, Any]] | None = None,
              system: str = SYSTEM_PROMPT, demo: Sequence[dict[str, Any]] | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Run the agent on every question (batched per step); one trajectory dict per question.

    ``guidance`` maps question id (the record's ``id``) -> MTG text shown to the model only;
    ``demo`` is an in-context example trajectory (messages without the system prompt), also
    never stored. Each trajectory holds
    TRL-ready ``messages`` (without guidance), ``prediction``, ``stop_reason``, counts of model
    and tool calls, recorded ``format_errors`` / ``tool_errors`` and the last call's token count.
    """
    from .notebook_output import progress as tqdm  # tqdm.auto, off in headless runs

    cfg = config or AgentConfig()
    schemas = schemas if schemas is not None else tool_schemas(toolbox.tools())
    guidance = guidance or {}
    states = [new_state(q, system) for q in questions]
    seen: Counter[str] = Counter()
    for s in states:  # which copy of its question each state is (0 unless a question is given more than once)
        s["_copy"] = seen[s["question_id"]]
        seen[s["question_id"]] += 1
    bar = tqdm(total=len(states), desc="agent", unit="question", disable=not progress)
    while True:
        active = [s for s in states if stop_before_call(s, cfg)]
        if not active:
            break
        convs = [to_text_messages(s["messages"], schemas, guidance.get(s["question_id"]), demo) for s in active]
        seeds = None if cfg.seed is None else [
            conversation_seed(cfg.seed, s["question_id"], s["_copy"], s["n_model_calls"]) for s in active]
        outs = backend.generate(convs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                stop=STOP_STRINGS, seed=seeds)
        for s, out in zip(active, outs):
            if not out.ok:
                backend_failed(s, out.error)
                continue
            take_turn(s, out.text, out.finish_reason, toolbox.call, cfg=cfg,
                      n_tokens=out.n_prompt_tokens + out.n_completion_tokens)
        bar.update(sum(1 for s in active if s["stop_reason"] is not None))
    bar.close()
    for s in states:
        finish_state(s)
    return states


def final_answer(messages: Sequence[dict[str, Any]]) -> str | None:
    """The text of the last ``<answer>`` of the last assistant message, if any."""
    for m in reversed(messages):
        if m.get("role") == "assistant":
            turn = parse_turn(str(m.get("content") or ""))
            return turn.answer or None
    return None


def render_markdown(messages: Sequence[dict[str, Any]], max_observation_chars: int = 700) -> str:
    """A trajectory turn by turn, for display in a notebook (observations shortened)."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system":
            continue
        if role == "user":
            out.append(f"**{'Question' if i <= 1 else 'User'}:** {m.get('content')}")
        elif role == "assistant":
            turn = parse_turn(str(m.get("content") or ""))
            untrained = " (no loss)" if m.get("weight") == 0 else ""  # a recovery turn's slip (medkit.recovery)
            if turn.think:
                out.append(f"**Think{untrained}:** {turn.think}")
            for c in m.get("tool_calls") or []:
                fn = c.get("function", c)
                out.append(f"**Call{untrained}:** `{fn.get('name')}({json.dumps(fn.get('arguments'), ensure_ascii=False)})`")
            if turn.answer:
                out.append(f"**Answer:** {turn.answer}")
            if not (turn.think or m.get("tool_calls") or turn.answer):
                out.append(f"**Assistant (unparsed):** {str(m.get('content'))[:300]}")
        elif role == "tool":
            text = str(m.get("content", ""))
            if len(text) > max_observation_chars:
                text = text[:max_observation_chars] + f" … [{len(text) - max_observation_chars} more characters]"
            out.append("**Observation:**\n```\n" + text + "\n```")
    return "\n\n".join(out)
