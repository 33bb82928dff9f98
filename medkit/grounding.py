"""Grounding: is every pick of a trajectory decided by what the agent has already seen?

Scope: one rule, checked on stored trajectories (chat ``messages`` with assistant
``tool_calls`` and ``role: "tool"`` observations, as :mod:`medkit.trajectories` logs them)
against the question they answer (``chain`` and ``constraints`` of a :mod:`medkit.questions`
record). Nothing is looked up in the knowledge base: the checker reads the conversation text
only, as a model imitating the trajectory would. :func:`check_trajectory` judges one
trajectory, :func:`check_rows` a log, :func:`commit_frame` and :func:`summarise` aggregate;
:func:`probe_commit` gives the verdict a commit made right now would get (what synthesis uses to
decide which competitors still need ruling out before it commits).

The rule
--------
*Commit.* The first assistant turn that names a chain entity ``E`` commits to it: its id (as a
token) or one of its names (the whole argument, after normalisation) in a tool call's
arguments, its id or name as the final ``<answer>``, or its id in the ``<think>`` (a thought that
declares "X (id) is there" commits as much as a call using X). Names inside longer text never
commit: "Hypotonia" is not named by "Axial hypotonia".

*Introduced by.* The first observation after the previous commit turn (this hop's window)
whose text shows E's id — or, for a commit written by name only whose id no observation shows,
E's name as whole words; when no observation of the window shows it, the latest earlier one
that does. A commit whose id (or, written by name, whose name) no earlier observation shows
is a violation (``never_shown``).

*Candidates of the right type.* The items of the list, in that observation, that holds E:
the ``related`` section (outgoing / incoming), the ``common`` result, the ``read`` section, the
ranked ``diagnose`` lines, the ``search`` hits' entity ids, the ``lookup`` lines. Items are the
``name (id)`` labels (lookup: the leading id), never ids in headers, the diagnose ``Query`` or
free text. Right type = E's id kind: MONDO / OMIM / ORPHA are diseases, HP terms one kind
(phenotypes, onsets, modes of inheritance: the relation listing them tells them apart),
DRUGBANK drugs, CHEBI classes, NCBIGene genes. Every candidate other than E is a competitor.

*Complete and truncated lists.* ``related``, ``common`` and ``read`` state each list's size
(``"incoming (X -r), 7: ..."``, ``"(18): ..."``, ``"r shared, 3: ..."``); a list is complete
when every counted item is shown. One with ``"... and N more"`` (the 25-item cap of related /
common, 15 of read, 10 of lookup) or cut by the 4,000-character cap (``"[output truncated"``)
is truncated: it never rules anything out, and when it introduces E its unseen items are one
more competitor, ruled out only by a complete list for one of the hop's constraints all of
whose items of E's kind the introducing list did show. ``diagnose`` and ``search`` give the
top k of a ranking: they are never complete, and what lies below rank k is not a competitor.

*The hop's constraints* (from the question record, which the question text states): E's link
to the previous chain entity and its clues, each read as "E is listed by related(a, r, s)":
link ``fwd`` (prev -r-> E) is (prev, r, out); link ``rev`` (E -r-> prev) is (prev, r, in); clue
``fact`` (E -r-> v) is (v, r, in); clue ``fact_rev`` (v -r-> E) is (v, r, out). ``under`` and
``degree`` clues cannot be refuted from the text and rule nothing out.

*Ruled out.* A competitor C is ruled out by an observation shown before the commit turn:

1. **complete list** — a complete ``related(a, r, s)`` section or ``read(a)`` section for one of
   the hop's constraints (a, r, s) lacks C;
2. **intersection** — a complete ``common(anchors, r)`` lacks C, every anchor being the anchor
   of one of the hop's r-constraints (C then misses at least one of them, in either direction);
   with one relation per anchor (``common([a, b], "r1,r2")``), each anchor with its own relation.
   The anchors are the call's: an id as written, a name as the entity the question record gives
   that name (:func:`question_names`) — or, for a name that denotes several entries, the one the
   tool's output says it took;
3. **own entry** — C's own complete ``related`` / ``read`` section for r on the other side lacks a;
4. **diagnose line** — a ``diagnose`` output whose query holds the anchor a of a constraint
   (a, has_phenotype, in) shows C's line without a among C's matched phenotypes (the line
   names every query phenotype annotated to C, so C lacks a);
5. **identity** — C is a chain entity committed earlier, or a clue entity the question names
   (the question describes the wanted entity as another one).

Scores, ranks and frequencies rule nothing out: a rank-1 diagnosis is grounded only when the
other shown candidates each lack a clue; a tie, or rank 2 or 3, is not. Verification calls
made after the commit do not count. A commit is *grounded* when E was shown and every
competitor (and unseen remainder) is ruled out; a trajectory is grounded when it commits at
least once and all its commits are. Malformed rows (no messages, unreadable tool calls, no
usable question) are reported with their reason, never raised.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .agent import is_tool_error, parse_turn
from .ner import surface_key
from .questions import contains_words

TOOLS_WITH_SIDES = ("related", "read")
MIN_NAME_KEY = 4  # shorter names match only as a whole argument, never inside free text

_ID = r"[A-Za-z][A-Za-z0-9_]*:[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?"
_ID_TOKEN = re.compile(rf"(?<![A-Za-z0-9_:])({_ID})(?![A-Za-z0-9_])")
_LABEL_ID = re.compile(rf"\(({_ID})\)")
_MORE = re.compile(r" \.\.\. and (\d+) more$")
_TRUNCATED = "\n[output truncated:"
_RELATED_HEAD = re.compile(rf"^.* \(({_ID})\) — (\S+)$")
_RELATED_SIDE = re.compile(r"^(outgoing|incoming) \([^)]*\), (\d+): (.*)$")
# "r shared, n: items", with "(name = id; ...)" after "shared" for names that denote several entries (before
# synthesis v9: "r shared by id1, id2, n: items"; before v5: "r neighbours shared by name (id), ...")
_COMMON = re.compile(rf"^(\S+) shared(?: \(((?:[^;]*? = {_ID})(?:; [^;]*? = {_ID})*)\))?(?:, (\d+): (.*)|: none\.)$",
                     re.S)
_COMMON_ECHO = re.compile(r"^(\S+) (?:neighbours )?shared by (.*?)(?:, (\d+): (.*)|: none\.)$", re.S)
_PICK = re.compile(rf"^(.*) = ({_ID})$")
_READ_HEAD = re.compile(rf"^.* \(({_ID})\) — \S+$")
_READ_SECTION = re.compile(r"^(?:.*? \[(\w+), (outgoing|incoming)\]|(\w+) \((outgoing|incoming)\)) \((\d+)\): (.*)$")
# a ranked diagnose line: "rank. name (id) m/n: #1 55%; #2 freq unknown", tied lines sharing a rank (before
# synthesis v5: "score=S matched=m/n: Phenotype name 55%; ..."; both are read, so older logs still check)
DIAGNOSE_LINE = re.compile(rf"^(\d+)\. .* \(({_ID})\) (?:score=(\S+) )?(?:matched=)?(\d+)/(\d+)(?:: (.*))?$")
# a matched query phenotype "#1 55%" / "#2 freq unknown"; "#3 excluded" (since KB version 2; "#3 0% [excluded]" before)
# says the disease is known to lack it, so it is no match
_MATCHED = re.compile(r"^(.*) (?:\d+%|freq unknown)$")
UNRESOLVED = "Unresolved (ignored): "  # diagnose's line for phenotypes it could not resolve (they get no number)
_QUERY_REF = re.compile(r"^#(\d+) (.*)$")
_SEARCH_HIT = re.compile(rf"^(?:\[[^\]]*\] )?.*? \(({_ID})\): ")  # "[passage id] " only when not the entity's own
_LOOKUP_LINE = re.compile(rf"^({_ID}) .* \([^()]*\)(?: \[synonym\])?$")

_KINDS = {"MONDO": "disease", "OMIM": "disease", "ORPHA": "disease", "HP": "HPO term", "DRUGBANK": "drug",
          "CHEBI": "drug class", "NCBIGene": "gene"}
_SIDE = {"outgoing": "out", "incoming": "in"}
_OTHER_SIDE = {"out": "in", "in": "out"}


def id_kind(entity_id: str) -> str:
    """The kind of entity an id denotes, from its prefix (unknown prefixes are their own kind)."""
    prefix = entity_id.split(":", 1)[0]
    return _KINDS.get(prefix, prefix)


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class Listing:
    """One list an observation shows: whose neighbours, through what, its items, complete or not."""

    tool: str
    anchors: tuple[str, ...]   # related / read: the entity; common: the shared-by ids; diagnose: the query
    relation: str | None
    side: str | None           # "out" / "in" for related and read sections, None otherwise
    items: tuple[str, ...]
    complete: bool
    hidden: int = 0            # items counted but not shown


@dataclass
class Observation:
    """A tool message, parsed: its lists and, for diagnose, each line's matched phenotypes."""

    index: int
    tool: str
    text: str
    listings: list[Listing] = field(default_factory=list)
    query: dict[str, str] = field(default_factory=dict)             # diagnose: phenotype id -> name
    matched: dict[str, frozenset[str]] = field(default_factory=dict)  # diagnose: disease id -> phenotype names
    ids: frozenset[str] = frozenset()                                   # every id token in the text
    _key: str | None = field(default=None, repr=False)

    def shows_name(self, keys: Iterable[str]) -> bool:
        if self._key is None:
            self._key = surface_key(self.text)
        return any(len(k) >= MIN_NAME_KEY and contains_words(self._key, k) for k in keys)


