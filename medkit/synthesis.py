"""Knowledge-informed trajectory synthesis: walk a question's KG chain with real tool calls.

Scope: for one question record (from notebook 03) build a ReAct trajectory that an expert
with the kit's tools would produce — identify the first entity of the chain from its clues,
follow every hop with a tool that exposes that relation, rule out every competitor before
naming the entity, answer. Every call is executed for real against
:class:`medkit.tools.MedicalToolbox`; nothing is invented.

Every pick is grounded (:mod:`medkit.grounding`): after the observation that shows a hop's
entity, the synthesiser asks the grounding rule which of the other candidates of that
observation nothing visible rules out yet, and adds the discriminating calls a careful expert
would make — an intersection (``common`` over the previous entity and the clue anchors, one
relation per anchor when they differ), the complete list of a clue (``related`` on the clue), or
a remaining competitor's own entry (``related(competitor, relation)`` lacking the clue) — chosen
greedily among real executed calls: most competitors ruled out first, then the shortest observation.
A ``diagnose`` ranking is restricted to the class clue and never trusted at a tie or below
rank 1 without such calls; a pick at the last shown rank (ties may hide below it), or one while a
disease annotated with every query phenotype ranks below the shown lines, is not used.
When nothing resolves the competitors the trajectory is rejected (``ungrounded:<hop>``), never
kept as a guess; a hop that no action finds rejects it too (``hop_not_found:<hop>``).

Thoughts are composed from what is visible at that point only: the question's clues and the
entities already seen in observations (never a later chain entity, never the masked path).
Each one is terse: what is needed next ("Next I need a clinical feature of it.") and, when it names a
hop's entity, the evidence that decides it ("X is the only disorder they share", "Y lacks P"); the
call that follows shows the action, so no sentence restates it (a check says what it must show).
Checks name competitors by name, never by id, so the entity is named (committed) only once
the evidence is in; a call that must name a clue by id (its name denotes several entries) comes
after a ``lookup`` that shows that id, so no call uses an id the conversation has not shown.
Preference order of finding actions per hop:

* a disease described by phenotypes -> ``diagnose`` (Bayesian ranking over HPO annotations);
* the previous entity and the clue anchors -> ``common`` (an intersection, one relation per anchor);
* a relation the KB exposes -> ``related(previous entity, relation)``;
* a drug <-> disease definition mention -> ``read`` (forward) or ``search`` (reverse);
* the most selective clue -> ``related(clue, relation)``; finally a keyword ``search``.

The preferred action is taken when it finds the entity and can be grounded with at most
``PREFERRED_CHECKS`` checks; otherwise (and when it misses: the miss stays in the trajectory, a
real observation) the finding action whose grounded plan is shortest (fewest calls, then fewest
characters) is taken. The last entity gets a
confirming check of a clue only when no observation of its hop showed one: the discriminating
calls are the verification (they rule out the competitors, not only confirm the pick).
An odd ``variant`` gives another trajectory for the same question: it identifies the start entity
with the cheapest grounded plan whose finding call differs from the even variant's (say, an
intersection of the clues instead of a ``diagnose`` ranking) or, when there is no other way in,
with a keyword ``search`` first (its miss kept), so a question can contribute two distinct samples.

``grounded=False`` is the ablation of all this (``bench/ablation_sft_data.py``'s ``ungrounded`` variant): each
hop's entity is named right after the finding call that shows it, with no checks, even when that
observation lists competitors nothing visible rules out (a guess that the thought presents as a pick),
and a ``diagnose`` pick at a possible tie is taken too. Everything else (the finding actions, the
thoughts, the confirming check of the answer) is the same, so the two differ only in grounding.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import grounding as G
from .agent import SYSTEM_PROMPT, is_tool_error
from .ner import surface_key
from .questions import TYPE_NOUN, QuestionIndex, Variable, clue_phrase, contains_words, variables_from_record
from .tools import DIAGNOSE_K

SYNTHESIS_VERSION = 9  # bump when trajectories change (actions, thoughts, prompt): stale rows are redone
MAX_CHECKS = 4      # discriminating calls per hop at most
PREFERRED_CHECKS = 1  # the preferred finding call is kept when it needs at most this many checks
OWN_ENTRY_MAX = 4   # competitors checked one by one (their own entries) at most
LIST_CAP = 25       # related / common show this many items per list (a longer list never rules anything out)
NAMES_SHOWN = 4     # competitors named in a thought before "and N others"

LINK_PHRASE = {
    ("has_phenotype", "fwd"): "a clinical feature of {p}",
    ("has_phenotype", "rev"): "a {n} that presents with {p}",
    ("associated_with", "fwd"): "a {n} associated with {p}",
    ("associated_with", "rev"): "a {n} associated with {p}",
    ("is_a", "fwd"): "the broader class that {p} belongs to",
    ("is_a", "rev"): "a subtype of {p}",
    ("definition_mentions", "fwd"): "a {n} mentioned in the reference definition of {p}",
    ("definition_mentions", "rev"): "a {n} whose reference definition mentions {p}",
}


@dataclass
class Action:
    name: str
    arguments: dict[str, Any]
    plan: str            # why this call, for the thought before it
    kind: str            # diagnose | common | related | clue | read | search | check | lookup | verify


@dataclass
class Step:
    action: Action
    observation: str
    target: str | None   # entity this call was meant to find (None for verification)
    found: bool
    thought: str = ""


@dataclass
class Synthesised:
    question_id: str
    variant: int
    messages: list[dict[str, Any]]
    steps: list[Step] = field(default_factory=list)
    failure: str | None = None  # hop_not_found:<i>, ungrounded:<i> or None
    hops_found: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"question_id": self.question_id, "variant": self.variant, "messages": self.messages,
                "hops_found": self.hops_found, "synthesis_failure": self.failure,
                "n_tool_calls": len(self.steps),
                "calls": [{"name": s.action.name, "kind": s.action.kind, "found": s.found} for s in self.steps]}


# --------------------------------------------------------------------------- helpers


def name_of(index: QuestionIndex, eid: str) -> str:
    return str(index.name.get(eid, eid))


def noun(index: QuestionIndex, eid_or_type: str) -> str:
    t = index.type.get(eid_or_type, eid_or_type)
    return TYPE_NOUN.get(t, "entity")


def mentions(index: QuestionIndex, observation: str, eid: str, *, by_name: bool) -> bool:
    """The entity's id is in the observation (as a token: NCBIGene:12 is not in NCBIGene:123), or, with
    ``by_name``, its name as whole words."""
    if shows_id(observation, eid):
        return True
    if by_name:
        obs = surface_key(observation)
        keys = {surface_key(n) for n in (name_of(index, eid), *index.synonyms.get(eid, []))}
        return any(len(k) >= 5 and contains_words(obs, k) for k in keys)
    return False


_ID = re.compile(r"(?<![A-Za-z0-9_:])([A-Za-z][A-Za-z0-9_]*:[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?)")


def shows_id(observation: str, eid: str) -> bool:
    """``eid`` appears in ``observation`` as a whole id token."""
    return re.search(rf"(?<![A-Za-z0-9_:]){re.escape(eid)}(?![A-Za-z0-9_])", observation) is not None


@dataclass(frozen=True)
class ToolView:
    """What the synthesiser needs to know about the toolbox: its relations and its name index."""

    relations: frozenset[str]
    resolve: Callable[[str], list[str]]

    @classmethod
    def of(cls, toolbox: Any) -> ToolView:
        return cls(frozenset(getattr(toolbox, "relation_names", ())), toolbox.resolve_ids)

    def ref(self, index: QuestionIndex, eid: str) -> str:
        """How the agent names ``eid`` in a call: by name when the name resolves to it, else by id."""
        name = name_of(index, eid)
        ids = self.resolve(name)
        return name if ids and ids[0] == eid else eid


def _selective_clues(index: QuestionIndex, var: Variable, view: ToolView) -> list[dict[str, Any]]:
    """Fact clues the toolbox can look up, most selective (fewest holders) first."""
    usable = [c for c in var.clues if c["kind"] in ("fact", "fact_rev") and c["relation"] in view.relations]
    return sorted(usable, key=lambda c: (len(index.holders(c)), c["value"]))


def _phenotype_names(index: QuestionIndex, var: Variable) -> list[str]:
    return [name_of(index, c["value"]) for c in var.clues
            if c["kind"] == "fact" and c["relation"] == "has_phenotype"]


def _class_clue(index: QuestionIndex, var: Variable) -> str | None:
    """Id of the disease class the entity is directly classified under (an is_a fact clue), if any."""
    for c in var.clues:
        if c["kind"] == "fact" and c["relation"] == "is_a" and index.type.get(c["value"]) == "disease":
            return c["value"]
    return None


def _diagnose_action(index: QuestionIndex, view: ToolView, phenotypes: list[str], var: Variable,
                     prev: str | None = None) -> Action:
    """A ``diagnose`` call at the tool's default k, restricted to the class clue (or, for a subtype of the
    previous disorder, to it) when there is one."""
    args: dict[str, Any] = {"phenotypes": phenotypes}
    within = _class_clue(index, var)
    if within is None and prev is not None and var.link == {"relation": "is_a", "direction": "rev"} \
            and index.type.get(prev) == "disease":  # a subtype of the previous disorder
        within = prev
    if within:
        args["within"] = view.ref(index, within)
    return Action("diagnose", args, "", "diagnose")


def _clue_words(index: QuestionIndex, var: Variable) -> list[str]:
    return [name_of(index, c["value"]) for c in var.clues if c["kind"] in ("fact", "fact_rev", "under")]


def describe(index: QuestionIndex, var: Variable, rng: random.Random) -> str:
    n = noun(index, var.type)
    if not var.clues:
        return f"a {n}"
    return f"a {n} that " + " and ".join(clue_phrase(index, var.entity_id, c, rng) for c in var.clues)


def _clue_action(index: QuestionIndex, var: Variable, view: ToolView) -> Action | None:
    clues = _selective_clues(index, var, view)
    if not clues:
        return None
    c = clues[0]
    cname = name_of(index, c["value"])
    # fact: owner -rel-> value, so the owner is an incoming neighbour of the value; fact_rev: outgoing
    side = "in" if c["kind"] == "fact" else "out"
    return Action("related", {"entity_id": view.ref(index, c["value"]), "relation": c["relation"],
                              "direction": side},
                  "", "clue")


def _search_action(index: QuestionIndex, var: Variable, extra: list[str]) -> Action | None:
    words = [*extra, *_clue_words(index, var)]
    if not words:
        return None
    query = " ".join(words)[:300]
    return Action("search", {"query": query}, "", "search")


def _and(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _plural(n: str) -> str:
    return n + ("es" if n.endswith("s") else "s")


def _pairs_phrase(index: QuestionIndex, pairs: list[tuple[str, str]], it: str | None = None) -> str:
    """"A and B through r", or "A (r1) and B (r2)" when the relations differ; ``it`` (the entity a thought has
    just named) is written "it"."""
    def name(a: str) -> str:
        return "it" if a == it else name_of(index, a)

    if len({r for _, r in pairs}) == 1:
        return f"{_and([name(a) for a, _ in pairs])} through {pairs[0][1]}"
    return _and([f"{name(a)} ({r})" for a, r in pairs])


def _common_action(index: QuestionIndex, view: ToolView, pairs: list[tuple[str, str]], n: str,
                   prev: str | None = None, kind: str = "common", it: str | None = None) -> Action | None:
    """An intersection over 2-10 (anchor id, relation) pairs; the previous chain entity ``prev`` is written by id,
    and the thought calls ``it`` (the entity it has just named) "it"."""
    pairs = [p for p in dict.fromkeys(pairs) if p[1] in view.relations][:10]
    if len(pairs) < 2 or len({a for a, _ in pairs}) < len(pairs):
        return None
    relations = [r for _, r in pairs]
    return Action("common", {"entity_ids": [a if a == prev else view.ref(index, a) for a, _ in pairs],
                             "relation": relations[0] if len(set(relations)) == 1 else ",".join(relations)},
                  "", kind)


def _clue_pairs(var: Variable) -> list[tuple[str, str]]:
    return [(c["value"], c["relation"]) for c in var.clues if c["kind"] in ("fact", "fact_rev")]


def _start_common(index: QuestionIndex, var: Variable, view: ToolView) -> Action | None:
    """An intersection of the first entity's clue anchors."""
    return _common_action(index, view, _clue_pairs(var), noun(index, var.type))


