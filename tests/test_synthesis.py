"""KG-guided trajectory synthesis, filtering, MTG checks and resumable collection, on real data."""

from __future__ import annotations

import json
import re

import pytest

from medkit import agent as A
from medkit import questions as Q
from medkit import synthesis as S
from medkit import trajectories as TR
from medkit.io import read_jsonl
from medkit.llm import Completion

@pytest.fixture(scope="module")
def count_tokens(toolbox, small_tokenizer):
    return TR.token_counter(small_tokenizer, A.tool_schemas(toolbox.tools()))


def _observations(messages):
    return [m["content"] for m in messages if m["role"] == "tool"]


def test_every_hop_is_found_in_a_real_observation(records, synthesised, index, toolbox):
    ok = [(r, s) for r, s in zip(records, synthesised) if s.failure is None]
    assert len(ok) >= 2, [s.failure for s in synthesised]
    for rec, syn in ok:
        obs = "\n".join(_observations(syn.messages))
        for eid in rec["chain"]:
            assert S.mentions(index, obs, eid, by_name=True), (rec["id"], eid)
        assert syn.hops_found == len(rec["chain"])
        # each observation is exactly what the tool returns for that call (nothing invented)
        calls = [m["tool_calls"][0]["function"] for m in syn.messages if m.get("tool_calls")]
        assert [toolbox.call(c["name"], c["arguments"]) for c in calls] == _observations(syn.messages)
        assert syn.messages[-1]["content"].endswith(f"<answer>{rec['answer']}</answer>")


def test_thoughts_never_name_an_entity_before_it_was_observed(records, synthesised, index):
    for rec, syn in zip(records, synthesised):
        seen = rec["question"]
        for m in syn.messages[2:]:
            if m["role"] == "assistant":
                think = A.parse_turn(A.assistant_text(m)).think or ""
                for eid in rec["chain"]:
                    name = index.name[eid]
                    if eid in think or re.search(rf"\b{re.escape(name)}\b", think):
                        assert eid in seen or name in seen, (rec["id"], name, think)
                assert not TR.guidance_leaks([m])
            seen += "\n" + (m.get("content") or "")


def test_synthesis_is_deterministic_and_variants_differ(records, synthesised, index, toolbox):
    again = S.synthesise(records[0], index, toolbox)
    assert again.messages == synthesised[0].messages
    other = S.synthesise(records[0], index, toolbox, variant=1)
    assert other.messages != synthesised[0].messages
    if other.failure is None or other.steps:
        assert other.steps[0].action.name == "search"  # variant 1 opens with a keyword search


def test_a_hop_that_no_tool_shows_rejects_the_trajectory(records, index, toolbox):
    class Blind:
        _relation_names = toolbox._relation_names
        resolve_ids = staticmethod(toolbox.resolve_ids)

        @staticmethod
        def call(name, arguments):
            return "No passages match; try other keywords."

    syn = S.synthesise(records[0], index, Blind())
    assert syn.failure == "hop_not_found:0" and syn.hops_found == 0
    verdict = TR.filter_trajectory(syn.to_record(), records[0])
    assert not verdict["accepted"] and verdict["reasons"][0] == "synthesis_failed"


def test_accepted_trajectory_passes_every_filter(records, synthesised, toolbox, count_tokens):
    rec, syn = next((r, s) for r, s in zip(records, synthesised) if s.failure is None)
    v = TR.filter_trajectory(syn.to_record(), rec, max_tokens=8192, count_tokens=count_tokens,
                             resolve=toolbox.resolve_ids)
    assert v["accepted"] and v["reasons"] == [] and v["judge"] == "exact" and v["n_tool_calls"] >= 2
    assert 500 < v["n_tokens"] < 8192


def _with(messages, **change):
    return {"messages": messages, **change}


def test_each_filter_reason_on_hand_made_trajectories(records, synthesised, count_tokens):
    rec, syn = next((r, s) for r, s in zip(records, synthesised) if s.failure is None)
    good = syn.messages

    def reasons(traj, **kw):
        return TR.filter_trajectory(traj, rec, **kw)["reasons"]

    assert "unmatched_call_response" in reasons(_with([m for m in good if m["role"] != "tool" or m is not good[3]]))
    tool_err = [dict(m) for m in good]
    tool_err[3]["content"] = "Error: unknown id 'X'."
    assert "tool_error" in reasons(_with(tool_err))
    assert "no_answer" in reasons(_with(good[:-1]))
    wrong = [*good[:-1], {"role": "assistant", "content": "<think>x</think>\n<answer>Hepatitis B</answer>"}]
    assert reasons(_with(wrong)) == ["wrong_answer"]
    short = [good[0], good[1], good[2], good[3], good[-1]]
    assert reasons(_with(short), min_tool_calls=2) == ["too_few_turns"]
    assert reasons(_with(good), max_tokens=100, count_tokens=count_tokens) == ["over_token_limit"]
    leak = [dict(m) for m in good]
    leak[2]["content"] = "<think>According to the hint, Entity_A is next.</think>"
    assert "guidance_leak" in reasons(_with(leak))
    assert "format_error" in reasons(_with(good, format_errors=[{"turn": 1, "errors": ["no <think> block"]}]))


