"""Answer judging: is a predicted entity name the question's answer?

Scope: one deterministic judge used by trajectory filtering, the evaluation harness and the
accuracy reward. In order, a prediction is correct by

1. ``exact``      — identical to the answer string (after stripping whitespace);
2. ``id``         — it names the answer's id (``"Fabry disease (MONDO:0010526)"``) and no other id;
3. ``normalised`` — equal after case / punctuation normalisation and removal of answer
                    boilerplate ("The answer is …", "Final answer:", quotes, bold, a final period);
4. ``synonym``    — normalised equal to one of the answer's KG synonyms (``answer_aliases``), or
                    resolved through the KB's name index (``resolve``) to the answer's id.

Never by letter matching: a prediction is not treated as a multiple-choice option, so "B" is
never judged equal to "Hepatitis B", and "Hepatitis B" is compared as the full name it is.
Containment ("… probably Fabry disease or Gaucher disease") is deliberately *not* accepted:
a hedged list of candidates is wrong.

A benchmark's question is judged by that benchmark's own rules: a MedBrowseComp record
(``benchmark == "MedBrowseComp"``) by :func:`medkit.medbrowsecomp.score` (method ``medbrowsecomp_rules``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .ner import surface_key

METHODS = ("exact", "id", "normalised", "synonym", "medbrowsecomp_rules")
MAX_PREDICTION_CHARS = 300

_ID = re.compile(r"\b([A-Z][A-Za-z]*(?:_[A-Za-z]+)?:[A-Za-z0-9_.-]+)")
_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*:?|:)\s*|it\s+is\s+|this\s+is\s+)", re.I)
_WRAPPERS = re.compile(r"^[\s\"'`*_]+|[\s\"'`*_.!]+$")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    method: str | None  # one of METHODS when correct
    prediction: str     # the cleaned prediction that was compared


def clean_prediction(text: Any) -> str:
    """Strip answer boilerplate, markup and a trailing id in parentheses."""
    if not isinstance(text, str):
        return ""
    s = " ".join(text.split())[:MAX_PREDICTION_CHARS]
    for _ in range(2):
        s = _WRAPPERS.sub("", s)
        s = _PREFIX.sub("", s)
    s = re.sub(r"\s*\(([A-Z][A-Za-z]*(?:_[A-Za-z]+)?:[A-Za-z0-9_.-]+)\)\s*$", "", s)
    return _WRAPPERS.sub("", s)


def judge(prediction: Any, record: dict[str, Any], *,
          resolve: Callable[[str], Iterable[str]] | None = None) -> Verdict:
    """Judge ``prediction`` against a question record (``answer``, ``answer_id``, ``answer_aliases``).

    ``resolve`` (optional) maps a name to the entity ids it names, e.g.
    :meth:`medkit.tools.MedicalToolbox.resolve_ids`, for synonyms the record does not list.
    """
    raw = prediction if isinstance(prediction, str) else ""
    if record.get("benchmark") == "MedBrowseComp":
        from .medbrowsecomp import score

        right = score(raw, str(record.get("answer", "")), record.get("task_name"))
        return Verdict(right, "medbrowsecomp_rules" if right else None, " ".join(raw.split())[:MAX_PREDICTION_CHARS])
    cleaned = clean_prediction(raw)
    answer = str(record.get("answer", ""))
    answer_id = record.get("answer_id")
    if not cleaned:
        return Verdict(False, None, cleaned)
    if raw.strip() == answer.strip() or cleaned == answer.strip():
        return Verdict(True, "exact", cleaned)
    ids = set(_ID.findall(raw))
    if answer_id and ids == {answer_id}:
        return Verdict(True, "id", cleaned)
    key = surface_key(cleaned)
    if not key:
        return Verdict(False, None, cleaned)
    if key == surface_key(answer):
        return Verdict(True, "normalised", cleaned)
    aliases = {surface_key(a) for a in record.get("answer_aliases") or []}
    if key in aliases:
        return Verdict(True, "synonym", cleaned)
    if resolve is not None and answer_id:
        try:
            named = set(resolve(cleaned))
        except Exception:  # noqa: BLE001 - a resolver failure is not a correct answer
            named = set()
        if answer_id in named:
            return Verdict(True, "synonym", cleaned)
    return Verdict(False, None, cleaned)
