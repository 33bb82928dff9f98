"""The answer judge (medkit.judge): exact / id / normalised / synonym, never letter matching."""

from __future__ import annotations

import pytest

from medkit.judge import clean_prediction, judge

HEP_B = {"answer": "Hepatitis B", "answer_id": "MONDO:0005344", "answer_aliases": ["Hepatitis B", "HBV infection"]}


@pytest.mark.parametrize("prediction, method", [
    ("Hepatitis B", "exact"),
    ("  Hepatitis B", "exact"),
    ("Hepatitis B (MONDO:0005344)", "exact"),
    ("MONDO:0005344", "id"),
    ("hepatitis-b", "normalised"),
    ("The answer is **hepatitis B**.", "normalised"),
    ("Final answer: \"Hepatitis B\"", "exact"),  # boilerplate stripped, then identical
    ("HBV infection", "synonym"),
])
def test_correct_answers_and_how(prediction, method):
    v = judge(prediction, HEP_B)
    assert v.correct and v.method == method


@pytest.mark.parametrize("prediction", ["B", "(B)", "b.", "Answer: B", "Hepatitis C", "Hepatitis B or Hepatitis C",
                                        "probably hepatitis B, maybe C", "", "   ", None, 42,
                                        "Hepatitis C (MONDO:0005344) (MONDO:0005231)"])
def test_wrong_answers_including_the_letter_trap(prediction):
    assert not judge(prediction, HEP_B).correct


def test_letter_answer_that_is_really_a_name():
    vit = {"answer": "B", "answer_id": "X:1", "answer_aliases": []}
    assert judge("B", vit).correct  # an entity literally named "B" is still matched as a full name
    assert not judge("Hepatitis B", vit).correct


def test_resolver_supplies_kb_synonyms_and_survives_failures(toolbox):
    fabry = {"answer": "Fabry disease", "answer_id": "MONDO:0010526", "answer_aliases": []}
    assert not judge("Anderson-Fabry disease", fabry).correct
    v = judge("Anderson-Fabry disease", fabry, resolve=toolbox.resolve_ids)
    assert v.correct and v.method == "synonym"

    def broken(_):
        raise RuntimeError("index gone")
    assert not judge("Anderson-Fabry disease", fabry, resolve=broken).correct


def test_clean_prediction():
    assert clean_prediction("The answer is: *Fabry disease* (MONDO:0010526).") == "Fabry disease"
    assert clean_prediction("x" * 1000) == "x" * 300
    assert clean_prediction(["not", "text"]) == ""
