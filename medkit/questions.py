"""KISA questions: obfuscated multi-hop questions along a KG reasoning chain, verified unique.

Scope: turn a chain of entities (from :mod:`medkit.subgraph`) into a structured set of
constraints — each chain entity is a variable with a type, a link to the previous one
(a typed relation) and clue facts (phenotypes, inheritance, onset, roles, parent class,
…) chosen greedily until that hop is unambiguous — then

* **verify** against the whole knowledge base that exactly one entity satisfies every
  constraint (an independent propagation over all entities, not the construction path);
* **cut** a chain to the hops a solver needs (:func:`needed_tail`): when a tail of the chain
  already pins the answer, the question is that tail — every hop a question states is needed;
* **render** fluent, varied English in which chain entities are described, never named
  (clue entities may be named: they are the evidence), plus the upstream record fields
  ``question``, ``answer``, ``reasoning_path`` (placeholders only), ``entity_mapping``;
* **check leaks**: no name, synonym or id of a chain entity (also inside a longer word, from
  :data:`MIN_INNER_KEY` characters), nor a clue that contains or is contained in one, appears in
  the question or the reasoning path; "rare" / "little-known" describe only entities the mining
  stage found rare (``QuestionIndex(..., rare=...)``);
* **split** train / held-out test by source entity.

Obfuscation levels: 0 names clue phenotypes; 1 replaces each phenotype clue by its
HPO parent class ("some form of …", a weaker constraint, so more clues are needed).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .ner import surface_key

MAX_CLUES = 4
MIN_INNER_KEY = 5  # a masked name this long also leaks inside a longer word ("formoterol" in "arformoterol")
TYPE_NOUN = {"disease": "disorder", "gene": "gene", "drug": "drug", "drug_class": "pharmacological class",
             "phenotype": "clinical feature"}
ONSET_PHRASE = {
    "Congenital onset": "at birth", "Neonatal onset": "in the neonatal period", "Infantile onset": "in infancy",
    "Childhood onset": "in childhood", "Juvenile onset": "in adolescence", "Adult onset": "in adulthood",
    "Young adult onset": "in young adulthood", "Middle age onset": "in middle age", "Late onset": "late in life",
    "Antenatal onset": "before birth", "Fetal onset": "during fetal life", "Embryonal onset": "in embryonic life",
}


# --------------------------------------------------------------------------- the index


def question_relations(entities: pd.DataFrame, relations: pd.DataFrame, corpus_relations: pd.DataFrame) -> pd.DataFrame:
    """The facts questions may use: the KB's curated relations plus corpus
    ``definition_mentions`` edges with a drug at one end (a drug's reference definition
    naming a disease is the only link between drugs and diseases in the sources)."""
    types = dict(zip(entities["entity_id"], entities["type"]))
    c = corpus_relations
    drug = c[(c["relation"] == "definition_mentions")
             & (c["head_id"].map(types).eq("drug") | c["tail_id"].map(types).eq("drug"))]
    return pd.concat([relations, drug], ignore_index=True)


class QuestionIndex:
    """Everything question building and verification need, as plain dicts and sets."""

    def __init__(self, entities: pd.DataFrame, relations: pd.DataFrame, rare: Iterable[str] = ()) -> None:
        """``rare``: the ids the mining stage calls rare (only these are described as "rare")."""
        self.rare = frozenset(rare)
        self.type = dict(zip(entities["entity_id"], entities["type"]))
        self.name = dict(zip(entities["entity_id"], entities["name"]))
        self.synonyms = {e: [str(s) for s in (syn if syn is not None else [])]
                         for e, syn in zip(entities["entity_id"], entities["synonyms"])}
        self.by_type: dict[str, set[str]] = defaultdict(set)
        for e, t in self.type.items():
            self.by_type[t].add(e)
        self.out: dict[tuple[str, str], set[str]] = defaultdict(set)  # (head, relation) -> tails
        self.inc: dict[tuple[str, str], set[str]] = defaultdict(set)  # (tail, relation) -> heads
        self.freq: dict[tuple[str, str], float] = {}
        for h, r, t, f in zip(relations["head_id"], relations["relation"], relations["tail_id"], relations["frequency"]):
            self.out[(h, r)].add(t)
            self.inc[(t, r)].add(h)
            if r == "has_phenotype" and f == f:
                self.freq[(h, t)] = float(f)
        self._below: dict[str, frozenset[str]] = {}

    def neighbours(self, node: str, relation: str, direction: str) -> set[str]:
        """``fwd``: tails of ``node --relation-->``; ``rev``: heads of ``--relation--> node``."""
        return self.out.get((node, relation), set()) if direction == "fwd" else self.inc.get((node, relation), set())

    def phenotype_parent(self, pheno: str) -> str | None:
        parents = sorted(p for p in self.out.get((pheno, "is_a"), set()) if self.type.get(p) == "phenotype")
        return parents[0] if parents else None

    def below(self, term: str) -> frozenset[str]:
        """``term`` and all its is_a descendants."""
        if term not in self._below:
            seen, stack = {term}, [term]
            while stack:
                for c in self.inc.get((stack.pop(), "is_a"), set()):
                    if c not in seen:
                        seen.add(c)
                        stack.append(c)
            self._below[term] = frozenset(seen)
        return self._below[term]

    def holders(self, clue: dict[str, Any]) -> set[str]:
        """Entities that satisfy one clue."""
        if clue["kind"] == "fact":
            return set(self.inc.get((clue["value"], clue["relation"]), set()))
        if clue["kind"] == "fact_rev":  # the owner is the tail: 'a feature also seen in <disease>'
            return set(self.out.get((clue["value"], clue["relation"]), set()))
        if clue["kind"] == "under":  # has some phenotype in the class
            out: set[str] = set()
            for p in self.below(clue["value"]):
                out |= self.inc.get((p, "has_phenotype"), set())
            return out
        if clue["kind"] == "degree":
            return {e for e in self.by_type[clue["type"]]
                    if len(self.neighbours(e, clue["relation"], clue["direction"])) >= clue["min"]}
        raise ValueError(f"unknown clue kind {clue['kind']!r}")


# --------------------------------------------------------------------------- constraints


@dataclass
class Variable:
    entity_id: str
    type: str
    link: dict[str, str] | None  # {"relation", "direction"} from the previous variable
    clues: list[dict[str, Any]] = field(default_factory=list)


def hop_between(index: QuestionIndex, a: str, b: str, allowed: Iterable[str]) -> dict[str, str] | None:
    """The relation (and direction, seen from ``a``) that links a -> b, preferring curated ones."""
    for rel in allowed:
        if b in index.out.get((a, rel), set()):
            return {"relation": rel, "direction": "fwd"}
        if b in index.inc.get((a, rel), set()):
            return {"relation": rel, "direction": "rev"}
    return None


def masked_keys(index: QuestionIndex, chain: Iterable[str]) -> dict[str, str]:
    """Normalised names, synonyms and ids of the chain entities (what must never show)."""
    keys: dict[str, str] = {}
    for e in chain:
        for s in [index.name.get(e, ""), *index.synonyms.get(e, []), e, e.split(":", 1)[-1]]:
            k = surface_key(s)
            if len(k) >= 4 or (len(k) >= 3 and s.isupper()):
                keys[k] = e
    return keys


def names_inside(haystack_key: str, needle_key: str) -> bool:
    """``needle_key`` shows in ``haystack_key``: as whole words, or (5+ characters) inside a longer
    word — a masked "formoterol" is given away by a clue that names "arformoterol"."""
    return contains_words(haystack_key, needle_key) or (len(needle_key) >= MIN_INNER_KEY and needle_key in haystack_key)


def overlaps_masked(index: QuestionIndex, value: str, keys: dict[str, str]) -> str | None:
    """The masked entity a clue value would give away (its name contains or is inside a masked name)."""
    ck = surface_key(index.name.get(value, ""))
    for k, e in keys.items():
        if names_inside(ck, k) or (len(ck) >= 5 and len(k) >= 5 and contains_words(k, ck)):
            return e
    return None


CLUE_RELATIONS_BY_TYPE = {
    "disease": (("has_phenotype", "fwd"), ("has_inheritance", "fwd"), ("has_onset", "fwd"),
                ("has_clinical_course", "fwd"), ("is_a", "fwd")),
    "gene": (("associated_with", "fwd"),),
    "drug": (("has_role", "fwd"), ("definition_mentions", "fwd")),
    "phenotype": (("is_a", "fwd"), ("has_phenotype", "rev")),
}


def candidate_clues(index: QuestionIndex, node: str, level: int, forbidden: set[str],
                    keys: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """True facts about ``node`` usable as clues: never a chain entity, never giving one away."""
    keys = keys or {}
    clues = []
    for rel, direction in CLUE_RELATIONS_BY_TYPE.get(index.type[node], ()):
        for value in sorted(index.neighbours(node, rel, direction)):
            if value in forbidden or overlaps_masked(index, value, keys):
                continue
            if direction == "rev":
                clues.append({"kind": "fact_rev", "relation": rel, "value": value})
                continue
            if rel == "has_phenotype" and level >= 1:
                parent = index.phenotype_parent(value)
                if parent and parent not in forbidden and not overlaps_masked(index, parent, keys):
                    clues.append({"kind": "under", "relation": rel, "value": parent, "via": value})
                continue
            clues.append({"kind": "fact", "relation": rel, "value": value})
    return clues


def choose_clues(index: QuestionIndex, node: str, candidates: set[str], level: int, forbidden: set[str],
                 rng: random.Random, max_clues: int = MAX_CLUES,
                 keys: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], set[str]]:
    """Greedy: add the clue that removes most wrong candidates until only ``node`` is left.

    Of equally useful clues the least specific one is taken: the one true of most entities of
    ``node``'s type over the whole knowledge base. A hop's clues then single ``node`` out among the
    previous entity's neighbours without naming it on their own, so a solver cannot skip the hops
    before it (on the cpu profile's first 600 seeds, questions needing every stated hop rose from
    41% to 67% at the same yield; :func:`sufficient_hops`, :func:`needed_tail`)."""
    pool = candidate_clues(index, node, level, forbidden, keys)
    rng.shuffle(pool)  # equally good clues are picked in a seeded random order: variety
    of_type = index.by_type[index.type[node]]
    commonness = [len(index.holders(c) & of_type) for c in pool]
    chosen: list[dict[str, Any]] = []
    remaining = set(candidates)
    while len(remaining) > 1 and pool and len(chosen) < max_clues:
        scored = [(len(remaining - index.holders(c)), commonness[i], -i) for i, c in enumerate(pool)]
        gain, _, best = max(scored)
        best = -best
        if gain == 0:
            break
        commonness.pop(best)
        clue = pool.pop(best)
        chosen.append(clue)
        remaining &= index.holders(clue)
    return chosen, remaining


def build_constraints(index: QuestionIndex, chain: list[str], level: int, rng: random.Random,
                      allowed: Iterable[str]) -> tuple[list[Variable], str | None]:
    """Variables for ``chain``, or a reason why no unambiguous question exists."""
    allowed = list(allowed)
    forbidden = set(chain)
    keys = masked_keys(index, chain)
    variables: list[Variable] = []
    prev_candidates: set[str] | None = None
    for i, node in enumerate(chain):
        t = index.type.get(node)
        if t is None:
            return [], f"unknown entity {node}"
        link = None
        if i == 0:
            candidates = set(index.by_type[t])
        else:
            link = hop_between(index, chain[i - 1], node, allowed)
            if link is None:
                return [], f"no fact relation between {chain[i - 1]} and {node}"
            candidates = set()
            for p in prev_candidates or ():
                candidates |= index.neighbours(p, link["relation"], link["direction"])
            candidates &= index.by_type[t]
        clues, remaining = choose_clues(index, node, candidates, level, forbidden, rng, keys=keys)
        if remaining != {node}:
            return [], f"hop {i} ({t}) stays ambiguous: {len(remaining)} candidates"
        variables.append(Variable(node, t, link, clues))
        prev_candidates = remaining
    return variables, None


def solve(index: QuestionIndex, variables: list[Variable]) -> set[str]:
    """Every entity that satisfies all constraints, propagated over the whole KB."""
    current: set[str] | None = None
    for var in variables:
        if current is None:
            cand = set(index.by_type[var.type])
        else:
            cand = set()
            for p in current:
                cand |= index.neighbours(p, var.link["relation"], var.link["direction"])
            cand &= index.by_type[var.type]
        for clue in var.clues:
            cand &= index.holders(clue)
        current = cand
    return current or set()


def sufficient_hops(index: QuestionIndex, variables: list[Variable]) -> int:
    """The fewest hops a solver needs: the shortest tail of the chain (its first variable taken without
    the link into it, only its own clues) whose constraints already leave exactly the answer, counted in
    hops; ``len(variables) - 1`` when every hop is needed, 0 when the answer's own clues name it.

    A question is verified unique as a whole (:func:`solve`); this says how much of the chain a solver
    can skip — a 6-hop question whose last 2 hops pin the answer tests 2 hops of reasoning."""
    answer = {variables[-1].entity_id}
    for start in range(len(variables) - 1, 0, -1):
        tail = [Variable(variables[start].entity_id, variables[start].type, None, variables[start].clues),
                *variables[start + 1:]]
        if solve(index, tail) == answer:
            return len(variables) - 1 - start
    return len(variables) - 1


def needed_tail(index: QuestionIndex, variables: list[Variable], level: int, rng: random.Random,
                keys: dict[str, str] | None = None) -> tuple[list[Variable] | None, str | None]:
    """The question every hop of which a solver needs: ``variables`` themselves when no tail of the
    chain pins the answer, else the shortest tail that does (:func:`sufficient_hops`), its first
    variable's clues chosen anew so that they single it out in the whole knowledge base (it has no
    link to narrow it any more). ``(None, reason)`` when that first variable cannot be singled out.

    Each shorter tail of the returned chain leaves the answer ambiguous — those tails are tails of
    the original chain that did not pin it — so every stated hop of the result is needed."""
    needed = sufficient_hops(index, variables)
    if needed == len(variables) - 1:
        return variables, None
    start = len(variables) - 1 - needed
    head = variables[start]
    forbidden = {v.entity_id for v in variables}
    clues, remaining = choose_clues(index, head.entity_id, set(index.by_type[head.type]), level, forbidden, rng,
                                    keys=keys)
    if remaining != {head.entity_id}:
        return None, f"the {needed}-hop tail's first {head.type} stays ambiguous: {len(remaining)} candidates"
    return [Variable(head.entity_id, head.type, None, clues), *variables[start + 1:]], None


# --------------------------------------------------------------------------- rendering


def _lower_first(name: str) -> str:
    return name if len(name) > 1 and name[1].isupper() else name[:1].lower() + name[1:]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _freq_phrase(f: float | None) -> str:
    if f is None:
        return ""
    if f >= 0.99:
        return " in every reported patient"
    if f >= 0.8:
        return " in nearly all patients"
    if f >= 0.3:
        return " in many patients"
    if f >= 0.05:
        return " in some patients"
    return " only rarely"


def clue_phrase(index: QuestionIndex, owner: str, clue: dict[str, Any], rng: random.Random) -> str:
    rel, value = clue["relation"], clue["value"]
    name = index.name.get(value, value)
    if clue["kind"] == "under":
        return rng.choice(["presents with some form of {x}", "shows a kind of {x}",
                           "has a feature that falls under {x}"]).format(x=_lower_first(name))
    if clue["kind"] == "fact_rev":
        return rng.choice([f"is also seen in {name}", f"also occurs in {name}"])
    if clue["kind"] == "degree":
        return f"is linked to at least {clue['min']} disorders"
    if rel == "has_phenotype":
        verb = rng.choice(["presents with {x}", "is characterised by {x}", "shows {x}", "features {x}"])
        return verb.format(x=_lower_first(name)) + _freq_phrase(index.freq.get((owner, value)))
    if rel == "has_inheritance":
        mode = _lower_first(name.replace(" inheritance", ""))
        return rng.choice([f"is inherited in {_article(mode)} {mode} pattern", f"follows {mode} inheritance",
                           f"shows {mode} transmission"])
    if rel == "has_onset":
        when = ONSET_PHRASE.get(name, "with " + _lower_first(name))
        return rng.choice([f"typically begins {when}", f"usually manifests {when}", f"has its onset {when}"])
    if rel == "has_clinical_course":
        return rng.choice([f"follows a {name.lower()} course", f"runs a {name.lower()} course"])
    if rel == "is_a":
        return rng.choice([f"is classified as a kind of {_lower_first(name)}",
                           f"belongs to the group of {_lower_first(name)}"])
    if rel == "has_role":
        return rng.choice([f"is classed as {_article(name)} {name}", f"acts as {_article(name)} {name}"])
    if rel == "associated_with":
        return rng.choice([f"is also linked to {name}", f"has also been implicated in {name}"])
    if rel == "definition_mentions":
        return rng.choice([f"has a reference definition that mentions {_lower_first(name)}",
                           f"is defined with reference to {_lower_first(name)}"])  # the owner's definition: one direction
    return f"{rel.replace('_', ' ')} {name}"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(index: QuestionIndex, var: Variable, rng: random.Random) -> str:
    noun = TYPE_NOUN[var.type]
    adj = rng.choice(["rare ", "rare ", "little-known ", ""]) if var.type == "disease" else ""
    if var.entity_id not in index.rare:  # drawn anyway: the rest of the text does not depend on rarity
        adj = ""
    np_ = f"{_article(adj + noun)} {adj}{noun}"
    if not var.clues:
        return np_
    return f"{np_} that " + _join([clue_phrase(index, var.entity_id, c, rng) for c in var.clues])


def _ref(var: Variable, ordinal: int) -> str:
    noun = TYPE_NOUN[var.type]
    ords = ["", "second ", "third ", "fourth ", "fifth ", "sixth ", "seventh "]
    return f"the {ords[min(ordinal, len(ords) - 1)]}{noun}"


def link_sentence(prev_ref: str, desc: str, link: dict[str, str], types: tuple[str, str], rng: random.Random) -> str:
    rel, d = link["relation"], link["direction"]
    pt, nt = types
    if rel == "associated_with":
        if nt == "gene":
            s = rng.choice(["{p} is associated with {n}.", "{p} has been linked to {n}.",
                            "Variants in {n} underlie {p}."])
        else:
            s = rng.choice(["{p} is also associated with {n}.", "{p} is implicated in {n} as well.",
                            "Beyond that, {p} is linked to {n}."])
    elif rel == "has_phenotype":
        s = (rng.choice(["One clinical feature of {p} is {n}.", "Among the features of {p} is {n}."]) if d == "fwd"
             else rng.choice(["{p} is also seen in {n}.", "{p} also occurs in {n}."]))
    elif rel == "is_a":
        s = ("{p} is a subtype of {n}." if d == "fwd" else rng.choice(["{p} has a subtype: {n}.",
                                                                        "One subtype of {p} is {n}."]))
    elif rel == "has_role":
        s = "{p} has the role of {n}." if d == "fwd" else "{p} is a role of {n}."
    elif rel == "definition_mentions":
        s = ("The reference definition of {p} mentions {n}." if d == "fwd"
             else "{p} is mentioned in the reference definition of {n}.")
    else:
        words = rel.replace("_", " ")
        s = "{p} " + words + " {n}." if d == "fwd" else "{n} " + words + " {p}."
    out = s.format(p=prev_ref, n=desc)
    return out[0].upper() + out[1:]


ASK = {"disease": ["Which disorder is this?", "Name this disorder.", "What is the disorder?"],
       "gene": ["Which gene is this?", "Name the gene.", "What is this gene?"],
       "drug": ["Which drug is this?", "Name the drug.", "What is this drug?"],
       "drug_class": ["Which pharmacological class is this?", "Name this class."],
       "phenotype": ["Which clinical feature is this?", "Name this clinical feature."]}
OPENERS = ["Consider {d}.", "Start from {d}.", "There is {d}.", "A patient is diagnosed with {d}."]


def render(index: QuestionIndex, variables: list[Variable], rng: random.Random) -> dict[str, Any]:
    """Question text, masked reasoning path and the placeholder -> value mapping."""
    counts: dict[str, int] = defaultdict(int)
    refs = []
    for v in variables:
        refs.append(_ref(v, counts[v.type]))
        counts[v.type] += 1
    first = describe(index, variables[0], rng)
    opener = rng.choice(OPENERS if variables[0].type == "disease" else OPENERS[:3])
    sentences = [opener.format(d=first)]
    for i in range(1, len(variables)):
        v = variables[i]
        sentences.append(link_sentence(refs[i - 1], describe(index, v, rng), v.link,
                                       (variables[i - 1].type, v.type), rng))
    last = variables[-1]
    sentences.append(rng.choice(ASK[last.type]))
    question = " ".join(sentences)

    placeholders = [f"Entity_{chr(65 + i)}" for i in range(len(variables) - 1)] + ["Target_Entity"]
    mapping: dict[str, str] = {}
    ids: dict[str, str] = {}
    steps = []
    n_clue = 0
    for i, (ph, v) in enumerate(zip(placeholders, variables)):
        mapping[ph], ids[ph] = index.name[v.entity_id], v.entity_id
        if v.link is not None:
            a, b = placeholders[i - 1], ph
            head, tail = (a, b) if v.link["direction"] == "fwd" else (b, a)
            steps.append(f"{head} --{v.link['relation']}--> {tail}")
        for c in v.clues:
            n_clue += 1
            cph = f"Clue_{n_clue}"
            mapping[cph], ids[cph] = index.name.get(c["value"], c["value"]), c["value"]
            if c["kind"] == "fact_rev":
                steps.append(f"{cph} --{c['relation']}--> {ph}")
            else:
                rel = c["relation"] if c["kind"] == "fact" else f"{c['relation']}_under"
                steps.append(f"{ph} --{rel}--> {cph}")
    return {"question": question, "reasoning_path": "; ".join(steps), "entity_mapping": mapping, "entity_ids": ids}


# --------------------------------------------------------------------------- leaks


def contains_words(haystack_key: str, needle_key: str) -> bool:
    """Whole-word containment of one normalised key (``surface_key``) in another."""
    return bool(needle_key) and f" {needle_key} " in f" {haystack_key} "


def leaks(index: QuestionIndex, variables: list[Variable], texts: Iterable[str]) -> list[str]:
    """Names / synonyms / ids of chain entities found in ``texts``, and clues overlapping them."""
    keys = masked_keys(index, [v.entity_id for v in variables])
    found = []
    for text in texts:
        tk = surface_key(text)
        for k, e in keys.items():
            if names_inside(tk, k):
                found.append(f"{e} named as {k!r}")
    for v in variables:
        for c in v.clues:
            e = overlaps_masked(index, c["value"], keys)
            if e:
                found.append(f"clue {c['value']} gives away {e}")
    return sorted(set(found))


# --------------------------------------------------------------------------- records


def stable_id(*parts: Any) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


def answer_aliases(index: QuestionIndex, entity_id: str) -> list[str]:
    names = [index.name[entity_id], *index.synonyms.get(entity_id, [])]
    return sorted(set(n for n in names if len(surface_key(n)) >= 3), key=lambda n: (n.lower(), n))  # no hash order


def make_record(index: QuestionIndex, variables: list[Variable], rng: random.Random, *, seed_entity: str,
                extra: dict[str, Any]) -> dict[str, Any]:
    rendered = render(index, variables, rng)
    target = variables[-1].entity_id
    return {
        "id": stable_id(seed_entity, extra.get("attempt", 0), rendered["question"]),
        "question": rendered["question"],
        "answer": index.name[target],
        "answer_id": target,
        "answer_type": index.type[target],
        "answer_aliases": answer_aliases(index, target),
        "reasoning_path": rendered["reasoning_path"],
        "entity_mapping": rendered["entity_mapping"],
        "entity_ids": rendered["entity_ids"],
        "source_entity": index.name[seed_entity],
        "source_entity_id": seed_entity,
        "hops": len(variables) - 1,
        "relation_types": [v.link["relation"] for v in variables[1:]],
        "chain": [v.entity_id for v in variables],
        "constraints": [{"entity_id": v.entity_id, "type": v.type, "link": v.link, "clues": v.clues}
                        for v in variables],
        **extra,
    }


def variables_from_record(record: dict[str, Any]) -> list[Variable]:
    return [Variable(c["entity_id"], c["type"], c["link"], c["clues"]) for c in record["constraints"]]


def split_by_source(records: list[dict[str, Any]], test_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train / test by source entity: no test seed or answer is a train seed or answer."""
    sources = sorted({r["source_entity_id"] for r in records})
    rng = random.Random(seed)
    test_sources = set(rng.sample(sources, round(len(sources) * test_share)))
    test = [r for r in records if r["source_entity_id"] in test_sources]
    held = test_sources | {r["answer_id"] for r in test}
    train = [r for r in records if r["source_entity_id"] not in held and r["answer_id"] not in held]
    return train, test


