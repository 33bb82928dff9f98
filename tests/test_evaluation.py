"""The evaluation harness (medkit.evaluation): k rollouts, metrics, MedBrowseComp's file format."""

from __future__ import annotations

import json

import pytest

from medkit import agent as A
from medkit import evaluation as E
from medkit.errors import InputError
from medkit.llm import Completion

FABRY_Q = {"id": "q1", "question": "Which disorder presents with angiokeratoma and hypohidrosis?",
           "answer": "Fabry disease", "answer_id": "MONDO:0010526", "answer_aliases": ["Fabry disease"],
           "hops": 2, "specialty": "Nephrology"}
GENE_Q = {"id": "q2", "question": "Which gene is linked to Fabry disease?", "answer": "GLA",
          "answer_id": "NCBIGene:2717", "answer_aliases": ["GLA"], "hops": 3, "specialty": "Genetics"}


# which rollout a turn's seed belongs to (seed 13, rollouts 0-2, either question, the first turns)
ROLLOUT_OF_SEED = {A.conversation_seed(13 + 1000 * j, qid, 0, turn): j
                   for j in range(3) for qid in ("q1", "q2") for turn in range(4)}


class BySeed:
    """Replies depend on the rollout seed: rollout 0 answers right, rollout 1 wrong, rollout 2 in prose."""

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, stop=None, seed=None):
        out = []
        for conv, row_seed in zip(conversations, seed):
            q = next(m["content"] for m in conv if m["role"] == "user")
            answered = conv[-1]["role"] == "user" and conv[-1]["content"].startswith("<tool_response>")
            right = "Fabry disease" if "angiokeratoma" in q else "GLA"
            rollout = ROLLOUT_OF_SEED[row_seed]
            if rollout == 0:
                text = (f"<think>Done.</think><answer>{right}" if answered else
                        '<think>Look it up.</think><tool_call>{"name": "lookup", "arguments": {"name": "Fabry disease"}}')
            elif rollout == 1:
                text = "<think>Guess.</think><answer>Hepatitis B"
            else:
                text = "It is probably something rare."
            out.append(Completion(text, 50, 10, "stop"))
        return out


def test_evaluate_and_metrics(toolbox):
    rows = E.evaluate(BySeed(), toolbox, [FABRY_Q, GENE_Q], k=3, config=A.AgentConfig(max_calls=3), progress=False)
    assert len(rows) == 6 and {r["rollout"] for r in rows} == {0, 1, 2}
    m = E.metrics(rows)
    assert m["questions"] == 2 and m["rollouts"] == 3
    assert m["pass@1"]["mean"] == pytest.approx(1 / 3, abs=1e-4) and m["pass@1"]["sd"] == pytest.approx(0.5774, abs=1e-3)
    assert m["pass@k"] == 1.0
    assert m["answer_rate"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["stop_reasons"] == {"answer": 4, "format_errors": 2}
    assert m["tool_calls_per_question"] == pytest.approx(2 / 6, abs=1e-3)
    assert m["format_error_rate"] > 0
    assert set(m["pass@1_by_hops"]) == {"2", "3"} and m["pass@1_by_specialty"]["Nephrology"]["questions"] == 1
    low, high = m["pass@1"]["ci95"]  # over 2 questions with accuracies 1/3 each: no spread
    assert low == high == pytest.approx(1 / 3, abs=1e-4) and m["pass@1_by_hops"]["2"]["ci95"] is not None
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError):
        E.evaluate(BySeed(), toolbox, [FABRY_Q], k=0)


def test_evaluate_counts_repeated_calls_apart_from_tool_errors(toolbox):
    class Repeater:  # the same call every turn: run once, then a reminder, then the stop
        def generate(self, conversations, **_):
            return [Completion('<think>Again.</think><tool_call>{"name": "neighbors", "arguments": {"id": "MONDO:1"}}',
                               50, 10, "stop") for _ in conversations]

    [row] = E.evaluate(Repeater(), toolbox, [FABRY_Q], k=1, config=A.AgentConfig(max_calls=6), progress=False)
    assert row["stop_reason"] == "repeated_call" and row["n_repeated_calls"] == 1
    assert row["n_tool_errors"] == 2  # the tool's own error (no such tool) and the reminder
    split = E.by_tool_errors([row])
    assert split["with_tool_rejection"]["rollouts"] == 1 and split["repeats_only"]["rollouts"] == 0


