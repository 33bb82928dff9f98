"""The composite GRPO reward (medkit.rewards) on hand-made trajectories, one behaviour per test."""

from __future__ import annotations

import pytest

from medkit import rewards as R

RECORD = {"answer": "Fabry disease", "answer_id": "MONDO:0010526", "answer_aliases": ["Anderson-Fabry disease"]}


def _call(name: str, think: str = "I check.") -> dict:
    return {"role": "assistant", "content": f"<think>{think}</think>",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {"entity_id": "X"}}}]}


def _tool(content: str) -> dict:
    return {"role": "tool", "name": "related", "content": content}


def _answer(text: str) -> dict:
    return {"role": "assistant", "content": f"<think>Done.</think>\n<answer>{text}</answer>"}


def rollout(messages, prediction, *, n_model_calls=None, format_errors=(), n_tokens=1500):
    calls = sum(1 for m in messages if m.get("tool_calls"))
    return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, *messages],
            "prediction": prediction, "format_errors": list(format_errors), "n_tool_calls": calls,
            "n_model_calls": n_model_calls if n_model_calls is not None else calls + (1 if prediction else 0),
            "n_tokens": n_tokens}


SEARCH_VERIFY = rollout([_call("diagnose"), _tool("1. Fabry disease (MONDO:0010526) score=-0.7"),
                         _call("related", "To verify, I check its phenotypes."), _tool("Fabry disease — has_phenotype: ..."),
                         _answer("Fabry disease")], "Fabry disease")


def test_accuracy_uses_the_harness_judge():
    assert R.accuracy(SEARCH_VERIFY, RECORD) == 1.0
    assert R.accuracy({**SEARCH_VERIFY, "prediction": "Anderson-Fabry disease"}, RECORD) == 1.0  # KG synonym
    assert R.accuracy({**SEARCH_VERIFY, "prediction": "Fabry disease or Gaucher disease"}, RECORD) == 0.0  # hedged
    assert R.accuracy({**SEARCH_VERIFY, "prediction": None}, RECORD) == 0.0
    resolve = {"GLA deficiency": ["MONDO:0010526"]}.get
    assert R.accuracy({**SEARCH_VERIFY, "prediction": "GLA deficiency"}, RECORD, resolve=lambda s: resolve(s, [])) == 1.0


def test_search_then_verify_earns_the_full_preference():
    assert R.preference_parts(SEARCH_VERIFY) == {"well_formed": 1.0, "grounded": 1.0, "verified": 1.0}
    assert R.preference(SEARCH_VERIFY) == 1.0


def test_answer_right_after_the_first_candidate_is_not_verified():
    r = rollout([_call("diagnose"), _tool("1. Fabry disease (MONDO:0010526)"), _answer("Fabry disease")], "Fabry disease")
    assert R.preference_parts(r) == {"well_formed": 1.0, "grounded": 1.0, "verified": 0.0}


def test_a_guess_never_seen_in_a_tool_response_is_not_grounded():
    r = rollout([_call("diagnose"), _tool("1. Gaucher disease (MONDO:0018150)"), _call("related"),
                 _tool("nothing useful"), _answer("Fabry disease")], "Fabry disease")
    parts = R.preference_parts(r)
    assert parts["grounded"] == 0.0 and parts["verified"] == 0.0
    # the question text itself does not count as evidence; only tool responses do
    r["messages"][1]["content"] = "Which disease, like Fabry disease, ...?"
    assert R.preference_parts(r)["grounded"] == 0.0
    # matching is on whole words: "Fabryx disease" does not mention "Fabry disease"
    partial = rollout([_call("search"), _tool("Fabryx disease (X:1)"), _answer("Fabry disease")], "Fabry disease")
    assert R.preference_parts(partial)["grounded"] == 0.0


def test_format_errors_lower_well_formed_and_no_answer_keeps_only_that_part():
    r = rollout([_call("search"), _tool("..."), {"role": "assistant", "content": "prose"},
                 {"role": "user", "content": "Error: no <think> block"}], None, n_model_calls=2,
                format_errors=[{"turn": 2, "errors": ["no <think> block"]}])
    assert R.preference_parts(r) == {"well_formed": 0.5, "grounded": 0.0, "verified": 0.0}
    assert R.preference(r) == pytest.approx(0.5 / 3, abs=1e-4)
    assert R.preference(rollout([], None, n_model_calls=0)) == 0.0


