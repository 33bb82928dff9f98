"""Where medkit reads and writes: the repository folders and the download cache.

Environment overrides: ``MEDKIT_DATA`` (built data, default ``<repo>/data``),
``MEDKIT_RESULTS`` (executed notebooks, figures, metrics; default ``<repo>/results``)
and ``MEDKIT_CACHE`` (downloaded wheels and converted models; default
``~/.cache/medkit``, shared between clones).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of built data (knowledge base tables and per-profile artifacts)."""
    return Path(os.environ.get("MEDKIT_DATA", REPO_ROOT / "data"))


def kb_dir() -> Path:
    """The profile-independent knowledge base built from the ontology packages."""
    return data_dir() / "kb"


def profile_data_dir(profile: str) -> Path:
    """Artifacts of one profile's pipeline run (mentions, rare entities, KG, ...)."""
    return data_dir() / profile


def results_dir(profile: str | None = None) -> Path:
    """Executed notebooks, figures and metrics; per profile when one is given."""
    root = Path(os.environ.get("MEDKIT_RESULTS", REPO_ROOT / "results"))
    return root if profile is None else root / profile


def cache_dir() -> Path:
    """Download cache for wheels fetched without dependencies and converted models."""
    return Path(os.environ.get("MEDKIT_CACHE", Path.home() / ".cache" / "medkit"))


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks"
