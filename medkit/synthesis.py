"""Knowledge-informed trajectory synthesis: walk a question's KG chain with real tool calls.

Scope: for one question record (from notebook 03) build a ReAct trajectory that an expert
with the kit's tools would produce — identify the first entity of the chain from its clues,
follow every hop with a tool that exposes that relation, verify the final candidate, answer.
Every call is executed for real against :class:`medkit.tools.MedicalToolbox`; a hop counts as
*found* only if the entity's id (or its name, for definition text) appears in the observation
of the call that was meant to find it. A hop that no action finds rejects the trajectory
(``hop_not_found``), as the issue demands — the synthesiser never invents an observation.

Thoughts are composed from what is known at that point only: the question's clues and the
entities already seen in observations (never a later chain entity, never the masked path),
and each one says why the next action is taken. Preference order of actions per hop:

* a disease described by phenotypes -> ``diagnose`` (Bayesian ranking over HPO annotations);
* a relation the KB exposes -> ``related(previous entity, relation)``;
* a drug <-> disease definition mention -> ``read`` (forward) or ``search`` (reverse);
* the most selective clue -> ``related(clue, relation)``; finally a keyword ``search``.

Every candidate action of a step is executed; the preferred one is taken when it finds the
entity. When it misses, the miss stays in the trajectory (a real observation) followed by the
most targeted (shortest) observation that does find it: trajectories show recovery, not only
lucky first calls, and stay short. The final check is likewise the shortest observation that
shows the evidence.
``variant`` > 0 gives another trajectory for the same question (search first for the start
entity, other wording) so a question can contribute more than one distinct sample.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .agent import SYSTEM_PROMPT
from .ner import surface_key
from .questions import TYPE_NOUN, QuestionIndex, Variable, clue_phrase, contains_words, variables_from_record

SYNTHESIS_VERSION = 3  # bump when trajectories change (actions, thoughts, prompt): stale rows are redone
DIAGNOSE_K = 3
SEARCH_K = 5

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
    kind: str            # diagnose | related | clue | read | search | verify


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
    failure: str | None = None  # hop_not_found:<i> or None
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
    """The entity's id is in the observation (or, with ``by_name``, its name as whole words)."""
    if eid in observation:
        return True
    if by_name:
        obs = surface_key(observation)
        keys = {surface_key(n) for n in (name_of(index, eid), *index.synonyms.get(eid, []))}
        return any(len(k) >= 5 and contains_words(obs, k) for k in keys)
    return False


@dataclass(frozen=True)
class ToolView:
    """What the synthesiser needs to know about the toolbox: its relations and its name index."""

    relations: frozenset[str]
    resolve: Callable[[str], list[str]]

    @classmethod
    def of(cls, toolbox: Any) -> ToolView:
        return cls(frozenset(getattr(toolbox, "_relation_names", ())), toolbox.resolve_ids)

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
                     plan: str) -> Action:
    args: dict[str, Any] = {"phenotypes": phenotypes, "k": DIAGNOSE_K}
    within = _class_clue(index, var)
    if within:
        args["within"] = view.ref(index, within)
        plan = plan.rstrip(".") + f", restricted to {name_of(index, within)} and its subtypes."
    return Action("diagnose", args, plan, "diagnose")


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
                  f"I will list what links to {cname} by {c['relation']}.", "clue")


def _search_action(index: QuestionIndex, var: Variable, extra: list[str]) -> Action | None:
    words = [*extra, *_clue_words(index, var)]
    if not words:
        return None
    query = " ".join(words)[:300]
    return Action("search", {"query": query, "k": SEARCH_K},
                  "I will search the knowledge base.", "search")


def start_actions(index: QuestionIndex, var: Variable, view: ToolView, *,
                  search_first: bool = False) -> list[Action]:
    """Ways to identify the first entity of the chain from its clues, preferred first."""
    actions: list[Action] = []
    phenos = _phenotype_names(index, var)
    if var.type == "disease" and phenos:
        actions.append(_diagnose_action(index, view, phenos, var, "I will rank diseases for these phenotypes."))
    if (a := _clue_action(index, var, view)) is not None:
        actions.append(a)
    if (a := _search_action(index, var, [])) is not None:
        actions.insert(0, a) if search_first else actions.append(a)
    return actions


