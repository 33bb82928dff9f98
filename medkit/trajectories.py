"""Trajectory collection: filters, Masked Trajectory Guidance, resumable runs and the TRL dataset.

Scope:

* :func:`filter_trajectory` (and :func:`stage_filter`, the same with notebook 04's stage settings) applies the paper's rejection rules to one trajectory and says
  why it was rejected: ``synthesis_failed`` (a KG hop never appeared in an observation),
  ``unmatched_call_response``, ``format_error``, ``tool_error`` (except the error of a no-loss slip
  that a corrected call follows: a recovery turn of :mod:`medkit.recovery`), ``no_answer``,
  ``wrong_answer`` (judged by :mod:`medkit.judge`), ``too_few_turns``, ``over_token_limit``,
  ``guidance_leak`` (MTG text or placeholders surviving in the sample) and ``ungrounded`` (a pick
  the conversation never narrows down, by the rule of :mod:`medkit.grounding`; also the reason
  of a synthesis that could not ground a hop).
* MTG: :func:`guidance_text` turns a record's masked reasoning path into search guidance for
  a teacher; the agent loop shows it in the teacher's system prompt only, and
  :func:`guidance_leaks` rejects any saved sample whose reasoning still refers to it
  ("according to the hint", ``Entity_A``, ``Clue_2``, ...). :func:`rewrite_thoughts`
  optionally lets an LLM rewrite every ``<think>`` (kept only if it passes the same checks).
* :func:`collect` runs KG-guided synthesis (or takes agent rollouts), filters, and appends
  to a JSONL log keyed by (question_id, variant, source): an interrupted run resumes without
  losing or duplicating trajectories. :func:`accepted_records` gives TRL-ready rows
  (``messages`` with ``tool_calls`` + ``tools`` as a JSON string); :func:`to_dataset` loads them
  into a :class:`datasets.Dataset` that renders exactly like the raw rows.
* :func:`token_segments` / :func:`token_report`: where a trajectory's tokens go (system prompt, question,
  thoughts, calls, observations, answer, template) as the model being trained sees them.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .agent import assistant_text, final_answer, is_tool_error, parse_turn, render_tool_call, to_text_messages
from .grounding import check_trajectory
from . import io as mio
from .io import append_with_timings, read_jsonl, repair_jsonl_tail
from .judge import judge
from .questions import question_id
from .recovery import recovered_errors

FILTER_REASONS = ("synthesis_failed", "unmatched_call_response", "format_error", "tool_error", "no_answer",
                  "wrong_answer", "too_few_turns", "over_token_limit", "guidance_leak", "ungrounded")
SOURCES = ("kg_guided", "free")

_LEAK = re.compile(r"\b(?:hints?|guidance|guided|reasoning path|masked path|placeholder|"
                   r"Entity_[A-Z]\b|Clue_\d+|Target_Entity)", re.I)


# --------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- MTG


def guidance_text(record: dict[str, Any]) -> str:
    """The masked reasoning path as search guidance for a teacher (placeholders only, no names)."""
    steps = [s.strip() for s in str(record.get("reasoning_path", "")).split(";") if s.strip()]
    return ("The question follows this masked chain of facts (placeholders stand for entities you must identify "
            "with the tools; Target_Entity is the answer):\n" + "\n".join(f"- {s}" for s in steps)
            + "\nUse it to decide what to look up next, but never mention it: reason only from the question "
              "and the tool results.")


def guidance_leaks(messages: Sequence[dict[str, Any]]) -> list[str]:
    """Phrases in assistant turns that betray the guidance (empty list: clean)."""
    found = []
    for m in messages:
        if m.get("role") == "assistant":
            found += [x.group(0) for x in _LEAK.finditer(str(m.get("content") or ""))]
    return found


def rewrite_thoughts(messages: list[dict[str, Any]], backend: Any, *, max_new_tokens: int = 160
                     ) -> tuple[list[dict[str, Any]], int]:
    """Ask ``backend`` to rewrite every ``<think>`` so it justifies the action that follows.

    A rewrite is kept only if it is non-empty, shorter than 1,200 characters, has no guidance
    leak and names no id that the conversation has not shown yet; otherwise the original stays.
    Returns the new messages and the number of thoughts rewritten. Backend errors keep originals.
    """
    prompts, where = [], []
    seen_text = ""
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            turn = parse_turn(assistant_text(m))
            if turn.think:
                action = json.dumps(m.get("tool_calls") or [], ensure_ascii=False) if m.get("tool_calls") \
                    else f"answer: {turn.answer}"
                prompts.append([{"role": "system", "content": "Rewrite the reasoning of a research agent as one or "
                                 "two plain sentences that justify its next action from what it has seen. Output "
                                 "the sentences only."},
                                {"role": "user", "content": f"Seen so far (truncated):\n{seen_text[-1500:]}\n\n"
                                 f"Reasoning: {turn.think}\nNext action: {action}"}])
                where.append((i, turn.think, seen_text))
        seen_text += "\n" + str(m.get("content") or "")
    if not prompts:
        return list(messages), 0
    outs = backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    new = [dict(m) for m in messages]
    n = 0
    ids = re.compile(r"\b[A-Z][A-Za-z]*:[A-Za-z0-9_.]+")
    for (i, old, seen), out in zip(where, outs):
        text = " ".join(getattr(out, "text", "").split())
        if not getattr(out, "ok", False) or not text or len(text) > 1200 or _LEAK.search(text):
            continue
        if any(x not in seen for x in ids.findall(text)) or "<" in text:
            continue
        new[i]["content"] = str(new[i]["content"]).replace(f"<think>{old}</think>", f"<think>{text}</think>", 1)
        n += 1
    return new, n


# --------------------------------------------------------------------------- filtering


def structure_problems(messages: Sequence[dict[str, Any]]) -> list[str]:
    """Unmatched tool calls / responses and raw (unparsed) assistant turns."""
    problems = []
    pending = 0
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            if pending:
                problems.append("unmatched_call_response")
            pending = len(m.get("tool_calls") or [])
        elif role == "tool":
            if pending == 0:
                problems.append("unmatched_call_response")
            else:
                pending -= 1
        elif role == "user" and pending:
            problems.append("unmatched_call_response")
    if pending:
        problems.append("unmatched_call_response")
    return problems


def stage_filter(params: dict[str, Any], *, count_tokens: Callable[[list[dict]], int] | None,
                 resolve: Callable[[str], Iterable[str]] | None,
                 grounding: bool = True) -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """Notebook 04's filter with its stage settings (``MIN_TOOL_CALLS``, ``MAX_TOKENS``): ``(trajectory, record)``
    -> :func:`filter_trajectory`'s verdict. ``grounding=False`` drops only the grounding check (the ablation's
    ungrounded trajectories are filtered by this, so both are judged by one rule)."""

    def judge_row(trajectory: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        return filter_trajectory(trajectory, record, min_tool_calls=int(params["MIN_TOOL_CALLS"]),
                                 max_tokens=params["MAX_TOKENS"], count_tokens=count_tokens, resolve=resolve,
                                 grounding=grounding)

    return judge_row


def filter_trajectory(trajectory: dict[str, Any], record: dict[str, Any], *, min_tool_calls: int = 2,
                      max_tokens: int | None = None, count_tokens: Callable[[list[dict]], int] | None = None,
                      resolve: Callable[[str], Iterable[str]] | None = None, grounding: bool = True) -> dict[str, Any]:
    """``{"accepted", "reasons", "judge", "n_tokens", "prediction", "n_tool_calls", "grounded"}`` for one trajectory.

    ``grounding``: check every pick with :func:`medkit.grounding.check_trajectory` against the question
    record (``ungrounded`` when a commit is not grounded, the row cannot be checked, or synthesis gave
    up on grounding a hop); ``grounded`` is None when not checked.
    """
    messages = trajectory.get("messages") or []
    reasons: list[str] = []
    failure = trajectory.get("synthesis_failure")
    if failure:
        reasons.append("ungrounded" if str(failure).startswith("ungrounded") else "synthesis_failed")
    if structure_problems(messages):
        reasons.append("unmatched_call_response")
    if trajectory.get("format_errors"):
        reasons.append("format_error")
    recovered = recovered_errors(messages)  # a no-loss slip's error, then a corrected call (medkit.recovery)
    if any(m.get("role") == "tool" and is_tool_error(m.get("content", "")) and i not in recovered
           for i, m in enumerate(messages)):
        reasons.append("tool_error")
    prediction = final_answer(messages)
    verdict = None
    if not prediction:
        reasons.append("no_answer")
    else:
        v = judge(prediction, record, resolve=resolve)
        verdict = v.method
        if not v.correct:
            reasons.append("wrong_answer")
    n_calls = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
    if n_calls < min_tool_calls:
        reasons.append("too_few_turns")
    n_tokens = count_tokens(messages) if count_tokens is not None else None
    if max_tokens is not None and n_tokens is not None and n_tokens > max_tokens:
        reasons.append("over_token_limit")
    if guidance_leaks(messages):
        reasons.append("guidance_leak")
    grounded = None
    if grounding:
        grounded = check_trajectory(messages, record).grounded  # never raises: a bad row is simply not grounded
        if not grounded and "ungrounded" not in reasons:
            reasons.append("ungrounded")
    return {"accepted": not reasons, "reasons": reasons, "judge": verdict, "n_tokens": n_tokens,
            "prediction": prediction, "n_tool_calls": n_calls, "grounded": grounded}


def token_counter(tokenizer: Any, schemas: list[dict[str, Any]]) -> Callable[[list[dict]], int]:
    """Tokens of a whole trajectory as the model sees it (text protocol, tools in the system prompt)."""
    def count(messages: list[dict]) -> int:
        text = tokenizer.apply_chat_template(to_text_messages(messages, schemas), tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return count


SEGMENTS = ("system", "question", "thoughts", "calls", "observations", "answer", "template")


def text_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of a piece of text alone (no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_segments(tokenizer: Any, messages: list[dict], schemas: list[dict[str, Any]]) -> dict[str, int]:
    """Where a trajectory's tokens go, as :func:`token_counter` counts them: the system prompt (with the
    tool list, and the JSON schema block when ``schemas``), the question, thoughts, calls, observations
    (with their ``<tool_response>`` tags), the answer, and ``template`` (chat-template tokens between
    turns: the total minus the rest). Each piece is tokenised alone, so the split is close, the total exact."""
    def n(text: str) -> int:
        return text_tokens(tokenizer, text)

    seg = dict.fromkeys(SEGMENTS, 0)
    seg["system"] = n(to_text_messages(messages, schemas)[0]["content"])
    start = 1 if messages and messages[0].get("role") == "system" else 0
    for m in messages[start:]:
        role = m.get("role")
        if role == "user":
            seg["question"] += n(str(m.get("content", "")))
        elif role == "tool":
            seg["observations"] += n("<tool_response>\n" + str(m.get("content", "")) + "\n</tool_response>")
        elif role == "assistant":
            turn = parse_turn(assistant_text(m))
            if turn.think is not None:
                seg["thoughts"] += n(f"<think>{turn.think}</think>")
            for c in m.get("tool_calls") or []:
                fn = c.get("function", c)
                seg["calls"] += n(render_tool_call(fn.get("name"), fn.get("arguments")))
            if turn.answer is not None:
                seg["answer"] += n(f"<answer>{turn.answer}</answer>")
    seg["template"] = token_counter(tokenizer, schemas)(messages) - sum(seg.values())
    return seg


TOKEN_LIMITS = (1200, 2048)  # the shares of trajectories within these lengths that reports give (issue 13's goal, cpu SFT)


def token_report(tokenizer: Any, rows: Iterable[dict[str, Any]], schemas: list[dict[str, Any]],
                 limits: Sequence[int] = TOKEN_LIMITS) -> dict[str, Any]:
    """Tokens of trajectories as a model trained with ``schemas`` in the prompt sees them (SFT drops the JSON
    schema block unless ``TOOLS_IN_PROMPT``): mean, max, the share within each of ``limits``, the mean and share
    of each :data:`SEGMENTS` part, and by hop count (``row["hops"]``) the same mean, max, shares and segment means.
    Strict JSON; an empty input gives zero counts and ``None`` means."""
    per: list[tuple[int, dict[str, int], Any]] = []
    for r in rows:
        seg = token_segments(tokenizer, r["messages"], schemas)
        per.append((sum(seg.values()), seg, r.get("hops")))
    totals = [t for t, _, _ in per]
    mean = sum(totals) / len(totals) if totals else None

    def share(values: list[int], limit: int) -> float | None:
        return round(sum(v <= limit for v in values) / len(values), 3) if values else None

    seg_mean = {k: round(sum(s[k] for _, s, _ in per) / len(per), 1) if per else None for k in SEGMENTS}
    by_hops: dict[str, list[int]] = {}
    hop_segs: dict[str, list[dict[str, int]]] = {}
    for total, seg, hops in per:
        by_hops.setdefault(str(hops), []).append(total)
        hop_segs.setdefault(str(hops), []).append(seg)
    order = sorted(by_hops, key=lambda h: (not h.isdigit(), int(h) if h.isdigit() else 0, h))
    return {
        "trajectories": len(per), "tools_in_prompt": bool(schemas),
        "mean_tokens": round(mean, 1) if mean is not None else None, "max_tokens": max(totals, default=0),
        "share_within": {str(limit): share(totals, limit) for limit in limits},
        "segments_mean": seg_mean,
        "segments_share": {k: round(v / mean, 3) if mean and v is not None else None for k, v in seg_mean.items()},
        "by_hops": {h: {"trajectories": len(by_hops[h]), "mean_tokens": round(sum(by_hops[h]) / len(by_hops[h]), 1),
                        "max_tokens": max(by_hops[h]),
                        "share_within": {str(limit): share(by_hops[h], limit) for limit in limits},
                        "segments_mean": {k: round(sum(x[k] for x in hop_segs[h]) / len(hop_segs[h]), 1)
                                          for k in SEGMENTS}} for h in order},
    }


# --------------------------------------------------------------------------- resumable collection


# Measured per trajectory, so kept beside the log (``*_timings.jsonl``), not in its byte-reproducible rows
TIMING_FIELDS = ("seconds",)
TIMING_KEY = ("question_id", "variant", "source")


def read_timings(path: Path) -> list[dict[str, Any]]:
    """The timings :func:`collect` kept beside the log ``path`` (one per trajectory)."""
    return mio.read_timings(path, TIMING_KEY)


def _key(row: dict[str, Any]) -> tuple[str, int, str]:
    return str(row["question_id"]), int(row.get("variant", 0)), str(row.get("source", "kg_guided"))


def done_keys(path: Path, source: str | None = None, version: Any = None, settings: Any = None
              ) -> set[tuple[str, int, str]]:
    """Keys already in the log (a torn last line is cut first, so it is redone, not duplicated).

    With ``source`` and ``version``, rows of that source that must be made again are dropped from the
    log first (atomically): rows of another version of the generator, rows made under other
    ``settings`` (their ``settings_key``, :func:`medkit.io.settings_key`) and rollouts whose backend
    failed (``stop_reason`` ``backend_error``: a dead endpoint's rollout is not a finished result).
    """
    from .io import write_jsonl

    path = Path(path)
    if not path.exists():
        return set()
    repair_jsonl_tail(path)
    rows = read_jsonl(path)
    if source is not None:
        key = None if settings is None else mio.settings_key(settings)

        def stale(r: dict[str, Any]) -> bool:
            return r.get("source") == source and (r.get("version") != version or r.get("stop_reason") == "backend_error"
                                                  or (key is not None and r.get("settings_key") != key))

        if any(stale(r) for r in rows):
            rows = [r for r in rows if not stale(r)]
            write_jsonl(path, rows)
    return {_key(r) for r in rows}


def collect(path: Path, jobs: Iterable[tuple[dict[str, Any], int]], make: Callable[[dict[str, Any], int], dict],
            judge_row: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]], *, source: str,
            version: Any = None, settings: Any = None, progress: bool = True, total: int | None = None) -> Counter:
    """For each (record, variant) not yet in the log: ``make`` a trajectory, filter it, append it.

    ``version`` (the generator's version) and the hash of ``settings`` (whatever else shapes a row: seed,
    filter limits, teacher) are stored in each row; rows of this source made by another version or
    under other settings, and failed-backend rollouts, are made again (:func:`done_keys`). Returns
    counts of this call's outcomes ("accepted" and the first reject reason).
    """
    from .notebook_output import progress as tqdm  # tqdm.auto, off in headless runs

    path = Path(path)
    done = done_keys(path, source, version, settings)
    repair_jsonl_tail(mio.timings_path(path))
    stamp = {} if settings is None else {"settings_key": mio.settings_key(settings)}
    counts: Counter = Counter()
    for record, variant in tqdm(list(jobs), total=total, desc=f"trajectories ({source})", disable=not progress):
        key = (question_id(record), int(variant), source)
        if key in done:
            counts["skipped (already done)"] += 1
            continue
        t0 = time.perf_counter()
        traj = make(record, variant)
        traj.update({"question_id": key[0], "variant": variant, "source": source, "version": version, **stamp})
        traj["filter"] = judge_row(traj, record)
        traj.setdefault("seconds", round(time.perf_counter() - t0, 4))  # rollouts bring their own share
        for field in ("specialty", "hops", "answer", "answer_type", "sampling_algorithm"):
            traj.setdefault(field, record.get(field))
        append_with_timings(path, traj, dict(zip(TIMING_KEY, key)), TIMING_FIELDS)
        done.add(key)
        counts["accepted" if traj["filter"]["accepted"] else traj["filter"]["reasons"][0]] += 1
    return counts


def accepted_records(rows: Iterable[dict[str, Any]], schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL-ready rows of the accepted trajectories, in a stable order."""
    tools = json.dumps(schemas, ensure_ascii=False)
    out = []
    for r in rows:
        if not r.get("filter", {}).get("accepted"):
            continue
        out.append({"messages": r["messages"], "tools": tools, "question_id": r["question_id"],
                    "variant": r["variant"], "source": r["source"], "specialty": r.get("specialty"),
                    "hops": r.get("hops"), "answer": r.get("answer"), "n_tool_calls": r["filter"]["n_tool_calls"],
                    "n_tokens": r["filter"]["n_tokens"], "recovery": r.get("recovery")})
    return sorted(out, key=lambda r: (r["question_id"], r["source"], r["variant"]))


def to_dataset(rows: list[dict[str, Any]]) -> Any:
    """A ``datasets.Dataset`` of TRL rows; ``messages`` stored as JSON so heterogeneous tool arguments
    survive Arrow (no struct unification adding ``null`` keys)."""
    import datasets

    features = datasets.Features({"messages": datasets.List(datasets.Json()), "tools": datasets.Value("string"),
                                  "question_id": datasets.Value("string")})
    slim = [{"messages": r["messages"], "tools": r["tools"], "question_id": r["question_id"]} for r in rows]
    return datasets.Dataset.from_list(slim, features=features)


# --------------------------------------------------------------------------- reporting


def summarise(rows: Sequence[dict[str, Any]], timings: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Acceptance, reject reasons (first reason per trajectory), tool use and coverage of a log; the time
    spent on its rows from ``timings`` (:func:`read_timings`)."""
    rows = list(rows)
    seconds_of = {_key(t): float(t.get("seconds") or 0) for t in timings}
    acc = [r for r in rows if r["filter"]["accepted"]]
    first = Counter(r["filter"]["reasons"][0] for r in rows if not r["filter"]["accepted"])
    every = Counter(x for r in rows for x in r["filter"]["reasons"])
    tools = Counter(c["function"]["name"] for r in acc for m in r["messages"] if m.get("role") == "assistant"
                    for c in m.get("tool_calls") or [])
    calls = [r["filter"]["n_tool_calls"] for r in acc]
    tokens = [r["filter"]["n_tokens"] for r in acc if r["filter"]["n_tokens"] is not None]
    seconds = sum(seconds_of.get(_key(r), float(r.get("seconds") or 0)) for r in rows)  # or a log made before
    return {"trajectories": len(rows), "accepted": len(acc), "seconds": round(seconds, 1),
            "trajectories_per_second": round(len(rows) / seconds, 2) if seconds else None,
            "acceptance_rate": round(len(acc) / len(rows), 4) if rows else None,
            "questions_covered": len({r["question_id"] for r in acc}),
            "specialties": len({r.get("specialty") for r in acc if r.get("specialty")}),
            "mean_tool_calls": round(sum(calls) / len(calls), 3) if calls else None,
            "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
            "max_tokens": max(tokens) if tokens else None,
            "first_reject_reason": dict(first.most_common()), "any_reject_reason": dict(every.most_common()),
            "tool_calls_by_tool": dict(tools.most_common()),
            "with_recovery_turn": sum(1 for r in acc if r.get("recovery"))}