def start_actions(index: QuestionIndex, var: Variable, view: ToolView, *,
                  search_first: bool = False) -> list[Action]:
    """Ways to identify the first entity of the chain from its clues, preferred first."""
    actions: list[Action] = []
    phenos = _phenotype_names(index, var)
    if var.type == "disease" and phenos:
        actions.append(_diagnose_action(index, view, phenos, var))
    if (a := _start_common(index, var, view)) is not None:
        actions.append(a)
    if (a := _clue_action(index, var, view)) is not None:
        actions.append(a)
    if (a := _search_action(index, var, [])) is not None:
        actions.insert(0, a) if search_first else actions.append(a)
    return actions


def hop_actions(index: QuestionIndex, prev: str, var: Variable, view: ToolView) -> list[Action]:
    """Ways to go from the known entity ``prev`` to the next chain entity ``var``, preferred first."""
    rel, direction = var.link["relation"], var.link["direction"]
    pname = name_of(index, prev)  # thoughts call it "it": the thought before has just named it
    n = noun(index, var.type)
    actions: list[Action] = []
    phenos = _phenotype_names(index, var)
    via_phenotype = rel == "has_phenotype" and direction == "rev" and index.type.get(prev) == "phenotype"
    if var.type == "disease" and (via_phenotype or phenos):
        query = ([prev] if via_phenotype else []) + phenos
        actions.append(_diagnose_action(index, view, query, var, prev=prev))
    if (a := _common_action(index, view, [(prev, rel), *_clue_pairs(var)], n, prev, it=prev)) is not None:
        actions.append(a)
    if rel in view.relations:
        actions.append(Action("related", {"entity_id": prev, "relation": rel,
                                          "direction": "out" if direction == "fwd" else "in"},
                              "", "related"))
    elif rel == "definition_mentions" and direction == "fwd":
        actions.append(Action("read", {"entity_id": prev},
                              "", "read"))
    elif rel == "definition_mentions":
        actions.append(Action("search", {"query": pname}, "", "search"))
    if (a := _clue_action(index, var, view)) is not None:
        actions.append(a)
    if (a := _search_action(index, var, [pname])) is not None and all(x.arguments != a.arguments for x in actions):
        actions.append(a)
    return actions


