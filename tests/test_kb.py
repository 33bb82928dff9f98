"""The joined knowledge base: facts checked against the real sources, integrity, determinism, atomicity."""

import numpy as np
import pandas as pd
import pytest

from medkit import kb
from medkit import sources as src
from medkit.errors import InputError


def test_fabry_disease_facts(entities, relations):
    ents = entities.set_index("entity_id")
    assert ents.loc["MONDO:0010526", "type"] == "disease"
    assert "OMIM:301500" in set(ents.loc["MONDO:0010526", "xrefs"])
    assert "OMIM:301500" not in ents.index  # mapped onto MONDO, not duplicated
    fabry = relations[relations["head_id"] == "MONDO:0010526"]
    rel = set(zip(fabry["relation"], fabry["tail_id"]))
    assert ("has_inheritance", "HP:0001419") in rel  # X-linked recessive inheritance, per HPO
    assert sum(r == "has_phenotype" for r, _ in rel) > 30
    gla = relations[(relations["head_id"] == "NCBIGene:2717") & (relations["relation"] == "associated_with")]
    assert "MONDO:0010526" in set(gla["tail_id"])
    assert ents.loc["NCBIGene:2717", "name"] == "GLA"


def test_integrity(entities, relations, passages):
    ids = set(entities["entity_id"])
    assert entities["entity_id"].is_unique and passages["passage_id"].is_unique
    assert relations["head_id"].isin(ids).all() and relations["tail_id"].isin(ids).all()
    assert not relations.duplicated(["head_id", "relation", "tail_id"]).any()
    assert passages["entity_id"].dropna().isin(ids).all()
    assert passages["text"].str.len().gt(0).all()
    f = relations["frequency"].dropna()
    hp = relations[relations["relation"] == "has_phenotype"]["frequency"].dropna()
    assert hp.between(0, 1).all() and len(hp) > 100_000
    assert set(entities["type"]) == {"disease", "phenotype", "gene", "drug", "drug_class", "inheritance", "onset",
                                     "clinical_course"}
    # type-consistent relations
    t = entities.set_index("entity_id")["type"]
    for relation, (ht, tt) in {"has_phenotype": ("disease", "phenotype"), "associated_with": ("gene", "disease"),
                               "has_inheritance": ("disease", "inheritance"), "has_role": ("drug", "drug_class")}.items():
        sub = relations[relations["relation"] == relation]
        assert (sub["head_id"].map(t) == ht).all() and (sub["tail_id"].map(t) == tt).all(), relation
    assert f.notna().all()


def test_annotation_relations_are_order_independent():
    hpoa = src.read_hpo_annotations().iloc[:3000]
    hpo = src.read_hpo_terms()
    types = kb.hpo_branches(hpo)
    id_map = {d: d for d in hpoa["disease_id"]}
    a = kb.annotation_relations(hpoa, id_map, types)
    b = kb.annotation_relations(hpoa.sample(frac=1, random_state=3), id_map, types)
    pd.testing.assert_frame_equal(a, b)
    assert {"has_phenotype", "has_inheritance"} <= set(a["relation"])


def test_omim_and_orpha_annotations_merge_onto_one_mondo_disease():
    hpoa = pd.DataFrame({
        "disease_id": ["OMIM:1", "ORPHA:2", "OMIM:1"], "disease_name": ["x", "x", "x"],
        "hpo_id": ["HP:A", "HP:A", "HP:B"], "aspect": ["P", "P", "P"], "frequency": [0.5, 1.0, np.nan],
        "frequency_raw": ["", "", ""], "onset": ["", "", ""], "references": ["PMID:1", "PMID:2", ""],
        "evidence": ["PCS", "TAS", "IEA"]})
    out = kb.annotation_relations(hpoa, {"OMIM:1": "MONDO:9", "ORPHA:2": "MONDO:9"},
                                  {"HP:A": "phenotype", "HP:B": "phenotype"})
    a = out[out["tail_id"] == "HP:A"].iloc[0]
    assert len(out) == 2 and a["head_id"] == "MONDO:9" and a["frequency"] == pytest.approx(0.75)
    assert a["evidence"] == "OMIM:1 ORPHA:2 PMID:1 PMID:2"


