"""Recovery turns: one realistic slip in a trajectory, the tool's real error, and the corrected call.

Scope: the KG-guided trajectories of notebook 04 are error-free, so a policy trained on them never
sees an error followed by a corrected call. Evaluated, the cpu SFT policy made 74 tool errors in 166
calls (48 rollouts read in session 12): 38 re-issued a call that had just failed, 18 named an entity
that does not exist, 11 invented a relation (``has_a_definition`` for ``definition_mentions``).
:func:`with_recovery` inserts into a trajectory one slip of the two kinds the policy makes:

* ``relation`` — the call's relation replaced by an invented near-name (:func:`relation_slips`);
* ``name`` — an entity named in the call by a near-name that denotes nothing (:func:`name_slips`).

The slipped call is executed for real against the toolbox, so its ``Error: ...`` observation is the
tool's own (a variant the tool resolves anyway is not a slip and is not used). After it comes the
original call with a thought that reads the error (:func:`correction_thought`). The slip turn carries
``"weight": 0``, OpenAI's fine-tuning convention for a message that gets no loss;
:func:`medkit.sft.training_template` honours it, so the policy learns the recovery and never the slip.
:func:`recovered_errors` tells the trajectory filter which errors are such recovered slips;
:func:`without_recovery` undoes the insertion (the same trajectory error-free, for an ablation).
:func:`wanted` decides, from the seed, question and variant only, which trajectories get one.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from .agent import is_tool_error

RECOVERY_KINDS: tuple[str, ...] = ("relation", "name")
NO_LOSS = 0  # the ``weight`` of a message that carries no loss
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:\S+$")
_NAME_ARGS = ("entity_id", "entity_ids", "name", "phenotypes")  # arguments that may hold entity names


def wanted(question_id: str, variant: int, share: float, seed: int) -> bool:
    """Whether trajectory (``question_id``, ``variant``) gets a recovery turn: a stable draw of ``share``."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{question_id}:{variant}:recovery".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def relation_slips(relation: str, known: Sequence[str]) -> list[str]:
    """Invented near-names of ``relation`` that are not relations (the kind of name the policy makes up)."""
    parts = [p for p in relation.split("_") if p]
    core = parts[1:] if parts and parts[0] in ("has", "is") and len(parts) > 1 else parts
    options = [
        "_".join(core),                       # has_phenotype -> phenotype
        "has_" + "_".join(core),              # definition_mentions -> has_definition_mentions
        core[0] if core else "",              # definition_mentions -> definition
        "has_" + core[0] if core else "",     # -> has_definition
        " ".join(parts),                      # has phenotype
        relation + "s" if not relation.endswith("s") else relation[:-1],
    ]
    taken = set(known)
    out: list[str] = []
    for o in options:
        if o and o != relation and o not in taken and o not in out:
            out.append(o)
    return out


def name_slips(name: str) -> list[str]:
    """Near-names of an entity ``name`` (a word dropped, a plural made): the tool must still say none exists."""
    if _ID.match(name.strip()):
        return []  # ids are copied from observations; the policy's slips are names
    words = name.split()
    out: list[str] = []
    if len(words) > 1:
        out += [" ".join(words[:-1]), " ".join(words[1:])]
    out.append(name + "s" if not name.endswith("s") else name + " type")
    return [o for i, o in enumerate(out) if o and o != name and o not in out[:i]]


def _slipped(arguments: dict[str, Any], kind: str, known_relations: Sequence[str]) -> list[tuple[dict[str, Any], str, str]]:
    """(slipped arguments, bad text, good text) for every slip of ``kind`` this call allows."""
    out = []
    if kind == "relation" and isinstance(arguments.get("relation"), str):
        rels = [r.strip() for r in arguments["relation"].split(",")]
        for i, r in enumerate(rels):
            for bad in relation_slips(r, known_relations):
                new = copy.deepcopy(arguments)
                new["relation"] = ",".join(rels[:i] + [bad] + rels[i + 1:])
                out.append((new, bad, r))
    if kind == "name":
        for key in _NAME_ARGS:
            value = arguments.get(key)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    continue
                for bad in name_slips(item):
                    new = copy.deepcopy(arguments)
                    new[key] = [*items[:i], bad, *items[i + 1:]] if isinstance(value, list) else bad
                    out.append((new, bad, item))
    return out