def test_efficiency_penalty_counts_calls_and_tokens_over_budget():
    assert R.efficiency_penalty(SEARCH_VERIFY, call_budget=8, token_budget=3072) == 0.0
    many = {**SEARCH_VERIFY, "n_tool_calls": 12}
    assert R.efficiency_penalty(many, call_budget=8) == pytest.approx(0.25)  # (4/8) / 2
    long = {**SEARCH_VERIFY, "n_tokens": 4608}
    assert R.efficiency_penalty(long, token_budget=3072) == pytest.approx(0.25)  # (1536/3072) / 2
    worst = {**SEARCH_VERIFY, "n_tool_calls": 100, "n_tokens": 100_000}
    assert R.efficiency_penalty(worst) == 1.0  # capped
    with pytest.raises(ValueError):
        R.efficiency_penalty(SEARCH_VERIFY, call_budget=0)


def test_composite_weights_each_term_and_switches_terms_off():
    full = R.composite(SEARCH_VERIFY, RECORD)
    assert full["total"] == pytest.approx(1.0 + 0.3 * 1.0 - 0.0)
    wrong_slow = {**SEARCH_VERIFY, "prediction": "Gaucher disease", "n_tool_calls": 16}
    out = R.composite(wrong_slow, RECORD, R.RewardWeights(accuracy=1.0, preference=0.0, efficiency=0.5), gate=False)
    assert out["accuracy"] == 0.0 and out["efficiency"] == 0.5 and out["total"] == pytest.approx(-0.25)
    assert set(R.TERMS) <= set(out) and {"well_formed", "grounded", "verified", "efficiency_raw"} <= set(out)
    gated = R.composite(wrong_slow, RECORD, R.RewardWeights(accuracy=1.0, preference=0.0, efficiency=0.5))
    assert gated["efficiency"] == 0.0 and gated["efficiency_raw"] == 0.5 and gated["total"] == 0.0
    right_slow = {**SEARCH_VERIFY, "n_tool_calls": 16}  # a right answer pays for its cost
    assert R.composite(right_slow, RECORD)["total"] == pytest.approx(1.0 + 0.3 - 0.2 * 0.5)


# the answer is shown by the first observation; a wrong early answer names another entity that a tool showed
EARLY_WRONG = rollout([_call("diagnose"), _tool("1. Gaucher disease (MONDO:0018150)\n2. Fabry disease (MONDO:0010526)"),
                       _answer("Gaucher disease")], "Gaucher disease")
SEARCHING_NO_ANSWER = rollout([_call("diagnose"), _tool("1. Gaucher disease (MONDO:0018150)"), _call("related"),
                               _tool("..."), _call("related"), _tool("...")], None, n_tokens=5000)


def test_ungated_the_reward_pays_an_early_wrong_answer_more_than_searching_on():
    early = R.composite(EARLY_WRONG, RECORD, gate=False)
    searching = R.composite(SEARCHING_NO_ANSWER, RECORD, gate=False)
    assert early["accuracy"] == searching["accuracy"] == 0.0 and early["grounded"] == 1.0
    assert early["total"] > searching["total"]  # the hack: answer early with anything a tool showed


def test_gated_a_wrong_rollout_earns_only_its_well_formed_turns_however_it_ends():
    w = R.RewardWeights()
    for r in (EARLY_WRONG, SEARCHING_NO_ANSWER, {**SEARCH_VERIFY, "prediction": "Gaucher disease"}):
        out = R.composite(r, RECORD, w)
        assert out["accuracy"] == 0.0 and out["efficiency"] == 0.0
        assert out["total"] == pytest.approx(w.preference * out["well_formed"] / 3, abs=1e-4)
        assert out["total"] <= w.preference / 3 + 1e-9 < R.composite(SEARCH_VERIFY, RECORD, w)["total"]
    assert R.composite(EARLY_WRONG, RECORD)["total"] == R.composite(SEARCHING_NO_ANSWER, RECORD)["total"]
    assert R.preference(EARLY_WRONG, correct=False) == pytest.approx(1 / 3, abs=1e-4)
    assert R.preference(SEARCH_VERIFY, correct=True) == R.preference(SEARCH_VERIFY) == 1.0


