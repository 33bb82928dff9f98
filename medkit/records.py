"""Record schemas, enforced where the kit reads a question file for evaluation.

Scope: :class:`EvalQuestion`, the fields an evaluation needs from any question record — the kit's
own (notebook 03), the paper authors' format (``question``, ``answer``, ``reasoning_path`` …, no
``id`` or ``hops``) or a benchmark's rows — validated with pydantic, and :func:`load_questions`,
which reads a JSONL file of them. Bad input is one clear error naming the file, line and field:
a missing or non-string ``question`` / ``answer``, ``hops`` that is not a positive integer, a
duplicate id, invalid UTF-8 or a torn line (the file is written whole, so a torn line is damage,
not an interrupted append). A record without an id gets a stable one from its question text
(:func:`derived_id`); a record without ``hops`` or ``specialty`` keeps ``None``, which evaluation
reports as an ``unknown`` bucket and never as 0 hops.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import io as mio
from .errors import InputError


class EvalQuestion(BaseModel):
    """A question as evaluation reads it; other fields are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str | None = Field(default=None, min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    answer_id: str | None = None
    answer_aliases: list[str] = Field(default_factory=list)
    hops: int | None = Field(default=None, ge=1)
    specialty: str | None = None


def derived_id(question: str) -> str:
    """A stable id for a record that has none: 12 hex digits of the SHA-1 of its whitespace-normalised text."""
    return hashlib.sha1(" ".join(question.split()).encode("utf-8")).hexdigest()[:12]


def validate_question(record: dict[str, Any], path: str | Path, line: int) -> dict[str, Any]:
    """One record checked against :class:`EvalQuestion` (an id derived when it has none)."""
    try:
        rec = EvalQuestion.model_validate(record).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or None
        got = f" (got {err['input']!r:.60})" if err["type"] != "missing" else ""
        raise InputError(path, f"{err['msg']}{got}", line=line, field=field) from None
    if rec["id"] is None:
        rec["id"] = derived_id(rec["question"])
    return rec


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a question JSONL file, validated; duplicate ids are refused with both lines."""
    out: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    for line, record in mio.read_jsonl_numbered(path, allow_truncated_tail=False):
        rec = validate_question(record, path, line)
        if rec["id"] in first:
            raise InputError(path, f"duplicate id {rec['id']!r} (first on line {first[rec['id']]})", line=line,
                             field="id")
        first[rec["id"]] = line
        out.append(rec)
    if not out:
        raise InputError(path, "no question records")
    return out