def hop_actions(index: QuestionIndex, prev: str, var: Variable, view: ToolView) -> list[Action]:
    """Ways to go from the known entity ``prev`` to the next chain entity ``var``, preferred first."""
    rel, direction = var.link["relation"], var.link["direction"]
    pname = name_of(index, prev)
    n = noun(index, var.type)
    actions: list[Action] = []
    phenos = _phenotype_names(index, var)
    via_phenotype = rel == "has_phenotype" and direction == "rev" and index.type.get(prev) == "phenotype"
    if var.type == "disease" and (via_phenotype or phenos):
        query = ([prev] if via_phenotype else []) + phenos
        actions.append(_diagnose_action(index, view, query, var, "I will rank diseases for "
                                        + (f"{pname} and the other features" if via_phenotype and phenos
                                           else pname if via_phenotype else "these features") + "."))
    shared = [c for c in var.clues if c["kind"] == "fact_rev" and c["relation"] == rel and rel in view.relations]
    if shared and direction == "fwd":
        other = name_of(index, shared[0]["value"])
        actions.append(Action("common", {"entity_ids": [prev, view.ref(index, shared[0]["value"])], "relation": rel},
                              f"I will list the {rel} links {pname} and {other} share.", "common"))
    if rel in view.relations:
        actions.append(Action("related", {"entity_id": prev, "relation": rel,
                                          "direction": "out" if direction == "fwd" else "in"},
                              f"I will list the {rel} links of {pname}.", "related"))
    elif rel == "definition_mentions" and direction == "fwd":
        actions.append(Action("read", {"entity_id": prev},
                              f"I will read the entry of {pname}.",
                              "read"))
    elif rel == "definition_mentions":
        actions.append(Action("search", {"query": pname, "k": SEARCH_K},
                              f"I will search for {n}s that mention {pname}.", "search"))
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
                           f"To verify, I will check that {tname} {clue_phrase(index, var.entity_id, c, random.Random(0))}.",
                           "verify"), c["value"]))
    if prev is not None and var.link and var.link["relation"] in view.relations:
        out.append((Action("related", {"entity_id": var.entity_id, "relation": var.link["relation"],
                                       "direction": "in" if var.link["direction"] == "fwd" else "out"},
                           f"To verify, I will check the {var.link['relation']} link between {tname} and "
                           f"{name_of(index, prev)} from the other side.", "verify"), prev))
    if prev is not None:
        out.append((Action("read", {"entity_id": var.entity_id},
                           f"To verify, I will read the full entry of {tname}.", "verify"), prev))
    return out


def _rank_phrase(observation: str, eid: str) -> str:
    for line in observation.splitlines():
        if eid in line and line[:1].isdigit():
            rank = line.split(".", 1)[0]
            matched = line.split("matched=", 1)[1].split(":", 1)[0] if "matched=" in line else "?"
            return f"ranks #{rank} with {matched} phenotypes matched"
    return "is among the candidates"


def found_phrase(index: QuestionIndex, step: Step, var: Variable, rng: random.Random) -> str:
    """What the last observation established, in words (only entities seen in it)."""
    eid = var.entity_id
    label = f"{name_of(index, eid)} ({eid})"
    kind = step.action.kind
    if kind == "diagnose":
        why = f"{label} {_rank_phrase(step.observation, eid)}"
    elif kind in ("related", "clue", "common"):
        why = f"{label} is there"
    elif kind == "read":
        why = f"the definition names {label}"
    else:
        why = f"the search returns {label}"
    if var.clues and kind != "diagnose":
        why += " and fits the description"
    return why + "."


# --------------------------------------------------------------------------- synthesis


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _call_message(thought: str, action: Action) -> dict[str, Any]:
    return {"role": "assistant", "content": f"<think>{_sentence(thought)}</think>",
            "tool_calls": [{"type": "function", "function": {"name": action.name, "arguments": action.arguments}}]}