def _items(text: str) -> list[str]:
    """Ids of the ``name (id)`` items of a "; "-separated list (a trailing "... and N more" dropped)."""
    if (m := _MORE.search(text)) is not None:
        text = text[:m.start()]
    return [found[-1] for item in text.split("; ") if (found := _LABEL_ID.findall(item))]


def _listing(tool: str, anchors: tuple[str, ...], relation: str | None, side: str | None, body: str,
             total: int) -> Listing:
    ids = _items(body)
    return Listing(tool, anchors, relation, side, tuple(ids), complete=len(ids) == total,
                   hidden=max(total - len(ids), 0))


def _parse_related(obs: Observation, lines: list[str], arguments: dict[str, Any], cut: bool) -> None:
    head = _RELATED_HEAD.match(lines[0]) if lines else None
    if head is None:
        return
    anchor, relation = head.group(1), head.group(2)
    seen = set()
    for line in lines[1:]:
        if (m := _RELATED_SIDE.match(line)) is not None:
            side = _SIDE[m.group(1)]
            seen.add(side)
            obs.listings.append(_listing("related", (anchor,), relation, side, m.group(3), int(m.group(2))))
    if cut:
        return
    asked = arguments.get("direction", "both")
    sides = ("out", "in") if asked == "both" else (asked,) if asked in ("out", "in") else ()
    for side in sides:  # an asked side with no section has no neighbours: a complete empty list
        if side not in seen:
            obs.listings.append(Listing("related", (anchor,), relation, side, (), complete=True))


