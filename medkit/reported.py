"""Numbers reported by the paper and by benchmark maintainers, for plots beside the kit's own runs.

Scope (notebook 07): a small typed table of *reported* pass@1 figures (never measured here:
MedBrowseComp, GAIA and xBench-DeepSearch need web search and hosted models), each with where it
comes from, :func:`measured_rows` to put the kit's *measured* held-out results in the same
shape, always labelled with what they were measured on, and :func:`endpoint_rows` for a public
benchmark measured with ``python -m medkit eval-endpoint`` (a user's endpoint and web search).
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


def endpoint_rows(summary: Mapping[str, Any]) -> pd.DataFrame:
    """A measured public-benchmark bar from a ``python -m medkit eval-endpoint`` summary (:mod:`medkit.endpoint`):
    the LLM judge's pass@1 when the run had one (the benchmark's own scoring), else the judge-free rules' (a lower
    bound, said in ``source``). A MedBrowseComp run of 50 questions is MBC-50, of 605 MBC-605."""
    scored_by = "judge" if summary.get("judge") else "rules"
    m = summary[scored_by]
    n = int(summary["questions"])
    benchmark = {50: "MedBrowseComp (MBC-50)", 605: "MedBrowseComp (MBC-605)"}.get(n, f"MedBrowseComp ({n} questions)")
    p = m["pass@1"]
    how = ("the benchmark's LLM judge" if scored_by == "judge"
           else "the judge-free rules (a lower bound of the LLM judge's score)")
    return pd.DataFrame([{"benchmark": benchmark, "system": str(summary["endpoint"]["model"]),
                          "pass@1": 100 * float(p["mean"]), "sd": 100 * float(p.get("sd") or 0.0), "kind": "measured",
                          "source": f"this kit's eval-endpoint, {n} questions x {summary['k']} rollouts, "
                                    f"95% CI {100 * p['ci95'][0]:.1f}-{100 * p['ci95'][1]:.1f}, scored by {how}"}])
