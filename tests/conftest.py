"""Shared fixtures: the real knowledge base (built once if missing) and small real slices of it."""

from __future__ import annotations

import os

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def kb_tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from medkit import kb

    kb.build_kb(progress=lambda _: None)
    return kb.load_kb()


@pytest.fixture(scope="session")
def entities(kb_tables):
    return kb_tables[0]


@pytest.fixture(scope="session")
def relations(kb_tables):
    return kb_tables[1]


@pytest.fixture(scope="session")
def passages(kb_tables):
    return kb_tables[2]


@pytest.fixture(scope="session")
def matcher(entities):
    from medkit import ner

    return ner.Matcher(ner.build_surfaces(entities))


@pytest.fixture(scope="session")
def passage_slice(passages) -> pd.DataFrame:
    """1,500 real passages from every source, sampled with a fixed seed."""
    return passages.sample(1500, random_state=7).sort_values("passage_id").reset_index(drop=True)