def call_anchors(arguments: Mapping[str, Any] | None, names: Mapping[str, str] | None = None,
                 picks: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The entities a ``common`` call intersects, in its order: an id as given; a name as the tool took it
    (``picks``, what its output says for a name that denotes several entries), else as ``names`` (surface
    key -> id) resolves it, else the name itself (matching no constraint, so it bounds nothing)."""
    given = (arguments or {}).get("entity_ids")
    out = []
    for a in given if isinstance(given, (list, tuple)) else ():
        text = str(a).strip()
        out.append(text if _ID_TOKEN.fullmatch(text) else (picks or {}).get(text) or as_id(text, names) or text)
    return tuple(out)


def as_id(text: str, names: Mapping[str, str] | None) -> str | None:
    """A call argument as an id: an id as written, a name as ``names`` (surface key -> id) resolves it, else None."""
    return text if _ID_TOKEN.fullmatch(text) else (names or {}).get(surface_key(text))


def _parse_common(obs: Observation, text: str, arguments: Mapping[str, Any] | None,
                  names: Mapping[str, str] | None) -> None:
    m = _COMMON.match(text)
    if m is not None:
        picks = dict(p.groups() for item in (m.group(2) or "").split("; ") if (p := _PICK.match(item)))
        anchors = call_anchors(arguments, names, picks)
    elif (m := _COMMON_ECHO.match(text)) is not None:  # an older log: the ids are in the text
        anchors = tuple(_LABEL_ID.findall(m.group(2)) or _ID_TOKEN.findall(m.group(2)))
    else:
        return
    if m.group(3) is None:
        obs.listings.append(Listing("common", anchors, m.group(1), None, (), complete=True))
    else:
        obs.listings.append(_listing("common", anchors, m.group(1), None, m.group(4), int(m.group(3))))


def _parse_read(obs: Observation, lines: list[str]) -> None:
    head = _READ_HEAD.match(lines[0]) if lines else None
    if head is None:
        return
    anchor = head.group(1)
    for line in lines[1:]:
        if (m := _READ_SECTION.match(line)) is not None:
            relation, side = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            obs.listings.append(_listing("read", (anchor,), relation, _SIDE[side], m.group(6), int(m.group(5))))


def query_ids(arguments: Mapping[str, Any] | None, lines: Sequence[str], names: Mapping[str, str] | None = None
              ) -> list[str | None]:
    """The ids of a ``diagnose`` output's numbered query phenotypes (#1, #2, ...), from the call: the
    phenotypes it passed, less the ones the output lists as unresolved, in order (an id as written, a name
    as ``names`` resolves it); None where that is unknown. Empty when the count does not match the output's."""
    given = (arguments or {}).get("phenotypes")
    unresolved = next((line[len(UNRESOLVED):].split("; ") for line in lines if line.startswith(UNRESOLVED)), [])
    used = [str(a).strip() for a in given if str(a).strip() not in unresolved] if isinstance(given, (list, tuple)) else []
    out: list[str | None] = [as_id(a, names) for a in used]
    shown = next((line for line in lines if line.startswith("Query: ")), "")
    count = len(shown.split(" | within ", 1)[0].split("; ")) if shown else 0
    return out if len(out) == count else []  # a phenotype given twice is numbered once: then names only


def _parse_diagnose(obs: Observation, lines: list[str], arguments: Mapping[str, Any] | None,
                    names: Mapping[str, str] | None) -> None:
    ranked = []
    refs: dict[str, str] = {}  # "#n" -> the query phenotype's name
    by_call = query_ids(arguments, lines, names)
    for line in lines:
        if line.startswith("Query: "):
            query = line[len("Query: "):].split(" | within ", 1)[0]
            for n, item in enumerate(query.split("; ")):
                ids = _LABEL_ID.findall(item)  # "#1 name (id)" before synthesis v9, "#1 name" since
                name = item[:item.rfind(f" ({ids[-1]})")] if ids else item
                if (ref := _QUERY_REF.match(name)) is not None:
                    refs["#" + ref.group(1)] = name = ref.group(2)
                eid = ids[-1] if ids else (by_call[n] if n < len(by_call) else None) \
                    or (names or {}).get(surface_key(name))
                if eid:
                    obs.query[eid] = name
        elif (m := DIAGNOSE_LINE.match(line)) is not None:
            ranked.append(m.group(2))
            names = [refs.get(x.group(1), x.group(1)) for x in map(_MATCHED.match, (m.group(6) or "").split("; ")) if x]
            obs.matched[m.group(2)] = frozenset(names)
    obs.listings.append(Listing("diagnose", tuple(obs.query), None, None, tuple(ranked), complete=False))


def _parse_lines(obs: Observation, lines: list[str], pattern: re.Pattern[str]) -> None:
    """One hit per line (search, lookup); lookup's "... and N more" counts the unseen matches."""
    ids = [m.group(1) for m in map(pattern.match, lines) if m]
    more = _MORE.search(" " + lines[-1]) if lines else None
    obs.listings.append(Listing(obs.tool, (), None, None, tuple(ids), complete=False,
                                hidden=int(more.group(1)) if more else 0))


def parse_observation(index: int, tool: str, text: str, arguments: Mapping[str, Any] | None = None,
                      names: Mapping[str, str] | None = None) -> Observation:
    """The lists one tool output shows (see the module docstring); ``Error:`` lines show none.

    ``arguments`` are the call's (``related``: its direction; ``common``: the entities it intersects, a
    name among them resolved by ``names``, surface key -> id, see :func:`question_names`)."""
    obs = Observation(index, tool, text, ids=frozenset(_ID_TOKEN.findall(text)))
    if is_tool_error(text):
        return obs
    cut = _TRUNCATED in text
    body = text.split(_TRUNCATED, 1)[0]
    lines = body.split("\n")
    if tool == "related":
        _parse_related(obs, lines, arguments or {}, cut)
    elif tool == "common":
        _parse_common(obs, body, arguments, names)
    elif tool == "read":
        _parse_read(obs, lines)
    elif tool == "diagnose":
        _parse_diagnose(obs, lines, arguments, names)
    elif tool == "search":
        _parse_lines(obs, lines, _SEARCH_HIT)
    elif tool == "lookup":
        _parse_lines(obs, lines, _LOOKUP_LINE)
    else:  # an unknown tool: every labelled id, as one ranked (never complete) list
        obs.listings.append(Listing(tool, (), None, None, tuple(_LABEL_ID.findall(body)), complete=False))
    return obs


# --------------------------------------------------------------------------- the question


@dataclass(frozen=True)
class Constraint:
    """One thing the hop's entity must satisfy: ``related(anchor, relation, side)`` lists it."""

    anchor: str
    relation: str
    side: str


@dataclass(frozen=True)
class Hop:
    """One chain entity: where it sits, how the agent may name it, what the question asks of it."""

    entity_id: str
    position: int
    keys: tuple[str, ...]                 # normalised names the agent may write
    constraints: tuple[Constraint, ...]


def _hops(question: Any) -> tuple[list[Hop], set[str], str | None]:
    """The chain's hops, the clue entities the question names, or why the record is unusable."""
    if not isinstance(question, Mapping):
        return [], set(), "no question record"
    chain, constraints = question.get("chain"), question.get("constraints")
    if not isinstance(chain, list) or not chain or not all(isinstance(e, str) and e for e in chain):
        return [], set(), "question has no chain of entity ids"
    if not isinstance(constraints, list) or len(constraints) != len(chain) \
            or not all(isinstance(c, Mapping) for c in constraints):
        return [], set(), "question constraints do not match its chain"
    names: dict[str, set[str]] = {e: set() for e in chain}
    ids, mapping = question.get("entity_ids"), question.get("entity_mapping")
    if isinstance(ids, Mapping) and isinstance(mapping, Mapping):
        for slot, eid in ids.items():
            if eid in names and isinstance(mapping.get(slot), str):
                names[eid].add(mapping[slot])
    for text in [question.get("answer"), *(question.get("answer_aliases") or [])]:
        if isinstance(text, str):
            names[chain[-1]].add(text)
    hops, clue_values = [], set()
    for i, (eid, c) in enumerate(zip(chain, constraints)):
        rules = []
        link = c.get("link")
        if i > 0 and isinstance(link, Mapping) and isinstance(link.get("relation"), str):
            rules.append(Constraint(chain[i - 1], link["relation"], "out" if link.get("direction") == "fwd" else "in"))
        for clue in c.get("clues") or []:
            if not isinstance(clue, Mapping) or not isinstance(clue.get("value"), str):
                continue
            clue_values.add(clue["value"])
            if clue.get("kind") in ("fact", "fact_rev") and isinstance(clue.get("relation"), str):
                rules.append(Constraint(clue["value"], clue["relation"], "in" if clue["kind"] == "fact" else "out"))
        keys = tuple(sorted({k for n in names[eid] if (k := surface_key(n))}))
        hops.append(Hop(eid, i, keys, tuple(rules)))
    return hops, clue_values, None


# --------------------------------------------------------------------------- the conversation


@dataclass
class _Turn:
    index: int
    calls: list[tuple[str, dict[str, Any]]]
    think: str
    answer: str


def _arguments(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):
            return None
    return raw if isinstance(raw, dict) else None


def question_names(question: Any) -> dict[str, str]:
    """Surface key -> id of every entity the question record names (its chain and clue slots, the answer and
    its aliases): how the rule reads a name the agent passes to ``common`` (the tool said which entry it took
    whenever the name denotes several)."""
    out: dict[str, str] = {}
    if not isinstance(question, Mapping):
        return out
    ids, mapping = question.get("entity_ids"), question.get("entity_mapping")
    if isinstance(ids, Mapping) and isinstance(mapping, Mapping):
        for slot, eid in ids.items():
            if isinstance(eid, str) and isinstance(mapping.get(slot), str) and (key := surface_key(mapping[slot])):
                out.setdefault(key, eid)
    chain = question.get("chain")
    if isinstance(chain, list) and chain and isinstance(chain[-1], str):
        for text in [question.get("answer"), *(question.get("answer_aliases") or [])]:
            if isinstance(text, str) and (key := surface_key(text)):
                out.setdefault(key, chain[-1])
    return out


def _read_messages(messages: Any, names: Mapping[str, str] | None = None
                   ) -> tuple[list[_Turn], list[Observation], str | None]:
    """Assistant turns and parsed observations, or why the messages cannot be read (``names``: see
    :func:`question_names`)."""
    if not isinstance(messages, list) or not messages:
        return [], [], "messages missing or not a non-empty list"
    turns: list[_Turn] = []
    observations: list[Observation] = []
    pending: list[tuple[str, dict[str, Any]]] = []
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping):
            return [], [], f"message {k} is not an object"
        role, content = m.get("role"), m.get("content")
        if content is not None and not isinstance(content, str):
            return [], [], f"message {k} content is not text"
        if role == "assistant":
            raw_calls = m.get("tool_calls")
            parsed = parse_turn(content or "")
            calls: list[tuple[str, dict[str, Any]]] = []
            if raw_calls is None:
                calls = [(c["name"], c["arguments"]) for c in parsed.tool_calls]
            elif not isinstance(raw_calls, list):
                return [], [], f"message {k} tool_calls is not a list"
            for c in raw_calls or []:
                fn = c.get("function", c) if isinstance(c, Mapping) else None
                name = fn.get("name") if isinstance(fn, Mapping) else None
                args = _arguments(fn.get("arguments")) if isinstance(fn, Mapping) else None
                if not isinstance(name, str) or not name or args is None:
                    return [], [], f"message {k} has a tool call without a name or with unreadable arguments"
                calls.append((name, args))
            turns.append(_Turn(k, calls, parsed.think or "", parsed.answer or ""))
            pending = list(calls)
        elif role == "tool":
            name, args = pending.pop(0) if pending else ("unknown", {})
            tool = m.get("name") if isinstance(m.get("name"), str) and m.get("name") else name
            observations.append(_parse_cached(k, tool, content or "", _call_key(args), _names_key(names)))
    return turns, observations, None