def verify_actions(index: QuestionIndex, prev: str | None, var: Variable,
                   view: ToolView) -> list[tuple[Action, str]]:
    """Checks of the final candidate: (action, evidence id that must appear in its observation)."""
    tname = name_of(index, var.entity_id)
    out: list[tuple[Action, str]] = []
    for c in _selective_clues(index, var, view):
        out.append((Action("related", {"entity_id": var.entity_id, "relation": c["relation"],
                                       "direction": "out" if c["kind"] == "fact" else "in"},
                           f"To verify: {tname} {clue_phrase(index, var.entity_id, c, random.Random(0))}.",
                           "verify"), c["value"]))
    if prev is not None and var.link and var.link["relation"] in view.relations:
        out.append((Action("related", {"entity_id": var.entity_id, "relation": var.link["relation"],
                                       "direction": "in" if var.link["direction"] == "fwd" else "out"},
                           f"To verify: the {var.link['relation']} link between {tname} and "
                           f"{name_of(index, prev)}, from the other side.", "verify"), prev))
    if prev is not None:
        out.append((Action("read", {"entity_id": var.entity_id},
                           f"To verify: the entry of {tname}.", "verify"), prev))
    return out


def _rank_phrase(observation: str, eid: str) -> str:
    for line in observation.splitlines():
        if (m := G.DIAGNOSE_LINE.match(line)) is not None and m.group(2) == eid:
            return f"ranks #{m.group(1)} with {m.group(4)}/{m.group(5)} matched"
    return "is among the candidates"