def test_short_chain_pass_at_1_counts_only_questions_of_at_most_three_hops():
    def row(q, hops, correct, rollout=0):
        return {"question_id": q, "rollout": rollout, "correct": correct, "stop_reason": "answer", "n_format_errors": 0,
                "n_model_calls": 1, "n_tool_calls": 1, "n_tool_errors": 0, "hops": hops, "specialty": None}
    rows = [row("a", 2, True), row("b", 3, False), row("c", 5, True), row("d", None, True)]
    short = E.metrics(rows)["pass@1_max3_hops"]
    assert short["questions"] == 2 and short["mean"] == 0.5  # c (5 hops) and d (unknown) are not short chains
    assert E.metrics([row("c", 5, True)])["pass@1_max3_hops"] is None


def test_metrics_of_nothing():
    assert E.metrics([]) == {"questions": 0}


def test_by_tool_errors_splits_rollouts_on_a_failed_call():
    def row(q, errors, stop, correct):
        return {"question_id": q, "rollout": 0, "correct": correct, "stop_reason": stop, "n_tool_errors": errors}

    rows = [row("a", 0, "answer", True), row("b", 0, "answer", False), row("c", 0, "format_errors", False),
            row("d", 2, "repeated_call", False), row("e", 1, "answer", True), row("f", 1, "answer", False),
            row("g", 3, "answer", False), row("h", 1, "repeated_call", False)]
    out = E.by_tool_errors(rows)
    assert out["rollouts"] == 8 and out["share_with_tool_error"] == 0.625
    clean, failed = out["no_tool_error"], out["with_tool_error"]
    assert clean == {"rollouts": 3, "correct_rate": 0.3333, "answered": 2, "correct_rate_when_answered": 0.5,
                     "stop_reasons": {"answer": 2, "format_errors": 1}}
    assert failed["rollouts"] == 5 and failed["answered"] == 3 and failed["correct_rate"] == 0.2
    assert failed["correct_rate_when_answered"] == 0.3333 and failed["stop_reasons"] == {"answer": 3, "repeated_call": 2}
    none = E.by_tool_errors([row("a", 1, "repeated_call", False)])
    assert none["no_tool_error"]["correct_rate"] is None and none["with_tool_error"]["correct_rate_when_answered"] is None
    assert E.by_tool_errors([])["share_with_tool_error"] is None


def test_by_tool_errors_tells_tool_rejections_from_repeats_when_rows_count_them():
    def row(q, errors, repeats, stop, correct):
        return {"question_id": q, "rollout": 0, "correct": correct, "stop_reason": stop, "n_tool_errors": errors,
                "n_repeated_calls": repeats}

    rows = [row("a", 0, 0, "answer", True), row("b", 1, 0, "answer", False), row("c", 2, 1, "answer", True),
            row("d", 1, 1, "repeated_call", False), row("e", 1, 1, "answer", True)]
    out = E.by_tool_errors(rows)
    assert out["with_tool_error"]["rollouts"] == 4
    assert out["with_tool_rejection"] == {"rollouts": 2, "correct_rate": 0.5, "answered": 2,
                                          "correct_rate_when_answered": 0.5, "stop_reasons": {"answer": 2}}
    assert out["repeats_only"]["rollouts"] == 2 and out["repeats_only"]["correct_rate_when_answered"] == 1.0
    legacy = E.by_tool_errors([{k: v for k, v in r.items() if k != "n_repeated_calls"} for r in rows])
    assert "with_tool_rejection" not in legacy and legacy["with_tool_error"]["rollouts"] == 4  # older rows: no split