def test_ablation_params_name_what_each_ablation_changes():
    from medkit import grpo as G
    from medkit.errors import ConfigError

    base = {"W_PREFERENCE": 0.3, "W_EFFICIENCY": 0.2, "GATE_PROCESS": True}
    assert G.ablation_params("grpo_from_base", base) == (base, True)
    assert G.ablation_params("grpo_accuracy_only", base)[0] == {**base, "W_PREFERENCE": 0.0, "W_EFFICIENCY": 0.0}
    assert G.ablation_params("grpo_ungated", base) == ({**base, "GATE_PROCESS": False}, False)
    assert base["GATE_PROCESS"] is True  # the caller's parameters are not changed
    with pytest.raises(ConfigError, match="grpo_ungated"):
        G.ablation_params("grpo_ungatd", base)


def test_the_grpo_pool_keeps_questions_the_policy_answers_sometimes():
    from medkit import grpo as G
    from medkit.errors import InputError

    qs = [{"id": f"q{i}", "question": "?", "answer": "A"} for i in range(5)]
    rows = [{"question_id": f"q{i}", "rollout": j, "correct": c}
            for i, cs in enumerate([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0], [1, 1, 1, 0]])
            for j, c in enumerate(cs)]
    kept, rates = G.learnable_questions(qs, rows)
    assert [q["id"] for q in kept] == ["q1", "q3", "q4"] and rates == {"q0": 0.0, "q1": 0.25, "q2": 1.0, "q3": 0.5, "q4": 0.75}
    assert [q["id"] for q in G.learnable_questions(qs, rows, n=2)[0]] == ["q1", "q3"]
    with pytest.raises(InputError, match="no probe rollouts"):
        G.learnable_questions(qs + [{"id": "q9", "question": "?", "answer": "B"}], rows)
    probe = G.probe_settings({"EVAL_K": 3, "EVAL_TEMPERATURE": 0.3, "SEED": 13},
                             {"POOL_PROBE_K": 4, "TEMPERATURE": 0.7, "MAX_CALLS": 6, "TURN_MAX_NEW_TOKENS": 160})
    assert probe == {"EVAL_K": 4, "EVAL_TEMPERATURE": 0.7, "SEED": 13, "EVAL_MAX_CALLS": 6, "EVAL_MAX_NEW_TOKENS": 160}


def test_breakdown_of_stored_conversations_uses_the_runs_weights_and_gating():
    from medkit import profiles

    record = {"id": "q", "question": "Which disease?", "answer": "Fabry disease", "answer_id": "MONDO:0010526"}
    call = {"type": "function", "function": {"name": "lookup", "arguments": {"name": "Fabry disease"}}}
    right = [{"role": "system", "content": "s"}, {"role": "user", "content": "Which disease?"},
             {"role": "assistant", "content": "<think>Look it up.</think>", "tool_calls": [call]},
             {"role": "tool", "name": "lookup", "content": "MONDO:0010526 Fabry disease"},
             {"role": "assistant", "content": "<think>Shown above.</think>\n<answer>Fabry disease</answer>"}]
    wrong = right[:4] + [{"role": "assistant", "content": "<think>I guess.</think>\n<answer>Marfan syndrome</answer>"}]
    r = R.as_rollout(right, n_tokens=500)
    assert r["prediction"] == "Fabry disease" and r["n_tool_calls"] == 1 and r["n_model_calls"] == 2
    assert R.as_rollout(right[:2])["prediction"] is None
    params = profiles.resolve("cpu", "grpo")
    table = R.breakdown({"right": r, "wrong": R.as_rollout(wrong, n_tokens=500)}, record, params)
    assert table.loc["right", "accuracy"] == 1.0 and table.loc["wrong", "accuracy"] == 0.0
    assert table.loc["right", "total"] > table.loc["wrong", "total"]
    w = R.RewardWeights.from_params({**params, "W_ACCURACY": 2.0})
    assert w.accuracy == 2.0 and w.preference == params["W_PREFERENCE"]
    doubled = R.breakdown({"right": r}, record, {**params, "W_ACCURACY": 2.0})
    assert doubled.loc["right", "total"] == pytest.approx(table.loc["right", "total"] + 1.0)


def test_weights_sign_and_total_one_rule_for_numbers_and_columns() -> None:
    import pandas as pd

    w = R.RewardWeights(accuracy=1.0, preference=0.3, efficiency=0.2)
    assert w.signed() == (1.0, 0.3, -0.2)
    assert w.total({"accuracy": 1.0, "preference": 0.5, "efficiency": 1.0}) == pytest.approx(1.0 + 0.15 - 0.2)
    frame = pd.DataFrame({"accuracy": [0.0, 1.0], "preference": [1.0, 0.0], "efficiency": [0.0, 0.5]})
    assert list(w.total(frame)) == pytest.approx([0.3, 0.9])