def synthesise(record: dict[str, Any], index: QuestionIndex, toolbox: Any, *, variant: int = 0,
               seed: int = 13) -> Synthesised:
    """One knowledge-informed trajectory for ``record`` (see the module docstring)."""
    qid = str(record.get("question_id") or record.get("id"))
    rng = random.Random(f"{seed}:{qid}:{variant}")
    view = ToolView.of(toolbox)
    variables = variables_from_record(record)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT},
                                      {"role": "user", "content": record["question"]}]
    out = Synthesised(qid, variant, messages)
    seen: set[str] = set()  # (normalised) call keys, never repeat a call
    context = ""            # what the previous observation established
    prev: str | None = None
    for i, var in enumerate(variables):
        if i == 0:
            intro = (f"The question describes a chain of {len(variables)} linked entities and asks for the last one. "
                     f"First I need {describe(index, var, rng)}.")
            actions = start_actions(index, var, view, search_first=variant % 2 == 1)
        else:
            phrase = LINK_PHRASE.get((var.link["relation"], var.link["direction"]),
                                     "a {n} linked to {p} by " + var.link["relation"])
            intro = f"Next I need {phrase.format(n=noun(index, var.type), p=name_of(index, prev))}"
            if var.clues:
                intro += " that " + " and ".join(clue_phrase(index, var.entity_id, c, rng) for c in var.clues)
            intro += "."
            actions = hop_actions(index, prev, var, view)
        tried = []  # (action, observation, hit) of every candidate action, executed for real
        for action in actions:
            key = repr((action.name, sorted(action.arguments.items())))
            if key in seen:
                continue
            obs = toolbox.call(action.name, action.arguments)
            hit = not obs.startswith("Error:") and mentions(
                index, obs, var.entity_id, by_name=action.kind in ("read", "search"))
            tried.append((action, obs, hit, key))
        hits = [t for t in tried if t[2]]
        if not hits:
            out.failure = f"hop_not_found:{i}"
            return out
        # the preferred action when it works; else its miss, then the most targeted (shortest) hit
        taken = [tried[0]] if tried[0][2] else [tried[0], min(hits, key=lambda t: len(t[1]))]
        for n_before, (action, obs, hit, key) in enumerate(taken):
            seen.add(key)
            thought = " ".join(x for x in (context, intro if n_before == 0 else
                                              f"That did not show the {noun(index, var.type)} I need.", action.plan) if x)
            step = Step(action, obs, var.entity_id, hit, thought)
            messages.append(_call_message(thought, action))
            messages.append({"role": "tool", "name": action.name, "content": obs})
            out.steps.append(step)
            context = found_phrase(index, step, var, rng) if hit else ""
        out.hops_found = i + 1
        prev = var.entity_id
        seen.add(var.entity_id)
    target = variables[-1]
    before = variables[-2].entity_id if len(variables) > 1 else None
    checks = []
    for action, evidence in verify_actions(index, before, target, view):
        obs = toolbox.call(action.name, action.arguments)
        if not obs.startswith("Error:") and mentions(index, obs, evidence, by_name=action.name == "read"):
            checks.append((len(obs), len(checks), action, evidence, obs))
    for _, _, action, evidence, obs in sorted(checks)[:1]:  # the most targeted check that shows the evidence
        thought = f"{context} {action.plan}"
        messages.append(_call_message(thought, action))
        messages.append({"role": "tool", "name": action.name, "content": obs})
        out.steps.append(Step(action, obs, None, True, thought))
        context = f"Confirmed: the entry of {name_of(index, target.entity_id)} shows {name_of(index, evidence)}."
    path = " -> ".join(name_of(index, v.entity_id) for v in variables)
    final = (f"{context} Every constraint of the question is satisfied along {path}. "
             f"The answer is {name_of(index, target.entity_id)}.")
    messages.append({"role": "assistant",
                     "content": f"<think>{_sentence(final)}</think>\n<answer>{record['answer']}</answer>"})
    return out
