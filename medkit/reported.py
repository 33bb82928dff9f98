"""Numbers reported by the paper and by benchmark maintainers, for plots beside the kit's own runs.

Scope (notebook 07): a small typed table of *reported* pass@1 figures (never measured here:
MedBrowseComp, GAIA and xBench-DeepSearch need web search and hosted models), each with where it
comes from, and :func:`measured_rows` to put the kit's *measured* held-out results in the same
shape, always labelled with what they were measured on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

PAPER = ("MedResearcher-R1 (Yu et al. 2025, arXiv:2508.14880, github.com/AQ-MedAI/MedResearcher-R1): "
         "reported pass@1, the paper's results table")
MBC_REPO = ("MedBrowseComp maintainers (Chen et al. 2025, arXiv:2505.14963, github.com/shan23chen/MedBrowseComp): "
            "reported MBC-50 pass@1; not in the repository README version read on 2026-12-04, so unverified here")

# (benchmark, system, pass@1 in %, source)
REPORTED: tuple[tuple[str, str, float, str], ...] = (
    ("MedBrowseComp", "MedResearcher-R1-32B", 27.5, PAPER),
    ("MedBrowseComp", "o3-deepresearch", 25.5, PAPER),
    ("MedBrowseComp", "Gemini-2.5-Pro deep search", 25.0, PAPER),
    ("MedBrowseComp (MBC-50)", "Perplexity Deep Research", 30.0, MBC_REPO),
    ("MedBrowseComp (MBC-50)", "Gemini Pro", 24.0, MBC_REPO),
    ("GAIA (text)", "MedResearcher-R1-32B", 53.4, PAPER),
    ("GAIA (text)", "WebSailor-32B", 53.2, PAPER),
    ("xBench-DeepSearch", "MedResearcher-R1-32B", 54.0, PAPER),
    ("xBench-DeepSearch", "WebSailor-32B", 53.3, PAPER),
)


def reported_frame() -> pd.DataFrame:
    """The reported figures: benchmark, system, pass@1 (%), sd (unknown: NaN), kind="reported", source."""
    return pd.DataFrame([{"benchmark": b, "system": s, "pass@1": v, "sd": float("nan"), "kind": "reported",
                          "source": src} for b, s, v, src in REPORTED])


def measured_rows(metrics: Mapping[str, Mapping[str, Any]], *, benchmark: str, model: str) -> pd.DataFrame:
    """The kit's runs in the same shape: ``metrics`` maps a stage name to :func:`medkit.evaluation.metrics`."""
    rows = []
    for stage, m in metrics.items():
        p = m.get("pass@1") or {}
        rows.append({"benchmark": benchmark, "system": f"{model} {stage}", "pass@1": 100 * float(p.get("mean", 0.0)),
                     "sd": 100 * float(p.get("sd", 0.0)), "kind": "measured",
                     "source": f"this kit, {m.get('questions')} questions x {m.get('rollouts')} rollouts"})
    return pd.DataFrame(rows)