def test_an_annotation_whose_sources_all_say_absent_is_excludes_phenotype_not_a_phenotype():
    rows = [("OMIM:1", "HP:A", 0.0), ("ORPHA:2", "HP:A", 0.0),      # "Excluded" in both sources: a negative fact
            ("OMIM:1", "HP:B", 0.0), ("ORPHA:2", "HP:B", 0.5),      # the sources disagree: still a phenotype
            ("OMIM:1", "HP:C", 0.0), ("ORPHA:2", "HP:C", np.nan),   # annotated without a frequency in one: present
            ("OMIM:1", "HP:D", 0.2)]
    hpoa = pd.DataFrame({"disease_id": [r[0] for r in rows], "disease_name": "x", "hpo_id": [r[1] for r in rows],
                         "aspect": "P", "frequency": [r[2] for r in rows], "frequency_raw": "", "onset": "",
                         "references": "PMID:1", "evidence": "TAS"})
    out = kb.annotation_relations(hpoa, {"OMIM:1": "MONDO:9", "ORPHA:2": "MONDO:9"},
                                  {h: "phenotype" for h in ("HP:A", "HP:B", "HP:C", "HP:D")})
    relation = dict(zip(out["tail_id"], out["relation"]))
    assert relation == {"HP:A": kb.EXCLUDES_PHENOTYPE, "HP:B": "has_phenotype", "HP:C": "has_phenotype",
                        "HP:D": "has_phenotype"}
    assert list(out["relation"]) == sorted(out["relation"])  # still sorted by (head, relation, tail)
    assert out.loc[out["tail_id"] == "HP:B", "frequency"].item() == pytest.approx(0.25)


def test_a_kb_built_by_another_version_is_rebuilt_not_reused(tmp_path, kb_tables, monkeypatch):
    e, r, p = kb_tables
    out = tmp_path / "kb"
    kb.write_kb(out, e.iloc[:50], r.iloc[:50], p.iloc[:50], {"kb_version": kb.KB_VERSION})
    said = []
    kb.build_kb(out, progress=said.append)
    assert "already built" in said[-1]
    kb.write_kb(out, e.iloc[:50], r.iloc[:50], p.iloc[:50], {"sources": {}})  # before versions were recorded

    def boom(progress):
        raise RuntimeError("the build started")

    monkeypatch.setattr(kb, "build_tables", boom)
    with pytest.raises(RuntimeError, match="the build started"):
        kb.build_kb(out, progress=said.append)
    assert "built by kit version 1 of the tables" in said[-1] and "rebuilding" in said[-1]


def test_disease_id_map_prefers_smallest_mondo_id():
    xrefs = pd.DataFrame({"mondo_id": ["MONDO:2", "MONDO:1", "MONDO:3"], "namespace": ["OMIM", "OMIM", "Orphanet"],
                          "xref": ["100", "100", "7"]})
    m = kb.disease_id_map(pd.Series(["OMIM:100", "ORPHA:7", "OMIM:555"]), xrefs, {"MONDO:1", "MONDO:2", "MONDO:3"})
    assert m == {"OMIM:100": "MONDO:1", "ORPHA:7": "MONDO:3", "OMIM:555": "OMIM:555"}


def test_failed_build_leaves_existing_kb_untouched(tmp_path, monkeypatch):
    out = tmp_path / "kb"
    out.mkdir()
    for f in kb.KB_FILES:
        (out / f).write_text("previous build")
    corrupt = tmp_path / "data"
    corrupt.mkdir()
    (corrupt / "hp.obo").write_text("format-version: 1.2\n")
    monkeypatch.setattr(src, "hpo_dir", lambda: corrupt)
    with pytest.raises(InputError, match="hp.obo"):
        kb.build_kb(out, force=True, progress=lambda _: None)
    assert all((out / f).read_text() == "previous build" for f in kb.KB_FILES)


def test_a_corrupt_kb_is_not_called_built_and_an_unwritable_folder_fails_first(tmp_path, monkeypatch):
    out = tmp_path / "kb"
    out.mkdir()
    for f in kb.KB_FILES:
        (out / f).write_text("half a download")
    said = []

    def boom(progress):
        raise RuntimeError("the build started")

    monkeypatch.setattr(kb, "build_tables", boom)
    with pytest.raises(RuntimeError, match="the build started"):  # rebuilt, not skipped as "already built"
        kb.build_kb(out, progress=said.append)
    assert said and "is unreadable" in said[0] and "rebuilding" in said[0]
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match=r"a file/kb: cannot write there"):  # before any work
        kb.build_kb(blocker / "kb", progress=said.append)


def test_load_kb_names_the_broken_table(tmp_path, kb_tables):
    e, r, p = kb_tables
    e.iloc[:5].to_parquet(tmp_path / "entities.parquet")
    r.iloc[:5].drop(columns=["tail_id"]).to_parquet(tmp_path / "relations.parquet")
    p.iloc[:5].to_parquet(tmp_path / "passages.parquet")
    with pytest.raises(InputError, match=r"relations.parquet: missing column\(s\) \['tail_id'\]"):
        kb.load_kb(tmp_path)
