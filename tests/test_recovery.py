"""Recovery turns (medkit.recovery): real slips and errors on real trajectories, the filter, the loss mask."""

from __future__ import annotations

import copy
import random

import pytest

from medkit import agent as A
from medkit import grounding as G
from medkit import recovery as RC
from medkit import sft
from medkit import trajectories as TR


def test_relation_slips_are_invented_names_never_real_relations():
    known = ("definition_mentions", "has_phenotype", "associated_with", "is_a")
    slips = RC.relation_slips("definition_mentions", known)
    assert "definition" in slips and "has_definition" in slips  # what the policy was seen to invent
    assert not set(slips) & set(known) and "definition_mentions" not in slips
    assert "phenotype" in RC.relation_slips("has_phenotype", known)
    assert len(set(slips)) == len(slips)


def test_name_slips_leave_ids_alone():
    assert RC.name_slips("MONDO:0005344") == [] and RC.name_slips("HP:0001250") == []
    assert RC.name_slips("Axial hypotonia") == ["Axial", "hypotonia", "Axial hypotonias"]
    assert RC.name_slips("Seizures") == ["Seizures type"]


def test_wanted_is_a_stable_draw_of_the_share():
    draws = [RC.wanted(f"q{i}", v, 0.5, 13) for i in range(400) for v in (0, 1)]
    assert 0.42 < sum(draws) / len(draws) < 0.58
    assert draws == [RC.wanted(f"q{i}", v, 0.5, 13) for i in range(400) for v in (0, 1)]
    assert not any(RC.wanted(f"q{i}", 0, 0.0, 13) for i in range(50))
    assert all(RC.wanted(f"q{i}", 0, 1.0, 13) for i in range(50))
    assert [RC.wanted(f"q{i}", 0, 0.5, 14) for i in range(60)] != [RC.wanted(f"q{i}", 0, 0.5, 13) for i in range(60)]


def _call(name, arguments):
    if arguments.get("relation") not in (None, "has_phenotype"):
        return f"Error: unknown relation {arguments['relation']!r}; choose one of has_phenotype."
    return "ok"


def test_with_recovery_inserts_slip_error_and_the_original_call():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "<think>Next I need a feature.</think>",
                 "tool_calls": [{"type": "function", "function": {"name": "related",
                                                                  "arguments": {"entity_id": "X", "relation": "has_phenotype"}}}]},
                {"role": "tool", "name": "related", "content": "X — has_phenotype ..."},
                {"role": "assistant", "content": "<think>Done.</think>\n<answer>Y</answer>"}]
    before = copy.deepcopy(messages)
    out, info = RC.with_recovery(messages, _call, random.Random(0), ["has_phenotype"], kinds=["relation"])
    assert messages == before  # the input is not changed
    assert len(out) == len(messages) + 2 and info["kind"] == "relation" and info["fix"] == "has_phenotype"
    slip, error, fixed = out[2:5]
    assert slip["weight"] == 0 and slip["content"] == before[2]["content"]
    assert slip["tool_calls"][0]["function"]["arguments"]["relation"] == info["slip"] != "has_phenotype"
    assert error["role"] == "tool" and error["content"].startswith("Error: unknown relation")
    assert fixed["tool_calls"] == before[2]["tool_calls"] and "weight" not in fixed
    assert info["slip"] in fixed["content"] and "has_phenotype" in fixed["content"]
    assert out[5] == before[3] and out[-1] == before[-1]
    assert RC.recovered_errors(out) == {3}
    assert TR.structure_problems(out) == []
    assert RC.without_recovery(out) == before  # the exact inverse


def test_a_slip_the_tool_resolves_is_not_used():
    messages = [{"role": "user", "content": "Q"},
                {"role": "assistant", "content": "<think>t</think>",
                 "tool_calls": [{"type": "function", "function": {"name": "read", "arguments": {"entity_id": "Asthma"}}}]},
                {"role": "tool", "name": "read", "content": "ok"}]
    assert RC.with_recovery(messages, lambda n, a: "ok", random.Random(0), []) is None


def test_an_error_not_followed_by_a_different_call_is_not_recovered():
    call = {"type": "function", "function": {"name": "read", "arguments": {"entity_id": "Bad"}}}
    repeated = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [call], "weight": 0},
                {"role": "tool", "content": "Error: no entity"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    assert RC.recovered_errors(repeated) == set()
    trained = [{**m, "weight": 1} if m["role"] == "assistant" else m for m in repeated]
    assert RC.recovered_errors(trained) == set()


@pytest.fixture(scope="module")
def recovered(records, judged, toolbox):
    """Real KG-guided trajectories with one real slip each (every share drawn: share 1)."""
    out = []
    for rec, row in zip(records, judged):
        if not row["filter"]["accepted"]:
            continue
        got = RC.add_to_row({k: v for k, v in row.items() if k != "filter"}, toolbox, share=1.0, seed=13)
        if got["recovery"]:
            out.append((rec, row, got))
    assert len(out) >= 2
    return out


def test_real_slips_get_real_errors_and_the_trajectory_stays_accepted_and_grounded(recovered, toolbox):
    for rec, row, got in recovered:
        at = got["recovery"]["turn"]
        slip, error = got["messages"][at], got["messages"][at + 1]
        assert slip["weight"] == 0
        fn = slip["tool_calls"][0]["function"]
        assert toolbox.call(fn["name"], fn["arguments"]) == error["content"]  # the tool's own error, re-executed
        assert error["content"].startswith("Error:")
        verdict = TR.filter_trajectory(got, rec, resolve=toolbox.resolve_ids)
        assert verdict["accepted"], verdict["reasons"]
        assert verdict["n_tool_calls"] == row["filter"]["n_tool_calls"] + 1 == got["n_tool_calls"]
        assert G.check_trajectory(got["messages"], rec).grounded
        assert RC.without_recovery(got["messages"]) == row["messages"]
    assert {got["recovery"]["kind"] for _, _, got in recovered} <= set(RC.RECOVERY_KINDS)


def test_an_unrecovered_error_is_still_a_tool_error(recovered, toolbox):
    rec, _, got = recovered[0]
    at = got["recovery"]["turn"]
    messages = copy.deepcopy(got["messages"])
    del messages[at]["weight"]  # the slip now carries loss: an ordinary error
    assert "tool_error" in TR.filter_trajectory({**got, "messages": messages}, rec, resolve=toolbox.resolve_ids)["reasons"]


def test_the_slip_carries_no_loss_and_the_correction_does(recovered, small_tokenizer, toolbox):
    tok = sft.prepare_tokenizer(copy.deepcopy(small_tokenizer))
    _, _, got = recovered[0]
    row = TR.accepted_records([{**got, "source": "kg_guided", "filter": {"accepted": True, "n_tool_calls": 1,
                                                                           "n_tokens": None}}],
                              A.tool_schemas(toolbox.tools()))[0]
    at = got["recovery"]["turn"]
    trained, masked = sft.label_view(tok, row)
    slip_call = A.assistant_text(row["messages"][at])
    fix = A.assistant_text(row["messages"][at + 2])
    assert slip_call not in trained and slip_call in masked
    assert fix in trained
    # the rendering is TRL's: without the weight key, TRL's own template gives the same text
    from trl.chat_template_utils import qwen2_5_training_chat_template

    plain = [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"]]
    schemas = A.tool_schemas(toolbox.tools())
    assert (tok.apply_chat_template(row["messages"], tools=schemas, chat_template=sft.training_template(), tokenize=False)
            == tok.apply_chat_template(plain, tools=schemas, chat_template=qwen2_5_training_chat_template, tokenize=False))
