"""Reported vs measured figures (medkit.reported) and the benchmark bar views (medkit.plots)."""

from __future__ import annotations

import json

import pytest

from medkit import plots, reported
from medkit.paths import REPO_ROOT


def test_reported_figures_are_the_papers_and_labelled():
    frame = reported.reported_frame()
    assert set(frame["kind"]) == {"reported"} and frame["source"].str.len().min() > 20
    # every source is a public citation a reader can follow, never a folder outside the project
    assert frame["source"].str.contains(r"arXiv:\d{4}\.\d{5}").all()
    assert not frame["source"].str.contains("shared/|docs/").any()
    row = frame[(frame["benchmark"] == "MedBrowseComp") & (frame["system"] == "MedResearcher-R1-32B")]
    assert row["pass@1"].tolist() == [27.5]
    assert frame.set_index(["benchmark", "system"]).loc[("xBench-DeepSearch", "WebSailor-32B"), "pass@1"] == 53.3


def test_measured_rows_carry_percent_sd_and_what_they_were_measured_on():
    m = {"sft": {"pass@1": {"mean": 0.0278, "sd": 0.0481}, "questions": 12, "rollouts": 3}}
    rows = reported.measured_rows(m, benchmark="kit held-out KG questions (cpu)", model="SmolLM2-135M")
    [r] = rows.to_dict("records")
    assert r["kind"] == "measured" and r["pass@1"] == pytest.approx(2.78) and r["sd"] == pytest.approx(4.81)
    assert r["system"] == "SmolLM2-135M sft" and "12 questions x 3 rollouts" in r["source"]


def test_benchmark_bars_read_the_committed_results():
    sft = json.loads((REPO_ROOT / "results" / "bench" / "sft.json").read_text())
    bars, label = plots.benchmark_bars("sft", sft)
    modes = {k for k, v in sft.items() if isinstance(v, dict) and v.get("mode") == k}
    assert set(bars) == modes and {"lora", "qlora"} <= modes and "tokens" in label  # ratios are not modes
    gen = json.loads((REPO_ROOT / "results" / "bench" / "generation.json").read_text())
    bars, _ = plots.benchmark_bars("generation", gen)
    assert bars["batch 16"] > bars["batch 1"]
    with pytest.raises(ValueError):
        plots.benchmark_bars("nonsense", {})


def test_reported_vs_measured_plot_draws_every_row():
    m = {"sft": {"pass@1": {"mean": 0.03, "sd": 0.05}, "questions": 12, "rollouts": 3}}
    frame = reported.reported_frame()
    import pandas as pd

    frame = pd.concat([frame, reported.measured_rows(m, benchmark="kit", model="m")], ignore_index=True)
    fig = plots.reported_vs_measured(frame)
    assert len(fig.axes[0].patches) == len(frame)


def test_an_endpoint_run_is_a_measured_bar_labelled_with_its_scoring():
    from medkit.reported import endpoint_rows

    summary = {"questions": 50, "k": 1, "endpoint": {"base_url": "http://x/v1", "model": "MedResearcher-R1-32B"},
               "rules": {"pass@1": {"mean": 0.2, "sd": 0.0, "ci95": [0.1, 0.32]}}, "judge": None}
    (row,) = endpoint_rows(summary).to_dict("records")
    assert row["benchmark"] == "MedBrowseComp (MBC-50)" and row["pass@1"] == 20.0 and row["kind"] == "measured"
    assert "lower bound" in row["source"] and "95% CI 10.0-32.0" in row["source"]
    judged = {**summary, "questions": 605, "judge": {"pass@1": {"mean": 0.3, "sd": 0.01, "ci95": [0.26, 0.34]}}}
    (row,) = endpoint_rows(judged).to_dict("records")
    assert row["benchmark"] == "MedBrowseComp (MBC-605)" and row["pass@1"] == 30.0 and "LLM judge" in row["source"]