def test_agreement_counts_rollouts_two_runs_drew_alike():
    def row(q, j, pred, tokens=100, correct=False):
        return {"question_id": q, "rollout": j, "correct": correct, "prediction": pred, "stop_reason": "answer",
                "n_tool_calls": 3, "n_model_calls": 4, "n_format_errors": 0, "n_tool_errors": 0, "n_tokens": tokens}

    a = [row("q1", 0, "X"), row("q1", 1, "Y"), row("q2", 0, "Z", tokens=90), row("q3", 0, "W")]
    b = [row("q1", 0, "X"), row("q1", 1, "V"), row("q2", 0, "Z", tokens=95), row("q4", 0, "W")]
    out = E.agreement(a, b)
    # q1/0 is the same rollout; q2/0 the same answer by another path (token count); q1/1 differs; q3, q4 unmatched
    assert out == {"matched": 3, "only_a": 1, "only_b": 1, "same_prediction": 2, "same_rollout": 1,
                   "same_prediction_share": 0.6667, "same_rollout_share": 0.3333}
    assert E.agreement([], b)["same_rollout_share"] is None
    with pytest.raises(InputError, match="q1 rollout 0 appears twice"):
        E.agreement(a + [row("q1", 0, "X")], b)


def test_select_questions_keeps_file_order_and_the_hop_limit():
    recs = [{"id": str(i), "hops": h} for i, h in enumerate([6, 2, 4, 3, 5, 2])]
    assert [r["id"] for r in E.select_questions(recs, max_hops=3)] == ["1", "3", "5"]
    assert [r["id"] for r in E.select_questions(recs, 2, max_hops=4)] == ["1", "2"]
    assert E.select_questions(recs) == recs and E.select_questions(recs, 1) == recs[:1]


def test_learning_curve_plots_a_stage_table_keyed_by_data_seen():
    import matplotlib

    matplotlib.use("Agg")
    from medkit import plots

    def rows(right):  # 4 questions x 2 rollouts, `right` of the 4 answered correctly in both
        return [{"question_id": f"q{i}", "rollout": j, "correct": i < right, "stop_reason": "answer",
                 "n_format_errors": 0, "n_model_calls": 2, "n_tool_calls": 1, "n_tool_errors": 0, "hops": 2,
                 "specialty": "x"} for i in range(4) for j in range(2)]

    table = E.stage_table({0: E.metrics(rows(0)), 32: E.metrics(rows(1)), 64: E.metrics(rows(3))})
    fig = plots.learning_curve(table, "curve")
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [0, 32, 64] and list(line.get_ydata()) == [0.0, 0.25, 0.75]
    assert table.loc[64, "ci95 low"] < 0.75 < table.loc[64, "ci95 high"]


def test_group_and_paired_tables_and_their_figures():
    import matplotlib

    matplotlib.use("Agg")
    from medkit import plots

    def rows(right, hops=(2, 2, 3, 3)):  # 4 questions x 2 rollouts; the first `right` answered correctly
        return [{"question_id": f"q{i}", "rollout": j, "correct": i < right, "stop_reason": "answer",
                 "n_format_errors": 0, "n_model_calls": 2, "n_tool_calls": 1, "n_tool_errors": 0, "hops": hops[i],
                 "specialty": "Neurology" if i % 2 else "Cardiology"} for i in range(4) for j in range(2)]

    runs = {"base": rows(0), "sft": rows(2), "sft+grpo": rows(3)}
    m = {name: E.metrics(r) for name, r in runs.items()}
    hops = E.by_group(m, "hops")
    assert list(hops.columns) == ["base", "sft", "sft+grpo"] and hops.index.name == "hops"
    assert hops.loc["2", "sft"] == 1.0 and hops.loc["3", "sft"] == 0.0 and hops.loc["3", "sft+grpo"] == 0.5
    spec = E.by_group(m, "specialty")
    assert spec.loc["Cardiology", "sft+grpo"] == 1.0 and spec.loc["Neurology", "sft"] == 0.5
    with pytest.raises(ValueError):
        E.by_group(m, "rollout")
    paired = E.paired_table(E.compare(runs, {"sft_minus_base": ("base", "sft"), "grpo_minus_sft": ("sft", "sft+grpo")}))
    assert paired.loc["sft_minus_base", "mean"] == 0.5 and paired.loc["sft_minus_base", "questions better"] == 2
    assert paired.loc["grpo_minus_sft", "questions worse"] == 0 and paired.loc["grpo_minus_sft", "questions"] == 4
    fig = plots.stage_panels(E.stage_table(m))
    assert len(fig.axes) == 4 and [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["base", "sft", "sft+grpo"]
    fig = plots.by_hops_and_specialty(hops, spec)
    texts = {t.get_text() for t in fig.axes[1].texts}
    assert {"1.00", "0.50", "0.00"} <= texts and fig.axes[0].get_title() == "pass@1 by hop count"