# --------------------------------------------------------------------------- optional LLM polish

POLISH_PROMPT = ("Rewrite the following puzzle question so that it reads naturally. Keep every clinical "
                 "detail and every named feature exactly; do not add any names, answers or hints. "
                 "Reply with the rewritten question only.\n\n{question}")


def polish_problem(index: QuestionIndex, record: dict[str, Any], text: str) -> str | None:
    """Why a polished text cannot replace the original (None if it can)."""
    text = text.strip()
    if len(text) < 0.5 * len(record["question"]):
        return "too short"
    variables = variables_from_record(record)
    found = leaks(index, variables, [text])
    if found:
        return "leak: " + found[0]
    tk = surface_key(text)
    for v in variables:
        for c in v.clues:
            if c["kind"] in ("fact", "fact_rev") and not contains_words(tk, surface_key(index.name.get(c["value"], ""))):
                return f"clue dropped: {index.name.get(c['value'])}"
    return None


def polish_records(index: QuestionIndex, records: list[dict[str, Any]], backend: Any,
                   *, max_new_tokens: int = 320) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Let an LLM rewrite questions; keep a rewrite only if answer, clues and masking survive."""
    convs = [[{"role": "user", "content": POLISH_PROMPT.format(question=r["question"])}] for r in records]
    outs = backend.generate(convs, max_new_tokens=max_new_tokens, temperature=0.0)
    stats = {"polished": 0, "kept_original": 0, "errors": 0}
    result = []
    for r, o in zip(records, outs):
        if getattr(o, "error", None):
            stats["errors"] += 1
            result.append(r)
            continue
        problem = polish_problem(index, r, o.text)
        if problem:
            stats["kept_original"] += 1
            result.append({**r, "polish": {"status": "rejected", "reason": problem}})
        else:
            stats["polished"] += 1
            result.append({**r, "question": o.text.strip(), "question_original": r["question"],
                           "polish": {"status": "polished", "backend": getattr(backend, "name", "llm")}})
    return result, stats


def question_id(record: dict[str, Any]) -> str:
    """A question record's id (notebook 03 writes ``id``; trajectories carry ``question_id``)."""
    return str(record.get("question_id") or record["id"])
