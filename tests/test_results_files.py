"""The committed results: strict JSON that any reader parses, and executed notebooks and metrics
that name no machine (no absolute paths of the machine that ran them)."""

import json
import re
from pathlib import Path

import pytest

from medkit.paths import REPO_ROOT

RESULTS = REPO_ROOT / "results"
COMMITTED = sorted(p for p in RESULTS.rglob("*") if p.suffix in {".json", ".ipynb"} and not p.name.startswith(".")
                   and "smoke" not in p.relative_to(RESULTS).parts and not p.name.endswith(".failed.ipynb"))
MACHINE_PATH = re.compile(r"(?<![<\w])(?:/(?:home|work|root|tmp|Users|opt|usr|private)/[\w.-]+|[A-Z]:\\\\Users)")


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def test_there_are_committed_results():
    assert len(COMMITTED) > 10


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.relative_to(RESULTS).as_posix())
def test_results_file_is_strict_json_without_machine_paths(path: Path):
    text = path.read_text()
    json.loads(text, parse_constant=_reject_constant)
    hits = MACHINE_PATH.findall(text)
    assert not hits, f"{path.relative_to(REPO_ROOT)} names machine paths: {sorted(set(hits))[:5]}"
