"""Bootstrap intervals over questions: coverage, pairing, determinism and refused question sets."""

from __future__ import annotations

import json
import random

import pytest

from medkit import bootstrap as B
from medkit import evaluation as E
from medkit.errors import InputError


def _rows(accuracy: dict[str, list[bool]]) -> list[dict]:
    return [{"question_id": q, "rollout": j, "correct": c} for q, cs in accuracy.items() for j, c in enumerate(cs)]


def test_pass_at_1_is_the_mean_over_questions_with_an_interval_around_it():
    rng = random.Random(0)
    rows = _rows({f"q{i}": [rng.random() < 0.3 for _ in range(4)] for i in range(150)})
    p = B.pass_at_1(rows)
    acc = B.per_question(rows)
    assert p["questions"] == 150 and p["mean"] == round(sum(acc.values()) / 150, 4)
    low, high = p["ci95"]
    assert low < p["mean"] < high and 0.05 < high - low < 0.2  # ~ +-1.96 * sd / sqrt(150)
    assert B.pass_at_1(rows) == p  # fixed seed: the same rows give the same interval
    json.dumps(p, allow_nan=False)


def test_the_interval_narrows_with_more_questions_and_covers_the_truth():
    rng = random.Random(1)
    widths, covered = [], 0
    for n in (40, 400):
        low, high = B.interval([float(rng.random() < 0.3) for _ in range(n)])
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    for trial in range(40):  # a 95% interval covers the true 0.3 in most of 40 samples of 100 questions
        low, high = B.interval([float(rng.random() < 0.3) for _ in range(100)], resamples=2000, seed=trial)
        covered += low <= 0.3 <= high
    assert covered >= 34


def test_degenerate_inputs():
    assert B.interval([]) is None and B.interval([0.0, 0.0, 0.0]) == [0.0, 0.0] and B.interval([0.5]) == [0.5, 0.5]
    assert B.pass_at_1([]) == {"mean": None, "ci95": None, "questions": 0}
    with pytest.raises(InputError, match="question_id"):
        B.per_question([{"correct": True}])


def test_a_paired_difference_sees_a_gain_that_unpaired_intervals_hide():
    rng = random.Random(2)
    base = {f"q{i}": [rng.random() < 0.5 for _ in range(4)] for i in range(60)}
    better = {q: [c or rng.random() < 0.15 for c in cs] for q, cs in base.items()}  # never worse on any rollout
    a, b = _rows(base), _rows(better)
    d = B.paired_difference(a, b, names=("sft", "grpo"))
    pa, pb = B.pass_at_1(a), B.pass_at_1(b)
    assert d["mean"] == pytest.approx(pb["mean"] - pa["mean"], abs=2e-4) and d["worse"] == 0 and d["better"] > 0
    assert d["ci95"][0] > 0  # paired: clearly above 0 ...
    assert pb["ci95"][0] < pa["ci95"][1]  # ... while the two unpaired intervals overlap


def test_different_question_sets_are_refused_with_names():
    a = _rows({"q1": [True], "q2": [False]})
    b = _rows({"q1": [True], "q3": [True]})
    with pytest.raises(InputError, match=r"sft vs grpo.*q2.*q3"):
        B.paired_difference(a, b, names=("sft", "grpo"))
    with pytest.raises(InputError, match="different question sets"):
        E.compare({"sft": a, "grpo": b}, {"grpo_minus_sft": ("sft", "grpo")})
    same = E.compare({"sft": a, "grpo": a}, {"grpo_minus_sft": ("sft", "grpo")})
    assert same["grpo_minus_sft"]["mean"] == 0 and same["grpo_minus_sft"]["ci95"] == [0.0, 0.0]