def _ranked_lines(observation: str) -> list[tuple[str, str, str]]:
    """(line, tie key, disease id) of each ranked line of a diagnose output; equal keys are tied (the shared
    rank; before v5 the score and matched count)."""
    return [(line, f"{m.group(3)} {m.group(4)}/{m.group(5)}" if m.group(3) else f"#{m.group(1)}", m.group(2))
            for line in observation.splitlines() if (m := G.DIAGNOSE_LINE.match(line)) is not None]


def at_last_rank(observation: str, eid: str, k: int = DIAGNOSE_K) -> bool:
    """``eid`` ties with (or is) the last of ``k`` shown diagnose lines: diseases below rank k may tie with it."""
    lines = _ranked_lines(observation)
    mine = next((score for _, score, did in lines if did == eid), None)
    return len(lines) >= k and mine is not None and mine == lines[-1][1]


def hides_full_match(index: QuestionIndex, view: ToolView, action: Action, observation: str) -> bool:
    """A disease annotated with every query phenotype (within the scope) ranks below the shown lines.

    The ranking is by likelihood, so such a disease (low frequencies) can sit below a partial match: the
    shown lines then do not cover every candidate, whatever the rule says about ranks below k.
    """
    given = action.arguments.get("phenotypes") if isinstance(action.arguments, dict) else None
    phenos = [h for p in (given if isinstance(given, list) else [])
              if (h := next((x for x in ([p] if p in index.type else view.resolve(p))
                             if index.type.get(x) == "phenotype"), None))]
    full: set[str] | None = None
    for h in phenos:
        holders = index.inc.get((h, "has_phenotype"), set())
        full = set(holders) if full is None else full & holders
    within = action.arguments.get("within") if isinstance(action.arguments, dict) else None
    if full and isinstance(within, str) and within.strip():
        ids = [x for x in view.resolve(within) if x in index.type] or [within.strip()]
        full &= index.below(ids[0])
    shown = {did for _, _, did in _ranked_lines(observation)}
    return bool((full or set()) - shown)


# --------------------------------------------------------------------------- evidence, in words


def _names(index: QuestionIndex, ids: list[str]) -> str:
    names = [name_of(index, x) for x in ids]
    if len(names) > NAMES_SHOWN + 1:
        return ", ".join(names[:NAMES_SHOWN]) + f" and {len(names) - NAMES_SHOWN} others"
    return _and(names)


def _common_pairs(anchors: tuple[str, ...], relation: str | None) -> list[tuple[str, str]]:
    relations = (relation or "").split(",")
    return list(zip(anchors, relations * len(anchors) if len(relations) == 1 else relations))


def _list_phrase(index: QuestionIndex, tool: str | None, anchors: tuple[str, ...], relation: str | None,
                 side: str | None) -> str:
    if tool == "common":
        return f"the neighbours shared by {_pairs_phrase(index, _common_pairs(anchors, relation))}"
    anchor = name_of(index, anchors[0]) if anchors else "?"
    return f"what links to {anchor} by {relation}" if side == "in" else f"the {relation} links of {anchor}"