def _call_key(arguments: Mapping[str, Any]) -> str:
    """The call's arguments as a hashable key (the parse cache's)."""
    try:
        return json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return "{}"


def _names_key(names: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((names or {}).items()))


@functools.lru_cache(maxsize=4096)
def _parse_cached(index: int, tool: str, text: str, arguments: str, names: tuple[tuple[str, str], ...]) -> Observation:
    """One parse per (position, tool, text, arguments, names): probing a growing conversation re-reads it often."""
    return parse_observation(index, tool, text, json.loads(arguments), dict(names))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _names(text: str, hop: Hop, *, by_name: bool = True) -> bool:
    """``text`` names the hop's entity: its id as a token, or (``by_name``) one of its names as the whole text.

    A name inside a longer text is not a commit: "Hypotonia" must not fire on "Axial hypotonia".
    """
    return hop.entity_id in _ID_TOKEN.findall(text) or (by_name and surface_key(text) in hop.keys)


def _commit_via(turn: _Turn, hop: Hop, thoughts: bool) -> str | None:
    for name, args in turn.calls:
        if any(_names(s, hop) for s in _strings(args)):
            return f"call:{name}"
    if turn.answer and _names(turn.answer, hop):
        return "answer"
    if thoughts and turn.think and _names(turn.think, hop, by_name=False):
        return "thought"
    return None


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Evidence:
    """Why a competitor is ruled out, structured; ``text`` is its wording in :attr:`Commit.ruled_out`.

    ``kind``: ``committed`` / ``clue`` (identity), ``list`` (a complete related / read list for one of
    the hop's constraints), ``intersection`` (a complete common), ``own_entry`` (the competitor's own
    list), ``diagnose`` (its diagnose line). ``at``: message index of the observation; ``anchors``,
    ``relation``, ``side``: the list (for ``own_entry`` / ``diagnose``: the constraint's anchor);
    ``items``: the list's items.
    """

    kind: str
    text: str
    at: int | None = None
    tool: str | None = None
    anchors: tuple[str, ...] = ()
    relation: str | None = None
    side: str | None = None
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Commit:
    """One commit and the verdict of the rule on it."""

    entity_id: str
    hop: int                          # position of the entity in the chain (0 = the first)
    turn: int                         # message index of the committing assistant turn
    via: str                          # "call:<tool>", "answer" or "thought"
    introduced_by: str | None         # tool whose observation introduced the entity (None: never shown)
    introduced_at: int | None         # its message index
    grounded: bool
    reason: str                       # sole_candidate | competitors_ruled_out | competitors_unresolved | never_shown
    competitors: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()  # competitors left standing ("+N unseen" for a truncated list's rest)
    ruled_out: tuple[tuple[str, str], ...] = ()  # (competitor, evidence)
    evidence: tuple[tuple[str, Evidence], ...] = ()  # the same evidence, structured (competitor, why)
    rest: Evidence | None = None      # the bounding list that rules out a truncated introducing list's rest


