"""The package's shape: modules talk through public functions only."""

import ast
from pathlib import Path

import medkit

PACKAGE = Path(medkit.__file__).parent
MODULES = {p.stem for p in PACKAGE.glob("*.py")}


def _medkit_aliases(tree: ast.Module) -> dict[str, str]:
    """Names bound to medkit modules in a module (``from . import agent as A``, ``from .agent import x``...)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("medkit")):
            base = (node.module or "").removeprefix("medkit").lstrip(".")
            for a in node.names:
                if not base and a.name in MODULES:
                    names[a.asname or a.name] = a.name
                elif base in MODULES and a.name.startswith("_"):
                    names["<import>" + a.name] = base
    return names


def test_no_module_reaches_into_another_modules_privates():
    offences = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = _medkit_aliases(tree)
        offences += [f"{path.name}: imports {k[8:]} from {v}" for k, v in aliases.items() if k.startswith("<import>")]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offences.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offences == []


def test_the_check_can_fail():
    tree = ast.parse("from . import agent as A\nA._act(1, 2, 3)\nfrom .llm import _eos_ids\n")
    aliases = _medkit_aliases(tree)
    assert aliases["A"] == "agent" and aliases["<import>_eos_ids"] == "llm"


def test_the_package_map_names_every_module_once_or_more():
    doc = medkit.__doc__
    missing = sorted(m for m in MODULES - {"__init__", "__main__"} if f":mod:`{m}`" not in doc)
    assert missing == [], "add them to medkit/__init__.py's notebook -> module map (and the README's)"
