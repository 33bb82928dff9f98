"""What the notebook generators share: markdown / code cells, and writing with stable cell ids."""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


class Builder:
    """Collects cells in order; ``write`` saves them without outputs and with ids ``cell-NN``."""

    def __init__(self) -> None:
        self.cells: list = []

    def md(self, source: str) -> None:
        self.cells.append(nbf.v4.new_markdown_cell(source.strip("\n")))

    def code(self, source: str, tags: list[str] | None = None) -> None:
        cell = nbf.v4.new_code_cell(source.strip("\n"))
        if tags:
            cell.metadata["tags"] = tags
        self.cells.append(cell)

    def write(self, path: Path) -> None:
        nb = nbf.v4.new_notebook(cells=self.cells)
        for i, cell in enumerate(nb.cells):  # stable ids keep diffs readable
            cell.id = f"cell-{i:02d}"
        nb.metadata["kernelspec"] = KERNEL
        nbf.write(nb, str(path))