def test_guidance_text_holds_placeholders_only(records, index):
    for rec in records:
        g = TR.guidance_text(rec)
        assert "Target_Entity" in g
        for eid in rec["chain"]:
            assert index.name[eid].lower() not in g.lower()


def test_rewrite_keeps_only_clean_rewrites(records, synthesised):
    syn = next(s for s in synthesised if s.failure is None)

    class Rewriter:
        def __init__(self, texts):
            self.texts = texts

        def generate(self, conversations, **_):
            return [Completion(self.texts[i % len(self.texts)], 10, 10, "stop") for i in range(len(conversations))]

    clean, n = TR.rewrite_thoughts(syn.messages, Rewriter(["I should check the candidates with the tools."]))
    n_thoughts = sum(1 for m in syn.messages if m["role"] == "assistant")
    assert n == n_thoughts and "<think>I should check the candidates with the tools.</think>" in clean[2]["content"]
    assert clean[2]["tool_calls"] == syn.messages[2]["tool_calls"]
    leaky, n = TR.rewrite_thoughts(syn.messages, Rewriter(["Following the hint, Entity_A is next.",
                                                           "It must be MONDO:9999999."]))
    assert n == 0 and leaky == syn.messages
    dead, n = TR.rewrite_thoughts(syn.messages, Rewriter([""]))
    assert n == 0


def test_collection_resumes_without_loss_or_duplicates(tmp_path, records, index, toolbox):
    log = tmp_path / "trajectories_all.jsonl"
    jobs = [(r, v) for r in records for v in range(2)]

    def make(record, variant):
        return S.synthesise(record, index, toolbox, variant=variant).to_record()

    def judge_row(traj, record):
        return TR.filter_trajectory(traj, record, resolve=toolbox.resolve_ids)

    calls = {"n": 0}

    def flaky(record, variant):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # interrupted mid-run
        return make(record, variant)

    with pytest.raises(KeyboardInterrupt):
        TR.collect(log, jobs, flaky, judge_row, source="kg_guided", progress=False)
    assert len(read_jsonl(log)) == 3
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"question_id": "torn')  # a write cut by a crash
    counts = TR.collect(log, jobs, make, judge_row, source="kg_guided", progress=False)
    rows = read_jsonl(log)
    keys = [(r["question_id"], r["variant"], r["source"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(jobs) and counts["skipped (already done)"] == 3
    uninterrupted = tmp_path / "again.jsonl"
    TR.collect(uninterrupted, jobs, make, judge_row, source="kg_guided", progress=False)
    def same(rs):  # everything but the measured wall time
        return sorted(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in rs)
    assert same(rows) == same(read_jsonl(uninterrupted))
    assert all(r["seconds"] >= 0 for r in rows)


def test_trl_rows_load_into_datasets_and_render_identically(judged, toolbox, small_tokenizer):
    from trl.chat_template_utils import qwen2_5_training_chat_template

    schemas = A.tool_schemas(toolbox.tools())
    rows = judged
    final = TR.accepted_records(rows, schemas)
    assert final and all(json.loads(r["tools"]) == schemas for r in final)
    ds = TR.to_dataset(final)
    assert len(ds) == len(final)
    for i, r in enumerate(final):
        a = small_tokenizer.apply_chat_template(r["messages"], tools=schemas, chat_template=qwen2_5_training_chat_template,
                                                tokenize=False)
        b = small_tokenizer.apply_chat_template(ds[i]["messages"], tools=json.loads(ds[i]["tools"]),
                                                chat_template=qwen2_5_training_chat_template, tokenize=False)
        assert a == b and "null" not in a.split("<tools>")[0]
    summary = TR.summarise(rows)
    assert summary["accepted"] == len(final) and sum(summary["tool_calls_by_tool"].values()) >= 2 * len(final)
    md = TR.render_markdown(final[0]["messages"])
    assert "**Call:**" in md and "**Observation:**" in md and "**Answer:**" in md


def test_question_index_matches_the_record_constraints(records, index):
    for rec in records:
        assert Q.solve(index, Q.variables_from_record(rec)) == {rec["answer_id"]}


def test_rows_of_another_generator_version_are_redone(tmp_path, records, index, toolbox):
    log = tmp_path / "log.jsonl"
    jobs = [(r, 0) for r in records[:2]]

    def make(record, variant):
        return S.synthesise(record, index, toolbox, variant=variant).to_record()

    def judge_row(traj, record):
        return TR.filter_trajectory(traj, record)

    TR.collect(log, jobs, make, judge_row, source="kg_guided", version=1, progress=False)
    TR.collect(log, jobs, make, judge_row, source="free", version=1, progress=False)
    assert TR.collect(log, jobs, make, judge_row, source="kg_guided", version=1, progress=False) == \
        {"skipped (already done)": 2}
    again = TR.collect(log, jobs, make, judge_row, source="kg_guided", version=2, progress=False)
    assert "skipped (already done)" not in again
    rows = read_jsonl(log)
    assert sorted((r["source"], r["version"]) for r in rows) == [("free", 1)] * 2 + [("kg_guided", 2)] * 2
