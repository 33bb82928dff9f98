"""Where medkit reads and writes: the repository folders and the download cache.

Environment overrides: ``MEDKIT_DATA`` (built data, default ``<repo>/data``),
``MEDKIT_RESULTS`` (executed notebooks, figures, metrics; default ``<repo>/results``)
and ``MEDKIT_CACHE`` (downloaded wheels and converted models; default
``~/.cache/medkit``, shared between clones). A relative override is made absolute once, by the
command line from the folder it was started in (:func:`absolute_env`), else from the repository root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


ENV_FOLDERS = ("MEDKIT_DATA", "MEDKIT_RESULTS", "MEDKIT_CACHE")


def _env_folder(name: str, default: Path) -> Path:
    """An environment override as an absolute path: a relative one is taken from the repository root,
    whatever the current folder (notebook kernels run in ``notebooks/``, the CLI wherever it was started;
    the CLI first makes its own relative values absolute: :func:`absolute_env`)."""
    value = os.environ.get(name)
    if not value:
        return default
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def absolute_env(cwd: Path | None = None) -> None:
    """Rewrite relative ``MEDKIT_*`` folders as absolute ones, taken from ``cwd`` (default: the current
    folder), so that every process started from here (kernels, children) writes to the same place."""
    for name in ENV_FOLDERS:
        value = os.environ.get(name)
        if value and not Path(value).expanduser().is_absolute():
            os.environ[name] = str(((cwd or Path.cwd()) / Path(value).expanduser()).resolve())


def data_dir() -> Path:
    """Root of built data (knowledge base tables and per-profile artifacts)."""
    return _env_folder("MEDKIT_DATA", REPO_ROOT / "data")


def kb_dir() -> Path:
    """The profile-independent knowledge base built from the ontology packages."""
    return data_dir() / "kb"


def profile_data_dir(profile: str) -> Path:
    """Artifacts of one profile's pipeline run (mentions, rare entities, KG, ...)."""
    return data_dir() / profile


def results_dir(profile: str | None = None) -> Path:
    """Executed notebooks, figures and metrics; per profile when one is given."""
    root = _env_folder("MEDKIT_RESULTS", REPO_ROOT / "results")
    return root if profile is None else root / profile


def cache_dir() -> Path:
    """Download cache for wheels fetched without dependencies and converted models."""
    return _env_folder("MEDKIT_CACHE", Path.home() / ".cache" / "medkit")


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks"


def portable(path: str | Path | None) -> str | None:
    """``path`` as results files record it: relative to the repository (``data/cpu/sft/adapter``), or to the
    data / results root it lies under (``data/…``, ``results/…`` even when ``MEDKIT_DATA`` /
    ``MEDKIT_RESULTS`` move them), so committed metrics never hold a machine's absolute paths; a path
    outside all of them stays absolute."""
    if path is None:
        return None
    p = Path(path).resolve()
    for root, name in ((data_dir(), "data"), (results_dir(), "results"), (REPO_ROOT, None)):
        try:
            rel = p.relative_to(Path(root).resolve())
        except ValueError:
            continue
        return (Path(name) / rel).as_posix() if name else rel.as_posix()
    return str(p)  # outside every root: only the full path says where


_SITE_PACKAGES = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s\"'<>]*?[\\/](?:site|dist)-packages[\\/]")


def portable_text(text: str) -> str:
    """``text`` (a notebook output, a warning, a log line) with this machine's absolute paths made
    portable: installed packages become ``<site-packages>/…``, the download cache ``<cache>/…``, and
    paths under the data / results roots or the repository become relative as :func:`portable` writes
    them. Executed notebooks committed under ``results/`` go through this, so they name no machine."""
    text = _SITE_PACKAGES.sub("<site-packages>/", text)
    roots = [(data_dir(), "data/"), (results_dir(), "results/"), (cache_dir(), "<cache>/"), (REPO_ROOT, "")]
    for root, name in sorted(roots, key=lambda r: -len(str(r[0]))):  # longest root first: data/ inside the repo
        for form in {str(Path(root)), str(Path(root).resolve())}:
            text = text.replace(form + os.sep, name).replace(form, name.rstrip("/") or ".")
    return text