@dataclass
class TrajectoryReport:
    """Every commit of one trajectory, or why the row could not be checked."""

    question_id: str | None
    variant: int | None = None
    hops: int | None = None
    commits: list[Commit] = field(default_factory=list)
    uncommitted: tuple[str, ...] = ()  # chain entities the agent never named
    malformed: str | None = None

    @property
    def grounded(self) -> bool:
        return self.malformed is None and bool(self.commits) and all(c.grounded for c in self.commits)


def _bounds(lst: Listing, hop: Hop) -> bool:
    """``lst`` holds every entity that satisfies one of the hop's constraints (a complete related / read list
    for it) or all of several of them (a complete common over their anchors): what it lacks fails the hop."""
    if not lst.complete:
        return False
    if lst.tool == "common":
        relations = (lst.relation or "").split(",")
        if len(relations) == 1:
            relations *= len(lst.anchors)
        held = {(r.anchor, r.relation) for r in hop.constraints}
        return bool(lst.anchors) and len(relations) == len(lst.anchors) and all(
            pair in held for pair in zip(lst.anchors, relations))
    return lst.tool in TOOLS_WITH_SIDES and any(
        lst.anchors == (r.anchor,) and lst.relation == r.relation and lst.side == r.side for r in hop.constraints)


def _evidence(c: str, hop: Hop, before: list[Observation], known: set[str], clue_values: set[str]
              ) -> Evidence | None:
    """Why competitor ``c`` cannot be the hop's entity, from ``before`` (None: nothing rules it out)."""
    if c in known:
        return Evidence("committed", "an entity committed earlier in the chain")
    if c in clue_values:
        return Evidence("clue", "named in the question as a clue")
    for obs in before:
        for lst in obs.listings:
            if c not in lst.items and _bounds(lst, hop):
                side = f", {lst.side}" if lst.side else ""
                return Evidence("intersection" if lst.tool == "common" else "list",
                                f"complete {lst.tool}({', '.join(lst.anchors)}, {lst.relation}{side}) lacks it "
                                f"(msg {obs.index})", obs.index, lst.tool, lst.anchors, lst.relation, lst.side, lst.items)
            if lst.tool in TOOLS_WITH_SIDES and lst.anchors == (c,) and lst.complete:
                for r in hop.constraints:
                    if lst.relation == r.relation and lst.side == _OTHER_SIDE[r.side] and r.anchor not in lst.items:
                        return Evidence("own_entry", f"its own {lst.relation} list lacks {r.anchor} (msg {obs.index})",
                                        obs.index, lst.tool, (r.anchor,), r.relation, lst.side, lst.items)
        for r in hop.constraints:
            if c in obs.matched and r.relation == "has_phenotype" and r.side == "in" and r.anchor in obs.query \
                    and obs.query[r.anchor] not in obs.matched[c]:
                return Evidence("diagnose", f"its diagnose line lacks {r.anchor} (msg {obs.index})", obs.index,
                                "diagnose", (r.anchor,), r.relation, r.side)
    return None


