import pytest
"""Dictionary NER: real surfaces, longest match, word boundaries, case rules, baseline agreement."""

import pickle

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from medkit import ner


def _ids(matcher, text):
    return [(m.text(text), m.entity_ids) for m in matcher.find(text)]


def test_normalise_keeps_length():
    for s in ["Ehlers–Danlos (type IV)", "Sjögren's", "İstanbul", "a\tb\nc"]:
        assert len(ner.normalise(s)) == len(s)


def test_is_symbol():
    assert ner.is_symbol("FBN1") and ner.is_symbol("ALS") and ner.is_symbol("HbA1c")
    assert not ner.is_symbol("Fever") and not ner.is_symbol("fabry disease") and not ner.is_symbol("Ataxia")


def test_longest_match_and_no_overlap(matcher):
    text = "Patients with type 2 diabetes mellitus and Fabry disease."
    found = _ids(matcher, text)
    surfaces = [s for s, _ in found]
    assert "type 2 diabetes mellitus" in surfaces and "diabetes mellitus" not in surfaces
    assert ("Fabry disease", ("MONDO:0010526",)) in found
    spans = [(m.start, m.end) for m in matcher.find(text)]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_whole_words_and_punctuation_variants(matcher):
    assert _ids(matcher, "feverishness") == []
    a = _ids(matcher, "Ehlers-Danlos syndrome")
    b = _ids(matcher, "Ehlers–Danlos  syndrome")  # en dash and a double space
    assert a and [ids for _, ids in a] == [ids for _, ids in b]


def test_symbols_are_case_sensitive(matcher):
    assert any("NCBIGene:2200" in ids for _, ids in _ids(matcher, "variants in FBN1 cause it"))
    assert _ids(matcher, "variants in fbn1 cause it") == []
    assert all("NCBIGene:847" not in ids for _, ids in _ids(matcher, "the cat sat"))  # CAT, catalase gene


def test_surfaces_drop_generic_and_lowercased_symbol_twins(entities):
    s = ner.build_surfaces(entities)
    assert not s["key"].isin(["disease", "syndrome", "disorder"]).any()
    assert s["key"].str.len().ge(ner.MIN_SURFACE_CHARS).all()
    face = s[(s["key"] == "face") & (s["entity_id"] == "MONDO:0010953")]
    assert face["case_sensitive"].all() and len(face) == 1  # 'FACE' only, not the word 'face'
    assert s.groupby("key")["entity_id"].nunique().le(ner.MAX_ENTITIES_PER_SURFACE).all()


@pytest.mark.slow
def test_aho_corasick_agrees_with_baseline_on_real_passages(entities, passage_slice):
    surfaces = ner.build_surfaces(entities)
    fast, slow = ner.Matcher(surfaces), ner.BaselineMatcher(surfaces)
    texts = passage_slice["text"].tolist()
    got, want = ner.find_all(fast, texts), ner.find_all(slow, texts)
    assert sum(map(len, got)) > 1000
    assert got == want


def test_matcher_pickles(matcher, passage_slice):
    clone = pickle.loads(pickle.dumps(matcher))
    texts = passage_slice["text"].tolist()[:200]
    assert ner.find_all(clone, texts) == ner.find_all(matcher, texts)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_find_never_raises_and_spans_are_sane(matcher, text):
    prev_end = 0
    for m in matcher.find(text):
        assert 0 <= m.start < m.end <= len(text) and m.start >= prev_end and m.entity_ids
        prev_end = m.end


def test_empty_inputs():
    surfaces = ner.build_surfaces(pd.DataFrame({"entity_id": ["X:1"], "name": ["Alpha syndrome"], "synonyms": [[]]}))
    m = ner.Matcher(surfaces)
    assert m.find("") == [] and _ids(m, "the alpha syndrome.") == [("alpha syndrome", ("X:1",))]


def test_disease_abbreviations_need_the_full_name_in_the_passage(matcher):
    # 'FCD' is listed for fleck corneal dystrophy only; focal cortical dysplasia texts reuse it.
    assert _ids(matcher, "Focal cortical dysplasia (FCD) is a malformation; FCD causes it.") == [
        ("Focal cortical dysplasia", ("HP:0032046",))]
    found = _ids(matcher, "Fleck corneal dystrophy (FCD) is benign; FCD is bilateral.")
    assert [s for s, _ in found] == ["Fleck corneal dystrophy", "FCD", "FCD"]
    assert all(ids == ("MONDO:0007376",) for _, ids in found)


def test_gene_symbols_win_over_other_entities_listed_under_them(entities):
    s = ner.build_surfaces(entities)
    assert set(s[s["surface"] == "PIK3CA"]["entity_id"]) == {"NCBIGene:5290"}
    assert not s[s["entity_id"].str.startswith("NCBIGene:") & s["case_sensitive"]]["abbreviation"].any()