def evidence_phrase(index: QuestionIndex, commit: G.Commit, intro: str | None = None) -> str:
    """Why the committed entity is the one, from the rule's evidence (names only what was shown or asked)."""
    eid = commit.entity_id
    label = name_of(index, eid)  # its id is in the observation just shown
    n = noun(index, eid)
    groups: dict[tuple[Any, ...], list[str]] = {}
    kinds: dict[tuple[Any, ...], G.Evidence] = {}
    for c, ev in commit.evidence:
        key = (ev.kind, ev.at, ev.tool, ev.anchors, ev.relation, ev.side)
        groups.setdefault(key, []).append(c)
        kinds[key] = ev
    parts = []
    for key, comps in groups.items():
        ev, who, one = kinds[key], _names(index, comps), len(comps) == 1
        be = "is" if one else "are"
        if ev.kind == "committed":
            parts.append(f"{who} {be} already part of the chain")
        elif ev.kind == "clue":
            parts.append(f"{who} {be} named in the question itself")
        elif ev.kind == "intersection" and [x for x in ev.items if G.id_kind(x) == G.id_kind(eid)] == [eid]:
            parts.append(f"intersecting {_pairs_phrase(index, _common_pairs(ev.anchors, ev.relation))} "
                         f"leaves only {name_of(index, eid)}")
        elif ev.kind in ("intersection", "list"):
            parts.append(f"{who} {be} not among {_list_phrase(index, ev.tool, ev.anchors, ev.relation, ev.side)}")
        elif ev.kind == "own_entry":
            # what the check showed: the competitor's own links of one direction, so say "listed", not "has no"
            parts.append(f"the {ev.relation} links listed for {who} do not include {name_of(index, ev.anchors[0])}")
        elif ev.kind == "diagnose" and len(groups) == 1 and commit.introduced_by == "diagnose":
            parts.append(f"the {'other' if one else 'others'} {'lacks' if one else 'lack'} "  # all shown above
                         f"{name_of(index, ev.anchors[0])}")
        elif ev.kind == "diagnose":
            parts.append(f"{who} {'lacks' if one else 'lack'} {name_of(index, ev.anchors[0])}")
    if commit.rest is not None:
        r = commit.rest
        parts.append(f"{_list_phrase(index, r.tool, r.anchors, r.relation, r.side)} show no other {n}")
    if commit.introduced_by == "diagnose" and intro is not None:
        head = f"{label} {_rank_phrase(intro, eid)}"
        return head + ("; " + "; ".join(parts) if parts else "") + "."
    where = {"common": "they share", "related": "listed", "read": "the entry names", "search": "among the hits",
             "lookup": "that matches"}.get(commit.introduced_by or "")
    if not parts:
        return f"{label} is the only {n} {where or 'shown'}."
    head = f"of the {_plural(n)} {where}, {label} is the one" if where else f"{label} is the {n} I need"
    return head + ": " + "; ".join(parts) + "."


# --------------------------------------------------------------------------- grounding each hop


def _key(action: Action) -> str:
    return repr((action.name, sorted(action.arguments.items())))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


@dataclass
class _Draft:
    """A call considered for the trajectory, already executed."""

    action: Action
    observation: str
    key: str
    found: bool                          # the hop's entity id is in the observation
    thought: str = ""
    role: str = "find"                   # find (the finding call, a miss before it) | check
    open_before: tuple[str, ...] = ()    # (checks) competitors unresolved before this call
    resolved: tuple[str, ...] = ()       # (checks) the ones it ruled out
    resolves: tuple[str, str] | None = None  # (lookups) the name and the id it showed (with its type if needed)


@dataclass
class _Plan:
    drafts: list[_Draft]
    commit: G.Commit                     # the rule's verdict after the finding call(s) and the checks: grounded

    @property
    def cost(self) -> tuple[int, int]:
        return len(self.drafts), sum(len(d.observation) for d in self.drafts)