def _rest_ruled_out(hop: Hop, shown: set[str], kind: str, before: list[Observation]) -> Evidence | None:
    """The unseen rest of a truncated list fails the hop: a bounding list shows nothing of ``kind`` beyond ``shown``."""
    for obs in before:
        for lst in obs.listings:
            if _bounds(lst, hop) and all(id_kind(x) != kind or x in shown for x in lst.items):
                return Evidence("intersection" if lst.tool == "common" else "list",
                                f"complete {lst.tool}({', '.join(lst.anchors)}, {lst.relation}) shows no other "
                                f"(msg {obs.index})", obs.index, lst.tool, lst.anchors, lst.relation, lst.side,
                                lst.items)
    return None


def _wrote_id(turn: _Turn, hop: Hop) -> bool:
    texts = [turn.think, turn.answer, *(x for _, a in turn.calls for x in _strings(a))]
    return any(hop.entity_id in _ID_TOKEN.findall(t) for t in texts)


def _judge(hop: Hop, turn: _Turn, via: str, since: int, observations: list[Observation], known: set[str],
           clue_values: set[str]) -> Commit:
    """The rule on one commit: ``since`` is the previous commit's turn, ``known`` the entities committed before."""
    before = [o for o in observations if o.index < turn.index]
    showing = [o for o in before if hop.entity_id in o.ids]
    if not showing and not _wrote_id(turn, hop):  # written by name: the name must have been shown
        showing = [o for o in before if o.shows_name(hop.keys)]
    if not showing:
        return Commit(hop.entity_id, hop.position, turn.index, via, None, None, False, "never_shown")
    fresh = [o for o in showing if o.index > since]
    intro = fresh[0] if fresh else showing[-1]
    lists = [lst for lst in intro.listings if hop.entity_id in lst.items]
    kind = id_kind(hop.entity_id)
    competitors = list(dict.fromkeys(x for lst in lists for x in lst.items
                                     if x != hop.entity_id and id_kind(x) == kind))
    ruled, unresolved = [], []
    for c in competitors:
        if (why := _evidence(c, hop, before, known, clue_values)) is None:
            unresolved.append(c)
        else:
            ruled.append((c, why))
    hidden = sum(lst.hidden for lst in lists)
    rest = None
    if hidden:
        rest = _rest_ruled_out(hop, {x for lst in lists for x in lst.items}, kind, before)
        if rest is None:
            unresolved.append(f"+{hidden} unseen")
    reason = ("competitors_unresolved" if unresolved else "competitors_ruled_out" if competitors
              else "sole_candidate")
    return Commit(hop.entity_id, hop.position, turn.index, via, intro.tool, intro.index, not unresolved, reason,
                  tuple(competitors), tuple(unresolved), tuple((c, e.text) for c, e in ruled), tuple(ruled), rest)