def correction_thought(kind: str, bad: str, good: str) -> str:
    """The thought of the corrected call: what the error says, and the fix (never the plan again)."""
    if kind == "relation":
        return f"<think>There is no relation {bad!r}; the list has {good}.</think>"
    return f"<think>Nothing is named {bad!r}; the exact name is {good}.</think>"


def with_recovery(messages: list[dict[str, Any]], call: Callable[[str, dict[str, Any]], str], rng: random.Random,
                  known_relations: Sequence[str], kinds: Sequence[str] = RECOVERY_KINDS
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """``messages`` with one recovery turn inserted, and what was inserted; None when no call allows a slip.

    ``call(name, arguments)`` executes a tool (the toolbox's ``call``). Turns and slips are tried in an
    order drawn from ``rng``; the first slip whose real observation is an error is used.
    """
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and len(m.get("tool_calls") or []) == 1]
    rng.shuffle(turns)
    order = list(kinds)
    rng.shuffle(order)
    for i in turns:
        fn = messages[i]["tool_calls"][0]["function"]
        arguments = fn.get("arguments")
        if not isinstance(arguments, dict):
            continue
        for kind in order:
            options = _slipped(arguments, kind, known_relations)
            rng.shuffle(options)
            for new, bad, good in options:
                observation = call(fn["name"], new)
                if not is_tool_error(observation):
                    continue
                slip = {**copy.deepcopy(messages[i]), "weight": NO_LOSS}
                slip["tool_calls"][0]["function"]["arguments"] = new
                fixed = {"role": "assistant", "content": correction_thought(kind, bad, good),
                         "tool_calls": copy.deepcopy(messages[i]["tool_calls"])}
                error = {"role": "tool", "name": fn["name"], "content": observation}
                out = [*messages[:i], slip, error, fixed, *messages[i + 1:]]
                return out, {"kind": kind, "turn": i, "tool": fn["name"], "slip": bad, "fix": good}
    return None


def add_to_row(row: dict[str, Any], toolbox: Any, *, share: float, seed: int) -> dict[str, Any]:
    """A synthesised trajectory row (:meth:`medkit.synthesis.Synthesised.to_record`) with a recovery turn when
    :func:`wanted` draws it and a slip exists, its ``recovery`` field saying what was inserted (else None)."""
    row = {**row, "recovery": None}
    if row.get("synthesis_failure") or not wanted(str(row["question_id"]), int(row["variant"]), share, seed):
        return row
    rng = random.Random(f"{seed}:{row['question_id']}:{row['variant']}:slip")
    got = with_recovery(row["messages"], toolbox.call, rng, toolbox.relation_names)
    if got is not None:
        row["messages"], row["recovery"] = got
        row["n_tool_calls"] = int(row.get("n_tool_calls") or 0) + 1
    return row


def recovered_errors(messages: Sequence[dict[str, Any]]) -> set[int]:
    """Indices of tool observations that answer a no-loss slip turn and are followed by a different call."""
    out: set[int] = set()
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or m.get("weight") != NO_LOSS or i + 2 >= len(messages):
            continue
        obs, nxt = messages[i + 1], messages[i + 2]
        if (obs.get("role") == "tool" and is_tool_error(obs.get("content", ""))
                and nxt.get("role") == "assistant" and nxt.get("tool_calls")
                and nxt.get("tool_calls") != m.get("tool_calls")):
            out.add(i + 1)
    return out


def without_recovery(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with every recovery turn undone: slip, error and correction back to the original call."""
    out: list[dict[str, Any]] = []
    recovered = recovered_errors(messages)
    i = 0
    while i < len(messages):
        if i + 1 in recovered:
            original = {k: v for k, v in messages[i].items() if k != "weight"}
            out.append({**copy.deepcopy(original), "tool_calls": copy.deepcopy(messages[i + 2]["tool_calls"])})
            i += 3
        else:
            out.append(messages[i])
            i += 1
    return out