class _Planner:
    """Grounds one hop at a time: asks the rule what is still open, adds the calls that settle the pick."""

    def __init__(self, record: dict[str, Any], index: QuestionIndex, toolbox: Any, view: ToolView,
                 messages: list[dict[str, Any]], *, grounded: bool = True) -> None:
        self.record, self.index, self.toolbox, self.view, self.messages = record, index, toolbox, view, messages
        self.grounded = grounded  # False: the finding call(s) alone name the entity (the ablation)
        self.hops = G.question_hops(record)
        self.cache: dict[str, str] = {}
        self.seen: set[str] = set()

    def run(self, action: Action, eid: str) -> _Draft:
        key = _key(action)
        if key not in self.cache:
            self.cache[key] = self.toolbox.call(action.name, action.arguments)
        obs = self.cache[key]
        return _Draft(action, obs, key, not is_tool_error(obs) and shows_id(obs, eid))

    def conversation(self, drafts: list[_Draft]) -> list[dict[str, Any]]:
        out = list(self.messages)
        for d in drafts:
            out.append(_call_message(d.thought or "I will check.", d.action))
            out.append({"role": "tool", "name": d.action.name, "content": d.observation})
        return out

    def with_lookups(self, draft: _Draft, before: list[_Draft], eid: str) -> list[_Draft]:
        """``draft`` after a ``lookup`` of each id its arguments use that nothing shown so far gives (a name
        that denotes several entries is called by id, and the agent must have seen that id)."""
        seen = "\n".join([*(str(m.get("content") or "") for m in self.messages), *(d.observation for d in before)])
        out: list[_Draft] = []
        for x in dict.fromkeys(_ID.findall(" ".join(_strings(draft.action.arguments)))):
            name = self.index.name.get(x)
            if shows_id(seen, x) or not name:
                continue
            look = self.run(Action("lookup", {"name": name}, f"The name {name} may denote several entries.",
                                   "lookup"), eid)
            if shows_id(look.observation, x):
                kinds = {line.split(" [synonym]")[0].rsplit("(", 1)[-1].rstrip(")") for line in
                         look.observation.splitlines() if "(" in line}
                kind = self.index.type.get(x)
                look.role, look.resolves = draft.role, (name, x if len(kinds) < 2 or not kind else
                                                        f"{x}, the {TYPE_NOUN.get(kind, kind)}")
                out.append(look)
                seen += "\n" + look.observation
        return [*out, draft]

    def names_open_entity(self, action: Action, position: int) -> bool:
        """The call would name a chain entity not committed yet (the hop's own included): never as a check."""
        later = self.hops[position:]
        for text in _strings(action.arguments):
            key = surface_key(text)
            if any(shows_id(text, h.entity_id) or key in h.keys for h in later):
                return True
        return False

    def checks(self, position: int, var: Variable, commit: G.Commit) -> list[Action]:
        """Discriminating calls for the competitors the rule still leaves open, cheapest kinds first."""
        index, view = self.index, self.view
        hop = self.hops[position]
        n = noun(index, var.type)
        prev = self.hops[position - 1].entity_id if position > 0 else None
        open_ = [u for u in commit.unresolved if not u.startswith("+")]
        unseen = len(open_) < len(commit.unresolved)
        out: list[Action] = []
        pairs = [(c.anchor, c.relation) for c in hop.constraints]
        groups = [pairs, *([(a, r) for a, r in pairs if r == rel] for rel in dict.fromkeys(r for _, r in pairs))]
        for group in groups:
            if (a := _common_action(index, view, group, n, prev, kind="check")) is not None:
                out.append(a)
        for c in hop.constraints:
            if c.relation not in view.relations:
                continue
            members = index.neighbours(c.anchor, c.relation, "rev" if c.side == "in" else "fwd")
            if len(members) > LIST_CAP or (not unseen and all(u in members for u in open_)):
                continue  # a list that is cut, or that rules nothing out
            ref = c.anchor if c.anchor == prev else view.ref(index, c.anchor)
            out.append(Action("related", {"entity_id": ref, "relation": c.relation, "direction": c.side},
                              f"The {n} must be among {_list_phrase(index, 'related', (c.anchor,), c.relation, c.side)}.",
                              "check"))
        if len(open_) <= OWN_ENTRY_MAX:
            for u in open_:
                for c in hop.constraints:
                    if c.relation not in view.relations:
                        continue
                    own = index.neighbours(u, c.relation, "fwd" if c.side == "in" else "rev")
                    if c.anchor in own or len(own) > LIST_CAP:
                        continue
                    out.append(Action("related", {"entity_id": view.ref(index, u), "relation": c.relation,
                                                  "direction": "out" if c.side == "in" else "in"},
                                      f"Is {name_of(index, u)} linked to {name_of(index, c.anchor)} by {c.relation}?",
                                      "check"))
        unique = {_key(a): a for a in reversed(out)}  # the first of equal calls
        return [a for a in out if unique.get(_key(a)) is a and not self.names_open_entity(a, position)]

    def ground(self, position: int, var: Variable, finds: list[_Draft]) -> _Plan | None:
        """``finds`` (the finding call, after a miss) plus the fewest checks that rule out every competitor."""
        eid = var.entity_id
        if self.grounded and any(d.action.name == "diagnose" and d.found and (at_last_rank(d.observation, eid) or
                                 hides_full_match(self.index, self.view, d.action, d.observation)) for d in finds):
            return None  # ties, or diseases with every query phenotype, may hide below the last shown rank
        drafts = list(finds)
        commit = G.probe_commit(self.conversation(drafts), self.record, eid)
        if commit is None or commit.reason == "never_shown":
            return None
        if not self.grounded:
            return _Plan(drafts, commit)  # named as shown: competitors left open (the ablation)
        while commit.unresolved:
            if sum(d.action.kind == "check" for d in drafts) >= MAX_CHECKS:
                return None
            used = self.seen | {d.key for d in drafts}
            best = None
            for order, action in enumerate(self.checks(position, var, commit)):
                if _key(action) in used:
                    continue
                cand = self.run(action, eid)
                if is_tool_error(cand.observation):
                    continue
                cand.role = "check"
                group = self.with_lookups(cand, drafts, eid)
                after = G.probe_commit(self.conversation([*drafts, *group]), self.record, eid)
                if after is None:
                    continue
                gain = len(commit.unresolved) - len(after.unresolved)
                score = (-gain, len(group), sum(len(d.observation) for d in group), order)
                if gain > 0 and (best is None or score < best[0]):
                    best = (score, group, after)
            if best is None:
                return None
            _, group, after = best
            for d in group:
                d.open_before = commit.unresolved
            group[-1].resolved = tuple(u for u in commit.unresolved if u not in after.unresolved)
            drafts.extend(group)
            commit = after
        return _Plan(drafts, commit)