def check_trajectory(messages: Any, question: Any, *, thoughts: bool = True) -> TrajectoryReport:
    """The rule of the module docstring on one trajectory; never raises (bad rows are ``malformed``).

    ``messages``: the chat messages; ``question``: its record (``chain``, ``constraints``, and for
    names ``entity_ids`` / ``entity_mapping`` / ``answer``). ``thoughts=False`` counts commits in
    calls and answers only.
    """
    qid = question.get("id") or question.get("question_id") if isinstance(question, Mapping) else None
    report = TrajectoryReport(None if qid is None else str(qid))
    try:
        hops, clue_values, problem = _hops(question)
        if problem is None:
            report.hops = len(hops) - 1
            turns, observations, problem = _read_messages(messages, question_names(question))
        if problem is not None:
            report.malformed = problem
            return report
        committed: dict[str, int] = {}
        for turn in turns:
            for hop in hops:
                if hop.entity_id in committed or (via := _commit_via(turn, hop, thoughts)) is None:
                    continue
                since = max((t for t in committed.values() if t < turn.index), default=-1)
                report.commits.append(_judge(hop, turn, via, since, observations, set(committed), clue_values))
                committed[hop.entity_id] = turn.index
        report.uncommitted = tuple(h.entity_id for h in hops if h.entity_id not in committed)
    except Exception as e:  # noqa: BLE001 - a checker over logs must report, not stop
        report.commits, report.malformed = [], f"checker failure: {type(e).__name__}: {e}"
    return report


def question_hops(question: Any) -> list[Hop]:
    """The hops of a question record as the rule reads them (each entity's constraints); [] if unusable."""
    hops, _, problem = _hops(question)
    return [] if problem is not None else hops


def probe_commit(messages: Any, question: Any, entity_id: str) -> Commit | None:
    """The verdict of the rule if the agent committed to ``entity_id`` in its next turn, after ``messages``.

    A commit already made in ``messages`` is returned as judged there. None when the row or the
    question is malformed or ``entity_id`` is not one of the question's chain entities. Never raises.
    For a synthesiser: ``unresolved`` lists the competitors that something must still rule out.
    """
    probe = {"role": "assistant", "content": f"<think>{entity_id}</think>"}
    report = check_trajectory([*messages, probe] if isinstance(messages, list) else messages, question)
    if report.malformed is not None:
        return None
    return next((c for c in report.commits if c.entity_id == entity_id), None)


# --------------------------------------------------------------------------- logs and aggregates


