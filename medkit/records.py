"""Record schemas, enforced where the kit reads a question or trajectory file.

Scope: :class:`EvalQuestion`, the fields an evaluation needs from any question record — the kit's
own (notebook 03), the paper authors' format (``question``, ``answer``, ``reasoning_path`` …, no
``id`` or ``hops``) or a benchmark's rows — and :class:`KitQuestion`, the kit's own records that
synthesis and GRPO walk (a chain consistent with its hops and answer), validated with pydantic;
:func:`load_questions` reads a JSONL file of either. Bad input is one clear error naming the file,
line and field: a missing or non-string ``question`` / ``answer``, ``hops`` that is not a positive
integer, a chain that disagrees with its hops or answer, a duplicate id, invalid UTF-8 or a torn line (the file is written whole, so a torn line is damage,
not an interrupted append). A record without an id gets a stable one from its question text
(:func:`derived_id`); a record without ``hops`` or ``specialty`` keeps ``None``, which evaluation
reports as an ``unknown`` bucket and never as 0 hops. :class:`TrajectoryRow` is a TRL training row
(chat messages with ``tool_calls`` and ``tool`` observations, the tool schemas as a JSON string), checked
by :func:`load_trajectories` before SFT so that a bad row fails with its line, not later inside the
chat template.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class KitQuestion(EvalQuestion):
    """A question record as notebook 03 writes it and notebooks 04–07 train on: the upstream fields plus
    the structured chain that synthesis walks (an id, the answer's id and a consistent chain required)."""

    id: str = Field(min_length=1)
    answer_id: str = Field(min_length=1)
    hops: int = Field(ge=1)
    chain: list[str] = Field(min_length=2)
    constraints: list[dict[str, Any]] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent_chain(self) -> "KitQuestion":
        if len(self.chain) != self.hops + 1:
            raise ValueError(f"chain has {len(self.chain)} entities for {self.hops} hops")
        if len(self.constraints) != len(self.chain):
            raise ValueError(f"{len(self.constraints)} constraints for a chain of {len(self.chain)}")
        if self.chain[-1] != self.answer_id:
            raise ValueError(f"the chain ends at {self.chain[-1]!r}, not at answer_id {self.answer_id!r}")
        return self


def schema_error(e: ValidationError, path: str | Path, line: int) -> InputError:
    """One line for a record that failed its schema: the first wrong field with its message and value,
    and the names of any other wrong fields."""
    errors = e.errors()
    err = errors[0]
    field = ".".join(str(x) for x in err["loc"]) or None  # empty for a check across fields
    got = f" (got {err['input']!r:.60})" if err["type"] != "missing" else ""
    more = sorted({".".join(str(x) for x in o["loc"]) for o in errors[1:]} - {field or ""})
    also = f"; also wrong: {', '.join(more)}" if more else ""
    return InputError(path, f"{err['msg'].removeprefix('Value error, ')}{got}{also}", line=line, field=field)


def derived_id(question: str) -> str:
    """A stable id for a record that has none: 12 hex digits of the SHA-1 of its whitespace-normalised text."""
    return hashlib.sha1(" ".join(question.split()).encode("utf-8")).hexdigest()[:12]


def validate_question(record: dict[str, Any], path: str | Path, line: int,
                      schema: type[EvalQuestion] = EvalQuestion) -> dict[str, Any]:
    """One record checked against ``schema`` (:func:`check_questions` derives a missing id first, where allowed)."""
    try:
        return schema.model_validate(record).model_dump()
    except ValidationError as e:
        raise schema_error(e, path, line) from None


def load_questions(path: str | Path, schema: type[EvalQuestion] = EvalQuestion) -> list[dict[str, Any]]:
    """Every record of a question JSONL file, validated against ``schema`` (:class:`KitQuestion` for the
    kit's own training files); duplicate ids are refused with both lines."""
    return check_questions(mio.read_jsonl_numbered(path, allow_truncated_tail=False), path, schema)


def check_questions(numbered: Iterable[tuple[int, dict[str, Any]]], path: str | Path,
                    schema: type[EvalQuestion] = EvalQuestion,
                    id_parts: tuple[str, ...] = ("question",)) -> list[dict[str, Any]]:
    """``(line, record)`` pairs of one file validated against ``schema``: the rule every question file the kit
    evaluates goes through (JSONL here, MedBrowseComp's CSV in :mod:`medkit.medbrowsecomp`). A record without
    an id gets :func:`derived_id` of its ``id_parts`` fields where ``schema`` allows that (not the kit's own
    records); a duplicate id is refused with both lines."""
    out: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    derive = not schema.model_fields["id"].is_required()  # the kit's own records must carry their id
    for line, record in numbered:
        if derive and isinstance(record, dict) and record.get("id") is None and isinstance(record.get("question"), str):
            record = {**record, "id": derived_id(" | ".join(str(record.get(k) or "") for k in id_parts))}
        rec = validate_question(record, path, line, schema)
        if rec["id"] in first:
            raise InputError(path, f"duplicate id {rec['id']!r} (first on line {first[rec['id']]})", line=line,
                             field="id")
        first[rec["id"]] = line
        out.append(rec)
    if not out:
        raise InputError(path, "no question records")
    return out


class FunctionCall(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str = Field(min_length=1)
    arguments: dict[str, Any]


class ToolCall(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message as TRL's chat template reads it."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def _has_text_or_call(self) -> "Message":
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs a string content")
        if self.role != "assistant" and self.tool_calls:
            raise ValueError(f"a {self.role} message cannot carry tool_calls")
        if self.role == "assistant" and not self.content and not self.tool_calls:
            raise ValueError("an assistant message needs a content or tool_calls")
        return self


class TrajectoryRow(BaseModel):
    """A row of ``trajectories.jsonl``: what SFT trains on."""

    model_config = ConfigDict(extra="allow", strict=True)

    messages: list[Message] = Field(min_length=2)
    tools: str

    @model_validator(mode="after")
    def _learnable(self) -> "TrajectoryRow":
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("no assistant turn to learn from")
        try:
            schemas = json.loads(self.tools)
        except ValueError as e:
            raise ValueError(f"tools is not valid JSON ({e})") from None
        if not isinstance(schemas, list) or not all(isinstance(t, dict) for t in schemas):
            raise ValueError("tools must be a JSON list of tool schemas")
        return self


def load_trajectories(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a trajectory file, each checked against :class:`TrajectoryRow` (the rows are returned
    as they are in the file; errors name the file, line and field)."""
    rows = []
    for line, row in mio.read_jsonl_numbered(path, allow_truncated_tail=False):
        try:
            TrajectoryRow.model_validate(row)
        except ValidationError as e:
            raise schema_error(e, path, line) from None
        rows.append(row)
    if not rows:
        raise InputError(path, "no trajectories in the file (run notebook 04 first)")
    return rows