def _open_phrase(index: QuestionIndex, eid: str, open_: tuple[str, ...], intro: str, n: str) -> str:
    """The candidates still standing, in the order the introducing observation shows them."""
    ids = [eid, *(u for u in open_ if not u.startswith("+"))]
    ids.sort(key=lambda x: intro.find(f"({x})") % (len(intro) + 1))
    unseen = [u for u in open_ if u.startswith("+")]
    text = f"{len(ids)} {_plural(n)} could fit so far: {_names(index, ids)}"
    if unseen:
        text += f", and {unseen[0][1:].split()[0]} more the list did not show"
    return text + "."


def _clue_shown(hop: G.Hop, prev: str | None, eid: str, observations: list[tuple[str, str, dict]],
                names: dict[str, str]) -> bool:
    """Some observation of the hop shows ``eid`` holding one of its clues (not only the link); ``names``:
    :func:`medkit.grounding.question_names` of the record."""
    clues = [c for c in hop.constraints if c.anchor != prev]
    for tool, text, args in observations:
        obs = G.parse_observation(0, tool, text, args, names)
        for c in clues:
            for lst in obs.listings:
                if eid in lst.items and (
                        (lst.tool == "common" and (c.anchor, c.relation) in _common_pairs(lst.anchors, lst.relation))
                        or (lst.anchors == (c.anchor,) and lst.relation == c.relation and lst.side == c.side)):
                    return True
            if c.relation == "has_phenotype" and c.anchor in obs.query and obs.query[c.anchor] in obs.matched.get(eid, ()):
                return True
    return False


# --------------------------------------------------------------------------- synthesis


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _call_message(thought: str, action: Action) -> dict[str, Any]:
    return {"role": "assistant", "content": f"<think>{_sentence(thought)}</think>",
            "tool_calls": [{"type": "function", "function": {"name": action.name, "arguments": action.arguments}}]}


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _assign(drafts: list[_Draft], first: str) -> list[_Draft]:
    """Thoughts of consecutive finding calls: ``first`` before the first, a lookup's result before the next."""
    prefix = first
    for d in drafts:
        d.thought = _join(prefix, d.action.plan)
        prefix = f"{d.resolves[0]} is {d.resolves[1]}." if d.resolves else ""
    return drafts


def _choose(planner: _Planner, position: int, var: Variable, tried: list[_Draft], lead: str, n: str) -> _Plan | None:
    """The plan for one hop from the executed finding calls ``tried`` (preferred first): the preferred one
    when it finds the entity and needs at most ``PREFERRED_CHECKS`` checks, else the cheapest grounded plan
    (after the preferred call's miss, kept as a real observation, when it missed); None if none grounds."""
    eid = var.entity_id
    first, plan = tried[0], None
    if first.found:
        plan = planner.ground(position, var, _assign(planner.with_lookups(replace(first), [], eid), lead))
    if plan is None or sum(d.action.kind == "check" for d in plan.drafts) > PREFERRED_CHECKS:
        miss = [] if first.found else _assign(planner.with_lookups(replace(first), [], eid), lead)
        options = [[*miss, *_assign(planner.with_lookups(replace(d), miss, eid),
                                    f"That does not settle which {n} it is." if miss else lead)]
                   for d in tried[1:] if d.found]
        plans = [p for p in (plan, *(planner.ground(position, var, o) for o in options)) if p is not None]
        plan = min(plans, key=lambda p: p.cost) if plans else None  # ties: the preferred
    return plan