def check_rows(rows: Iterable[Any], questions: Iterable[Mapping[str, Any]], *,
               thoughts: bool = True) -> list[TrajectoryReport]:
    """One report per trajectory row (``question_id``, ``variant``, ``messages``), matched to its question by id."""
    by_id = {str(q.get("id") or q.get("question_id")): q for q in questions
             if isinstance(q, Mapping) and (q.get("id") or q.get("question_id"))}
    reports = []
    for row in rows:
        if not isinstance(row, Mapping):
            reports.append(TrajectoryReport(None, malformed="row is not an object"))
            continue
        qid = row.get("question_id")
        question = by_id.get(str(qid)) if qid is not None else None
        if question is None:
            report = TrajectoryReport(None if qid is None else str(qid), malformed="no question record for this row")
        else:
            report = check_trajectory(row.get("messages"), question, thoughts=thoughts)
        variant = row.get("variant")
        report.variant = variant if isinstance(variant, int) else None
        reports.append(report)
    return reports


def commit_frame(reports: Iterable[TrajectoryReport]) -> pd.DataFrame:
    """One row per commit of the well-formed reports, with its trajectory's ids and hop count."""
    rows = []
    for t, r in enumerate(reports):
        if r.malformed is not None:
            continue
        for c in r.commits:
            rows.append({"trajectory": t, "question_id": r.question_id, "variant": r.variant, "hops": r.hops,
                         "hop": c.hop, "final": c.hop == r.hops, "entity_id": c.entity_id, "via": c.via,
                         "introduced_by": c.introduced_by or "(never shown)", "grounded": c.grounded,
                         "reason": c.reason, "n_competitors": len(c.competitors), "n_unresolved": len(c.unresolved)})
    columns = ["trajectory", "question_id", "variant", "hops", "hop", "final", "entity_id", "via", "introduced_by",
               "grounded", "reason", "n_competitors", "n_unresolved"]
    return pd.DataFrame(rows, columns=columns)


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def summarise(reports: Sequence[TrajectoryReport]) -> dict[str, Any]:
    """Grounded shares of commits and trajectories, overall, by introducing tool and by hop count.

    ``by_tool`` (index: the tool whose observation introduced the entity): commits, their share of
    all commits, grounded rate, share of all ungrounded commits. ``by_hops`` (index: the question's
    hop count): trajectories, commits, grounded commit and trajectory rates. ``by_position``
    (index: the entity's place in the chain): commits and grounded rate.
    """
    reports = list(reports)
    ok = [r for r in reports if r.malformed is None]
    frame = commit_frame(reports)
    n, good = len(frame), int(frame["grounded"].sum()) if len(frame) else 0
    bad = n - good
    by_tool = frame.groupby("introduced_by").agg(commits=("grounded", "size"), grounded=("grounded", "sum"))
    by_tool["share_of_commits"] = (by_tool["commits"] / max(n, 1)).round(4)
    by_tool["grounded_rate"] = (by_tool["grounded"] / by_tool["commits"]).round(4)
    by_tool["share_of_ungrounded"] = ((by_tool["commits"] - by_tool["grounded"]) / max(bad, 1)).round(4)
    traj = pd.DataFrame({"hops": [r.hops for r in ok], "grounded": [r.grounded for r in ok]})
    by_hops = traj.groupby("hops").agg(trajectories=("grounded", "size"), grounded_trajectories=("grounded", "sum"))
    by_hops["grounded_trajectory_rate"] = (by_hops["grounded_trajectories"] / by_hops["trajectories"]).round(4)
    per_hops = frame.groupby("hops").agg(commits=("grounded", "size"), grounded_commits=("grounded", "sum"))
    by_hops = by_hops.join(per_hops, how="left").fillna(0)
    by_hops["grounded_commit_rate"] = (by_hops["grounded_commits"] / by_hops["commits"].where(by_hops["commits"] > 0)
                                       ).round(4)
    by_position = frame.groupby("hop").agg(commits=("grounded", "size"), grounded=("grounded", "sum"))
    by_position["grounded_rate"] = (by_position["grounded"] / by_position["commits"]).round(4)
    final = frame[frame["final"]] if n else frame
    return {"trajectories": len(reports), "malformed": len(reports) - len(ok),
            "malformed_reasons": dict(Counter(r.malformed for r in reports if r.malformed).most_common()),
            "commits": n, "grounded_commits": good, "grounded_commit_rate": _rate(good, n),
            "grounded_trajectories": sum(r.grounded for r in ok),
            "grounded_trajectory_rate": _rate(sum(r.grounded for r in ok), len(ok)),
            "final_commit_grounded_rate": _rate(int(final["grounded"].sum()), len(final)),
            "never_shown_commits": int((frame["reason"] == "never_shown").sum()) if n else 0,
            "uncommitted_entities": sum(len(r.uncommitted) for r in ok),
            "commits_by_via": dict(Counter(frame["via"]).most_common()),
            "by_tool": by_tool, "by_hops": by_hops, "by_position": by_position}


def summary_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`summarise`'s result as strict JSON: each table a list of rows, missing rates ``None``."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, pd.DataFrame):
            table = value.reset_index().astype(object)
            out[key] = table.where(pd.notna(table), None).to_dict(orient="records")
        else:
            out[key] = value
    return out
