"""Medical specialty of an entity, from the HPO organ-system branches of its phenotypes.

Scope: map each top-level HPO branch (children of *Phenotypic abnormality*) to a clinical
specialty; give every phenotype its organ systems (through is_a ancestors); give a
disease the specialty whose organ system is most *characteristic* of its annotated
phenotypes (frequency-weighted votes divided by how common that system is across all
annotations, so that ubiquitous neurological features do not make everything
"Neurology"); give genes and drugs the majority specialty of the diseases they link to.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np
import pandas as pd

from . import sources as src

SYSTEM_SPECIALTY = {
    "HP:0000119": "Nephrology & urology",
    "HP:0000152": "Clinical genetics & dysmorphology",
    "HP:0000478": "Ophthalmology",
    "HP:0000598": "Otolaryngology",
    "HP:0001608": "Otolaryngology",
    "HP:0000707": "Neurology",
    "HP:0000769": "Obstetrics & gynecology",
    "HP:0001197": "Obstetrics & gynecology",
    "HP:0000818": "Endocrinology",
    "HP:0001507": "Pediatrics & growth",
    "HP:0001574": "Dermatology",
    "HP:0001626": "Cardiology",
    "HP:0001871": "Hematology",
    "HP:0001939": "Metabolic medicine",
    "HP:0002086": "Pulmonology",
    "HP:0045027": "Pulmonology",
    "HP:0002664": "Oncology",
    "HP:0002715": "Immunology",
    "HP:0025031": "Gastroenterology & hepatology",
    "HP:0033127": "Musculoskeletal medicine",
    "HP:0040064": "Musculoskeletal medicine",
}
FALLBACK = "General medicine"
DRUG_FALLBACK = "Clinical pharmacology"


def phenotype_specialties(hpo_terms: pd.DataFrame | None = None) -> dict[str, frozenset[str]]:
    """Phenotype id -> the specialties of the organ systems it falls under."""
    hpo = hpo_terms if hpo_terms is not None else src.read_hpo_terms()
    parents = dict(zip(hpo["id"], hpo["is_a"]))
    memo: dict[str, frozenset[str]] = {}

    def walk(term: str, stack: frozenset[str] = frozenset()) -> frozenset[str]:
        if term in memo:
            return memo[term]
        if term in SYSTEM_SPECIALTY:
            out = frozenset({SYSTEM_SPECIALTY[term]})
        else:
            out = frozenset()
            for p in parents.get(term, []):
                if p not in stack:
                    out |= walk(p, stack | {term})
        memo[term] = out
        return out

    return {t: walk(t) for t in hpo["id"]}


def disease_specialties(relations: pd.DataFrame, pheno_spec: dict[str, frozenset[str]]) -> dict[str, str]:
    """Disease id -> its most characteristic specialty (see module docstring)."""
    hp = relations[relations["relation"] == "has_phenotype"]
    weights = hp["frequency"].fillna(0.5).clip(lower=0.05).to_numpy()
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for disease, pheno, w in zip(hp["head_id"], hp["tail_id"], weights):
        specs = pheno_spec.get(pheno, frozenset())
        for s in specs:
            share = w / len(specs)
            votes[disease][s] += share
            totals[s] += share
    grand = sum(totals.values()) or 1.0
    prior = {s: totals[s] / grand for s in totals}
    out = {}
    for disease, c in votes.items():
        # characteristic = over-represented relative to the prior; ties broken by name
        out[disease] = max(sorted(c), key=lambda s: (c[s] / prior[s]) * np.log1p(c[s]))
    return out


def majority(specs: Iterable[str], fallback: str) -> str:
    c = Counter(s for s in specs if s)
    return max(sorted(c), key=c.__getitem__) if c else fallback


def entity_specialties(entities: pd.DataFrame, relations: pd.DataFrame,
                       hpo_terms: pd.DataFrame | None = None) -> dict[str, str]:
    """Specialty of every disease, phenotype, gene and drug entity."""
    pheno_spec = phenotype_specialties(hpo_terms)
    dis = disease_specialties(relations, pheno_spec)
    out: dict[str, str] = {}
    types = dict(zip(entities["entity_id"], entities["type"]))
    for eid, t in types.items():
        if t == "disease":
            out[eid] = dis.get(eid, FALLBACK)
        elif t == "phenotype":
            out[eid] = majority(sorted(pheno_spec.get(eid, frozenset())), FALLBACK)
    genes = relations[relations["relation"] == "associated_with"]
    for gene, group in genes.groupby("head_id"):
        out[gene] = majority((dis.get(d) for d in group["tail_id"]), FALLBACK)
    drug_links = relations[relations["relation"].isin(["definition_mentions"])]
    linked: dict[str, list[str]] = defaultdict(list)
    for h, t in zip(drug_links["head_id"], drug_links["tail_id"]):
        if types.get(h) == "drug" and t in dis:
            linked[h].append(dis[t])
        elif types.get(t) == "drug" and h in dis:
            linked[t].append(dis[h])
    for eid, t in types.items():
        if t in ("drug", "drug_class"):
            out[eid] = majority(linked.get(eid, []), DRUG_FALLBACK)
    return out