def synthesise(record: dict[str, Any], index: QuestionIndex, toolbox: Any, *, variant: int = 0,
               seed: int = 13, grounded: bool = True) -> Synthesised:
    """One knowledge-informed, grounded trajectory for ``record`` (see the module docstring); with
    ``grounded=False`` the ablation without checks (picks named as soon as an observation shows them)."""
    qid = str(record.get("question_id") or record.get("id"))
    view = ToolView.of(toolbox)
    variables = variables_from_record(record)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT},
                                      {"role": "user", "content": record["question"]}]
    out = Synthesised(qid, variant, messages)
    planner = _Planner(record, index, toolbox, view, messages, grounded=grounded)
    context = ""            # the evidence that settled the previous entity (the thought that commits to it)
    prev: str | None = None
    plan: _Plan | None = None
    for i, var in enumerate(variables):
        n = noun(index, var.type)
        if i == 0:
            intro = f"First I need the {noun(index, var.type)} the question starts from."  # its clues: the question
            actions = start_actions(index, var, view)
        else:
            phrase = LINK_PHRASE.get((var.link["relation"], var.link["direction"]),
                                     "a {n} linked to {p} by " + var.link["relation"])
            intro = f"Next I need {phrase.format(n=n, p='it')}."  # the thought has just named it
            actions = hop_actions(index, prev, var, view)
        tried = [planner.run(a, var.entity_id) for a in actions if _key(a) not in planner.seen]
        if not any(d.found for d in tried):
            out.failure = f"hop_not_found:{i}"
            return out
        lead = _join(context, intro)
        plan = _choose(planner, i, var, tried, lead, n)
        if i == 0 and variant % 2 == 1 and plan is not None:
            # another way in: the cheapest grounded plan that starts with a different finding call, else
            # (one way only) a search first, its miss kept as a real observation
            taken = next((d.key for d in plan.drafts if d.found and d.action.name != "lookup"), None)
            other = [p for d in tried if d.found and d.key != taken
                     if (p := planner.ground(i, var, _assign(planner.with_lookups(replace(d), [], var.entity_id),
                                                             lead))) is not None]
            if other:
                plan = min(other, key=lambda p: p.cost)
            else:
                searched = start_actions(index, var, view, search_first=True)
                tried = [planner.run(a, var.entity_id) for a in searched if _key(a) not in planner.seen]
                plan = _choose(planner, i, var, tried, lead, n) or plan
        if plan is None:
            out.failure = f"ungrounded:{i}"
            return out
        intro_text = ""
        gone: tuple[str, ...] | None = None  # what the previous check ruled out (None: no check yet)
        looked: str | None = None            # what the previous lookup showed
        for d in plan.drafts:
            if d.role == "check" and looked is not None:
                d.thought = _join(looked, d.action.plan)
            elif d.role == "check":
                still = _open_phrase(index, var.entity_id, d.open_before, intro_text, n)
                if gone is not None:
                    named = [x for x in gone if not x.startswith("+")]
                    still = _join(f"That rules out {_names(index, named)}." if named
                                  else "That rules out the ones the list did not show.", still)
                d.thought = _join(still, d.action.plan)
            elif d.found and not intro_text:
                intro_text = d.observation
            if d.action.kind == "check":
                gone = d.resolved
            looked = f"{d.resolves[0]} is {d.resolves[1]}." if d.resolves else None
            planner.seen.add(d.key)
            messages.append(_call_message(d.thought, d.action))
            messages.append({"role": "tool", "name": d.action.name, "content": d.observation})
            out.steps.append(Step(d.action, d.observation, var.entity_id, d.found, _sentence(d.thought)))
        intro_msg = messages[plan.commit.introduced_at]["content"] if plan.commit.introduced_at is not None else None
        context = evidence_phrase(index, plan.commit, intro_msg)
        out.hops_found = i + 1
        prev = var.entity_id
    target = variables[-1]
    before = variables[-2].entity_id if len(variables) > 1 else None
    last = [(s.action.name, s.observation, s.action.arguments) for s in out.steps[-len(plan.drafts):]] if plan else []
    if target.clues and planner.hops and not _clue_shown(planner.hops[-1], before, target.entity_id, last,
                                                             G.question_names(record)):
        # no observation of the last hop showed the answer holding a clue: confirm one (the shortest check)
        checks = []
        for action, evidence in verify_actions(index, before, target, view):
            if evidence == before or _key(action) in planner.seen:
                continue
            obs = planner.run(action, target.entity_id).observation
            if not is_tool_error(obs) and mentions(index, obs, evidence, by_name=False):
                checks.append((len(obs), len(checks), action, evidence, obs))
        for _, _, action, evidence, obs in sorted(checks)[:1]:  # the most targeted check that shows a clue
            thought = _join(context, action.plan)
            messages.append(_call_message(thought, action))
            messages.append({"role": "tool", "name": action.name, "content": obs})
            out.steps.append(Step(action, obs, None, True, _sentence(thought)))
            shown_by = "its entry shows" if action.name == "read" else f"the {action.name} output shows"
            context = f"Confirmed for {name_of(index, target.entity_id)}: {shown_by} {name_of(index, evidence)}."
    final = context or f"The answer is {name_of(index, target.entity_id)}."  # the evidence; <answer> names it
    messages.append({"role": "assistant",
                     "content": f"<think>{_sentence(final)}</think>\n<answer>{record['answer']}</answer>"})
    return out
