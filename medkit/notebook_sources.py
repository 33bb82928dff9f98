"""One editable source per notebook: each numbered ``notebooks/NN_name.ipynb`` is paired by jupytext
(``notebooks/jupytext.toml``) with ``NN_name.py`` in the ``py:percent`` format.

Scope: finding a notebook's twin and checking that the two hold the same cells (type, source and
tags — what papermill and a reader see), so neither an edit in JupyterLab nor one in an editor is
silently lost. ``make sync-notebooks`` (``jupytext --sync``) brings a pair back together, keeping the
newer side; the test suite and every pipeline run refuse a pair that disagrees.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

TWIN_SUFFIX = ".py"
SYNC_COMMAND = "make sync-notebooks"


def paired_script(notebook: Path) -> Path:
    """The ``py:percent`` twin of ``notebook``."""
    return notebook.with_suffix(TWIN_SUFFIX)


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip("\n"), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def pair_problems(notebook: Path) -> list[str]:
    """Where ``notebook`` and its twin disagree (empty when they hold the same cells)."""
    import jupytext
    import nbformat

    twin = paired_script(notebook)
    if not twin.exists():
        return [f"{twin.name} is missing (every notebook has a py:percent twin)"]
    a, b = _cells(nbformat.read(notebook, as_version=4)), _cells(jupytext.read(twin))
    problems = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            what = "cell type" if x[0] != y[0] else "tags" if x[2] != y[2] else "source"
            first = (x[1].splitlines() or [""])[0][:60]
            problems.append(f"cell {i + 1} ({what}) differs; the notebook's starts {first!r}")
            break
    if len(a) != len(b):
        problems.append(f"{notebook.name} has {len(a)} cells, {twin.name} {len(b)}")
    return problems


def check_pair(notebook: Path) -> None:
    """Raise a :class:`ConfigError` naming the first disagreement when ``notebook`` and its twin differ."""
    problems = pair_problems(notebook)
    if problems:
        raise ConfigError(f"{notebook.name} and {paired_script(notebook).name} are out of sync: "
                          f"{'; '.join(problems)}. Run `{SYNC_COMMAND}` (jupytext --sync keeps the newer side).")
