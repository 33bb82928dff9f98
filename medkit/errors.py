"""Error types that medkit raises for bad input.

Every error names the file (and line / field where known) and what is wrong, so a
user sees a one-line explanation instead of a traceback from deep inside a library.
"""

from __future__ import annotations

from pathlib import Path


class MedkitError(Exception):
    """Base class of all errors medkit raises on purpose."""


class InputError(MedkitError):
    """A source or artifact file is missing, empty, corrupt or malformed."""

    def __init__(self, path: str | Path | None, problem: str, *, line: int | None = None,
                 field: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.line = line
        self.field = field
        where = self.path or "<input>"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


class ConfigError(MedkitError):
    """An unknown profile, parameter or option."""
