"""Confidence intervals for accuracies measured on a question set: bootstrap over questions.

Scope:

* :func:`per_question` turns evaluation rows (one per question and rollout, with ``question_id``
  and ``correct``) into each question's accuracy over its rollouts.
* :func:`interval` is the 95% percentile-bootstrap interval of a mean (``scipy.stats.bootstrap``,
  questions resampled with replacement, fixed seed, so the same rows give the same interval).
  The unit is the question, not the rollout: rollouts of one question are correlated, so
  resampling rollouts would understate the uncertainty.
* :func:`pass_at_1` is pass@1 (mean over questions of the per-question accuracy) with that interval.
* :func:`paired_difference` compares two stages on the **same** questions: the mean of the
  per-question differences with its bootstrap interval (a paired bootstrap, which removes the
  question-to-question variance both stages share). Different question sets are refused.

All outputs are strict JSON (plain floats and lists, ``None`` when there is nothing to measure).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 13


def per_question(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Each question's share of correct rollouts, keyed by ``question_id`` (str)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for i, r in enumerate(rows):
        if "question_id" not in r or r["question_id"] is None or "correct" not in r:
            raise InputError(None, f"evaluation row {i} needs 'question_id' and 'correct' (has {sorted(r)})",
                             field="question_id" if "correct" in r else "correct")
        hits[str(r["question_id"])].append(bool(r["correct"]))
    return {q: sum(v) / len(v) for q, v in hits.items()}


def interval(values: Sequence[float], *, level: float = LEVEL, resamples: int = RESAMPLES,
             seed: int = SEED) -> list[float] | None:
    """The percentile-bootstrap ``level`` interval of the mean of ``values`` ([low, high], 4 decimals);
    ``None`` for no values; a single value (or all equal) gives a zero-width interval."""
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        return None
    if data.size == 1 or np.all(data == data[0]):
        return [round(float(data[0]), 4)] * 2
    from scipy.stats import bootstrap

    res = bootstrap((data,), np.mean, confidence_level=level, n_resamples=resamples, method="percentile",
                    vectorized=True, rng=np.random.default_rng(seed))
    return [round(float(res.confidence_interval.low), 4), round(float(res.confidence_interval.high), 4)]


def pass_at_1(rows: Iterable[Mapping[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """``{"mean", "ci95", "questions"}``: pass@1 over questions with its bootstrap interval."""
    acc = per_question(rows)
    values = list(acc.values())
    return {"mean": round(sum(values) / len(values), 4) if values else None, "ci95": interval(values, **kwargs),
            "questions": len(values)}


def paired_difference(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]], *,
                      names: tuple[str, str] = ("a", "b"), **kwargs: Any) -> dict[str, Any]:
    """``{"mean", "ci95", "questions", "better", "worse"}`` of pass@1(b) − pass@1(a) on the same questions:
    the per-question differences and their bootstrap interval; ``better`` / ``worse`` count the questions
    where b's accuracy is above / below a's. Raises :class:`InputError` when the question sets differ."""
    a, b = per_question(rows_a), per_question(rows_b)
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise InputError(None, f"paired comparison {names[0]} vs {names[1]}: different question sets "
                         f"({len(only_a)} only in {names[0]}, e.g. {only_a[:3]}; "
                         f"{len(only_b)} only in {names[1]}, e.g. {only_b[:3]})")
    diffs = [b[q] - a[q] for q in sorted(a)]
    return {"mean": round(sum(diffs) / len(diffs), 4) if diffs else None, "ci95": interval(diffs, **kwargs),
            "questions": len(diffs), "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)}
