"""KG-guided trajectory synthesis, filtering, MTG checks and resumable collection, on real data."""

from __future__ import annotations

import json
import re

import pytest

from medkit import agent as A
from medkit import grounding as G
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
        # variant 1 finds the start entity another way (a different finding call), or with a search first
        first = synthesised[0].steps[0].action
        assert (other.steps[0].action.name, other.steps[0].action.arguments) != (first.name, first.arguments) \
            or other.steps[0].action.name == "search"


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
    assert reasons(_with(short), min_tool_calls=2, grounding=False) == ["too_few_turns"]
    assert reasons(_with(short), min_tool_calls=2)[0] == "too_few_turns"
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
    assert log.read_bytes() == uninterrupted.read_bytes()  # wall times live beside the rows: the same bytes
    timings = TR.read_timings(log)
    assert sorted((t["question_id"], t["variant"], t["source"]) for t in timings) == sorted(keys)
    assert all(t["seconds"] >= 0 for t in timings) and not any("seconds" in r for r in rows)
    assert TR.summarise(rows, timings)["seconds"] == round(sum(t["seconds"] for t in timings), 1)


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
    md = A.render_markdown(final[0]["messages"])
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


def test_rows_made_under_other_settings_or_by_a_dead_backend_are_redone(tmp_path, records, index, toolbox):
    """A rerun with another filter limit remakes the rows, not reuses them; a rollout whose endpoint
    failed is not a finished result."""
    log = tmp_path / "log.jsonl"
    jobs = [(r, 0) for r in records[:2]]
    made = []

    def make(record, variant):
        made.append(Q.question_id(record))
        return S.synthesise(record, index, toolbox, variant=variant).to_record()

    def judge_row(traj, record):
        return TR.filter_trajectory(traj, record)

    def collect(settings, mk=make, source="kg_guided"):
        return TR.collect(log, jobs, mk, judge_row, source=source, version=1, settings=settings, progress=False)

    collect({"max_tokens": 4096})
    assert collect({"max_tokens": 4096}) == {"skipped (already done)": 2} and len(made) == 2
    assert "skipped (already done)" not in collect({"max_tokens": 2048}) and len(made) == 4
    assert len(read_jsonl(log)) == 2  # the stale rows are gone, not kept beside the new ones

    def dead(record, variant):
        return {"messages": [], "stop_reason": "backend_error", "n_tool_calls": 0}

    collect(None, dead, "free")
    assert "skipped (already done)" not in collect(None, make, "free") and len(made) == 6
    assert collect(None, make, "free") == {"skipped (already done)": 2}


# --------------------------------------------------------------------------- grounded picks (issue 13)

from medkit import grounding as G  # noqa: E402
from test_grounding import (AIDS_DRUGS, CORPUS_EDGES, DRONABINOL, MRKH_1, RITONAVIR,  # noqa: E402
                            RITONAVIR_QUESTION, TETRASOMY_12P)

HIV, LENTIVIRUS, AIDS, HEP_C = "MONDO:0005109", "MONDO:0022034", "MONDO:0012268", "MONDO:0005354"
# Ritonavir's own definition_mentions edges in the cpu profile's corpus (the last hop of the Ritonavir question)
RITONAVIR_OUT = [(RITONAVIR, t) for t in ("CHEBI:35222", "CHEBI:37670", "DRUGBANK:DB00161", "DRUGBANK:DB01601",
                                          "DRUGBANK:DB09183", "DRUGBANK:DB09296", "DRUGBANK:DB09297", "DRUGBANK:DB11151",
                                          "DRUGBANK:DB15127", "HP:0001394", HIV, "MONDO:0005155", HEP_C, AIDS)]


def _commits(messages, record):
    report = G.check_trajectory(messages, record)
    assert report.malformed is None, report.malformed
    return report, {c.entity_id: c for c in report.commits}


@pytest.fixture(scope="module")
def ritonavir_tools(entities, relations, passages):
    """The real tools and question index over a real KB slice: every KB relation of the question's entities and
    clues, plus the cpu corpus' definition_mentions edges of Dronabinol, AIDS, chronic hepatitis C and Ritonavir."""
    import pandas as pd

    from medkit import tools as T

    keep = {"CHEBI:67072", "CHEBI:35481", DRONABINOL, AIDS, HEP_C, RITONAVIR, HIV, LENTIVIRUS}
    kb = relations[relations["head_id"].isin(keep) | relations["tail_id"].isin(keep)]
    corpus = pd.DataFrame(CORPUS_EDGES + RITONAVIR_OUT, columns=["head_id", "tail_id"]).assign(
        relation="definition_mentions", frequency=float("nan"))
    rel = pd.concat([kb, corpus], ignore_index=True)
    return Q.QuestionIndex(entities, rel), T.MedicalToolbox(entities, rel, passages.iloc[:0], retriever=None)


def test_ritonavir_is_picked_by_an_intersection_not_from_the_list_of_seven(ritonavir_tools):
    index, tools = ritonavir_tools
    assert Q.solve(index, Q.variables_from_record(RITONAVIR_QUESTION)) == {HIV}  # the slice keeps the question unique
    syn = S.synthesise(RITONAVIR_QUESTION, index, tools)
    assert syn.failure is None, syn.failure
    report, commits = _commits(syn.messages, RITONAVIR_QUESTION)
    assert report.grounded and [c.grounded for c in report.commits] == [True] * 4
    pick = commits[RITONAVIR]
    intro = syn.messages[pick.introduced_at]
    # the observation that shows Ritonavir first is the intersection of AIDS and chronic hepatitis C, not AIDS's list
    assert intro["content"].startswith("definition_mentions shared, ")
    call = syn.messages[pick.introduced_at - 1]["tool_calls"][0]["function"]
    assert call["name"] == "common" and call["arguments"]["relation"] == "definition_mentions"
    assert G.call_anchors(call["arguments"], G.question_names(RITONAVIR_QUESTION)) == ("MONDO:0012268", "MONDO:0005354")
    assert set(pick.competitors) <= {DRONABINOL}  # the intersection shows no other drug than the chain's first
    # the thought that names Ritonavir states the evidence, from what was shown
    think = A.parse_turn(A.assistant_text(syn.messages[pick.turn])).think
    assert think.startswith("Ritonavir is the only drug they share.")  # its id is in the observation just above
    # no turn picks Ritonavir out of AIDS's seven drugs
    for m in syn.messages[:pick.turn]:
        assert not (m["role"] == "tool" and m["content"].startswith("AIDS (MONDO:0012268) — definition_mentions\n"
                                                                    "incoming (X -definition_mentions), 7:"))


def test_ritonavir_after_the_list_of_seven_gets_the_intersection_before_the_pick(ritonavir_tools, monkeypatch):
    """When the list comes first (the old preference), a discriminating call must follow before the commit."""
    index, tools = ritonavir_tools
    real = S.hop_actions

    def list_first(index_, prev, var, view):  # the AIDS list preferred, as synthesis v3 did
        actions = real(index_, prev, var, view)
        return sorted(actions, key=lambda a: a.kind != "related")

    monkeypatch.setattr(S, "hop_actions", list_first)
    syn = S.synthesise(RITONAVIR_QUESTION, index, tools)
    assert syn.failure is None, syn.failure
    report, commits = _commits(syn.messages, RITONAVIR_QUESTION)
    pick = commits[RITONAVIR]
    assert report.grounded and pick.grounded and pick.introduced_by == "related"
    assert set(pick.competitors) == set(AIDS_DRUGS) - {RITONAVIR}
    checks = [s for s in syn.steps if s.action.kind == "check" and s.target == RITONAVIR]
    assert checks, [s.action for s in syn.steps]
    between = [m for m in syn.messages[pick.introduced_at + 1:pick.turn] if m.get("tool_calls")]
    assert between and all(RITONAVIR not in json.dumps(m["tool_calls"]) for m in between)
    think = A.parse_turn(A.assistant_text(syn.messages[pick.turn])).think
    assert "Ritonavir is the one" in think and RITONAVIR not in think  # named; the id is in the observations
    assert "leaves only Ritonavir" in think or "not among" in think, think
    # without the checks the same pick is a guess: the filter rejects it as ungrounded
    n_checks = len(between)
    cut = syn.messages[:pick.introduced_at + 1] + syn.messages[pick.introduced_at + 1 + 2 * n_checks:]
    verdict = TR.filter_trajectory({"messages": cut}, RITONAVIR_QUESTION)
    assert "ungrounded" in verdict["reasons"] and verdict["grounded"] is False


def test_the_ungrounded_ablation_names_ritonavir_from_the_list_of_seven(ritonavir_tools, monkeypatch):
    """grounded=False (the data ablation): the same finding calls, no checks, so the pick is a guess from the list."""
    index, tools = ritonavir_tools
    real = S.hop_actions
    monkeypatch.setattr(S, "hop_actions", lambda index_, prev, var, view: sorted(
        real(index_, prev, var, view), key=lambda a: a.kind != "related"))
    grounded = S.synthesise(RITONAVIR_QUESTION, index, tools)
    guess = S.synthesise(RITONAVIR_QUESTION, index, tools, grounded=False)
    assert guess.failure is None and A.final_answer(guess.messages) == RITONAVIR_QUESTION["answer"]
    assert not any(s.action.kind == "check" for s in guess.steps)
    assert len(guess.steps) < len(grounded.steps)
    report, commits = _commits(guess.messages, RITONAVIR_QUESTION)
    pick = commits[RITONAVIR]
    assert not pick.grounded and pick.introduced_by == "related"
    # the other drugs of the list stay open (Dronabinol, the chain's first entity, is ruled out as committed)
    assert set(pick.unresolved) == set(AIDS_DRUGS) - {RITONAVIR, DRONABINOL} and len(pick.unresolved) >= 4
    assert pick.turn == pick.introduced_at + 1  # named in the turn right after the list
    verdict = TR.filter_trajectory(guess.to_record(), RITONAVIR_QUESTION)
    assert verdict["reasons"] == ["ungrounded"] and verdict["grounded"] is False
    assert TR.filter_trajectory(guess.to_record(), RITONAVIR_QUESTION, grounding=False)["accepted"]
    # notebook 04's filter with its stage settings is the same rule; the ablation's variant drops only grounding
    stage = {"MIN_TOOL_CALLS": 2, "MAX_TOKENS": None}
    assert TR.stage_filter(stage, count_tokens=None, resolve=None)(guess.to_record(), RITONAVIR_QUESTION) == verdict
    assert TR.stage_filter(stage, count_tokens=None, resolve=None, grounding=False)(guess.to_record(),
                                                                                   RITONAVIR_QUESTION)["accepted"]
    assert TR.stage_filter({**stage, "MIN_TOOL_CALLS": 99}, count_tokens=None, resolve=None, grounding=False)(
        guess.to_record(), RITONAVIR_QUESTION)["reasons"] == ["too_few_turns"]
    # the grounded synthesis is unchanged by the flag's existence
    assert grounded.messages == S.synthesise(RITONAVIR_QUESTION, index, tools, grounded=True).messages


# a fact of MRKH type 1 that tetrasomy 12p (typified by somatic mosaicism) lacks: autosomal dominant inheritance
MRKH_FACT = {"kind": "fact", "relation": "has_inheritance", "value": "HP:0000006"}


def _tie_record(names, clues):
    """A one-entity question (MRKH type 1) whose record names its clues, as notebook 03's records do."""
    return {"id": "tie", "question": "Which disorder is this?", "chain": [MRKH_1], "hops": 0,
            "answer": names[MRKH_1], "answer_id": MRKH_1, "answer_aliases": [names[MRKH_1]],
            "constraints": [{"entity_id": MRKH_1, "type": "disease", "link": None, "clues": clues}],
            "entity_ids": {"Target_Entity": MRKH_1, **{f"Clue_{i}": c["value"] for i, c in enumerate(clues, 1)}},
            "entity_mapping": {"Target_Entity": names[MRKH_1],
                               **{f"Clue_{i}": names[c["value"]] for i, c in enumerate(clues, 1)}}}


def test_a_diagnose_tie_is_never_committed_from_the_ranking(index, toolbox, entities):
    names = dict(zip(entities["entity_id"], entities["name"]))
    upper_vagina = {"kind": "fact", "relation": "has_phenotype", "value": "HP:0012673"}
    ranking = toolbox.diagnose([names["HP:0012673"]]).splitlines()  # the tool's default k: the tie fills it
    assert ranking[1].startswith(f"1. {names[MRKH_1]} ({MRKH_1}) 1/1") and ranking[2].startswith(
        f"1. {names[TETRASOMY_12P]} ({TETRASOMY_12P}) 1/1")
    assert S.at_last_rank("\n".join(ranking), MRKH_1)  # a third disease may tie below the shown lines
    record = _tie_record(names, [upper_vagina, MRKH_FACT])
    syn = S.synthesise(record, index, toolbox)
    assert syn.failure is None, syn.failure
    report, commits = _commits(syn.messages, record)
    pick = commits[MRKH_1]
    # the ranking is not trusted: the pick comes from a way in that rules tetrasomy 12p out
    assert pick.grounded and pick.introduced_by != "diagnose"
    assert all(s.action.name != "diagnose" or TETRASOMY_12P not in s.observation for s in syn.steps[:pick.turn])
    verdict = TR.filter_trajectory(syn.to_record(), record, min_tool_calls=1)  # a one-entity toy question
    assert verdict["grounded"] and verdict["accepted"], verdict
    # with the phenotype alone nothing tells the two apart: no guess is kept
    alone = S.synthesise(_tie_record(names, [upper_vagina]), index, toolbox)
    assert alone.failure == "ungrounded:0"
    verdict = TR.filter_trajectory(alone.to_record(), _tie_record(names, [upper_vagina]))
    assert verdict["reasons"][0] == "ungrounded" and not verdict["accepted"]
    # ... while the ungrounded ablation takes the tie's first line
    guess = S.synthesise(_tie_record(names, [upper_vagina]), index, toolbox, grounded=False)
    assert guess.failure is None and A.final_answer(guess.messages) == names[MRKH_1]
    assert not G.check_trajectory(guess.messages, _tie_record(names, [upper_vagina])).grounded


def test_every_synthesised_fixture_trajectory_is_grounded(records, synthesised, judged):
    ok = [(r, s) for r, s in zip(records, synthesised) if s.failure is None]
    assert len(ok) >= 2, [s.failure for s in synthesised]
    for rec, syn in ok:
        report = G.check_trajectory(syn.messages, rec)
        assert report.grounded, [(c.entity_id, c.reason, c.unresolved) for c in report.commits if not c.grounded]
        assert report.uncommitted == () and len(report.commits) == len(rec["chain"])
    for rec, syn in zip(records, synthesised):
        assert syn.failure is None or syn.failure.split(":")[0] in ("hop_not_found", "ungrounded")
    assert all(row["filter"]["grounded"] is True for row in judged if row["synthesis_failure"] is None)
    assert all("ungrounded" not in row["filter"]["reasons"] for row in judged if row["synthesis_failure"] is None)


_ID = re.compile(r"(?<![A-Za-z0-9_:])([A-Za-z][A-Za-z0-9_]*:[A-Za-z0-9][A-Za-z0-9_.\-]*)")


def _unseen_ids_in_calls(messages):
    """Ids a call passes that nothing before it (question, observations, thoughts) showed."""
    seen, out = "", []
    for m in messages:
        for c in m.get("tool_calls") or []:
            out += [x for x in _ID.findall(json.dumps(c["function"]["arguments"])) if x not in seen]
        seen += "\n" + (m.get("content") or "")
    return out


def test_a_clue_whose_name_denotes_several_entries_is_looked_up_before_its_id_is_used(index, toolbox, entities):
    names = dict(zip(entities["entity_id"], entities["name"]))
    coarse_face, chime, camt = "HP:0000280", "MONDO:0010221", "ORPHA:3319"
    assert toolbox.resolve_ids(names[camt])[0] != camt  # the name first denotes another entry (MONDO:0800451)
    clues = [{"kind": "fact_rev", "relation": "has_phenotype", "value": v} for v in (chime, camt)]
    record = {"id": "lookup", "question": "Which clinical feature is this?", "chain": [coarse_face], "hops": 0,
              "answer": names[coarse_face], "answer_id": coarse_face, "answer_aliases": [names[coarse_face]],
              "constraints": [{"entity_id": coarse_face, "type": "phenotype", "link": None, "clues": clues}],
              "entity_ids": {"Target_Entity": coarse_face}, "entity_mapping": {"Target_Entity": names[coarse_face]}}
    assert Q.solve(index, Q.variables_from_record(record)) == {coarse_face}
    syn = S.synthesise(record, index, toolbox)
    assert syn.failure is None, syn.failure
    calls = [(s.action.name, s.action.arguments) for s in syn.steps]
    assert ("lookup", {"name": names[camt]}) in calls
    used = next(i for i, (_, args) in enumerate(calls) if camt in json.dumps(args) and _ != "lookup")
    assert calls.index(("lookup", {"name": names[camt]})) < used
    assert _unseen_ids_in_calls(syn.messages) == []
    assert G.check_trajectory(syn.messages, record).grounded


def test_no_synthesised_call_passes_an_id_the_conversation_has_not_shown(records, synthesised):
    for rec, syn in zip(records, synthesised):
        assert _unseen_ids_in_calls(syn.messages) == [], rec["id"]


def test_a_diagnose_pick_is_not_trusted_when_equal_candidates_may_hide_below_the_shown_ranks(index, toolbox):
    view = S.ToolView.of(toolbox)

    def ranked(k):
        action = S.Action("diagnose", {"phenotypes": ["Aplasia of the upper vagina"], "k": k}, "", "diagnose")
        return action, toolbox.call("diagnose", action.arguments)

    action, three = ranked(3)  # MRKH 1 and tetrasomy 12p tie at 1/1, rank 3 matches 0/1
    assert not S.at_last_rank(three, MRKH_1, k=3) and not S.hides_full_match(index, view, action, three)
    action, two = ranked(2)  # the tie reaches the last shown rank: more may tie below it
    assert S.at_last_rank(two, MRKH_1, k=2) and S.at_last_rank(two, TETRASOMY_12P, k=2)
    action, one = ranked(1)  # tetrasomy 12p, with the phenotype too, is not shown at all
    assert S.hides_full_match(index, view, action, one) and TETRASOMY_12P not in one


def test_thoughts_are_terse_but_keep_the_evidence(records, synthesised, index):
    for rec, syn in zip(records, synthesised):
        if syn.failure is not None:
            continue
        thoughts = [A.parse_turn(A.assistant_text(m)).think for m in syn.messages if m["role"] == "assistant"]
        assert not any("chain of" in t or "satisfied along" in t or "must be linked to each" in t for t in thoughts)
        # a call that shows candidates without settling the pick is not dismissed in hindsight
        assert not any("did not show the" in t for t in thoughts)
        # a competitor's own links were listed in one direction: the thought says what the list shows
        assert not any(re.search(r"ha(?:s|ve) no \S+ link to", t) or "Confirmed: the entry of" in t for t in thoughts)
        assert thoughts[0].startswith("First I need the ")  # the question's clues are not restated
        # the previous entity is "it" right after the thought that names it, never spelled out again there
        for t in thoughts[1:]:
            if "Next I need " in t:
                assert "Next I need " + "" in t and " it" in t.split("Next I need ", 1)[1].split(".")[0], t
        # the plan after "Next I need" calls the entity just committed "it", never by its name again
        hops = [t.split("Next I need ", 1)[1] for t in thoughts if "Next I need " in t]
        for prev, plan in zip(rec["chain"], hops):
            assert not re.search(rf"(?<!\w){re.escape(index.name[prev])}(?!\w)", plan), (index.name[prev], plan)
        final = thoughts[-1]  # the evidence for the answer; <answer> names it, the thought need not repeat it
        assert " -> " not in final and "The answer is" not in final
        assert index.name[rec["chain"][-1]].lower() in final.lower()


def test_token_segments_split_the_exact_count(synthesised, small_tokenizer, toolbox):
    syn = next(s for s in synthesised if s.failure is None)
    for schemas in ([], A.tool_schemas(toolbox.tools())):
        seg = TR.token_segments(small_tokenizer, syn.messages, schemas)
        assert tuple(seg) == TR.SEGMENTS and sum(seg.values()) == TR.token_counter(small_tokenizer, schemas)(syn.messages)
        assert all(v > 0 for k, v in seg.items()) and seg["template"] < 12 * len(syn.messages)
    bare = TR.token_segments(small_tokenizer, syn.messages, [])["system"]
    assert bare < 300 and TR.token_segments(small_tokenizer, syn.messages, schemas)["system"] > bare + 500


def test_a_diagnose_pick_whose_competitors_all_lack_one_clue_says_the_others_lack_it(synthesised):
    picks = [t for syn in synthesised if syn.failure is None
             for t in (A.parse_turn(A.assistant_text(m)).think for m in syn.messages if m["role"] == "assistant")
             if t and " ranks #1 with " in t]
    assert picks and any("; the other lacks " in t or "; the others lack " in t for t in picks), picks[:5]


def test_token_report_counts_as_the_trained_model_sees_them(records, synthesised, small_tokenizer, toolbox):
    rows = [{"messages": s.messages, "hops": r.get("hops")} for r, s in zip(records, synthesised) if s.failure is None]
    report = TR.token_report(small_tokenizer, rows, [], limits=(1200, 2048))
    counts = [TR.token_counter(small_tokenizer, [])(r["messages"]) for r in rows]
    assert report["trajectories"] == len(rows) and report["max_tokens"] == max(counts)
    assert report["mean_tokens"] == round(sum(counts) / len(counts), 1)
    assert report["share_within"]["2048"] == round(sum(c <= 2048 for c in counts) / len(counts), 3)
    assert abs(sum(report["segments_mean"].values()) - report["mean_tokens"]) < 1
    assert sum(v["trajectories"] for v in report["by_hops"].values()) == len(rows)
    with_schemas = TR.token_report(small_tokenizer, rows, A.tool_schemas(toolbox.tools()))
    assert with_schemas["mean_tokens"] > report["mean_tokens"] + 500 and with_schemas["tools_in_prompt"]
    empty = TR.token_report(small_tokenizer, [], [])
    assert empty["trajectories"] == 0 and empty["mean_tokens"] is None
    json.dumps(report, allow_nan=False), json.dumps(empty, allow_nan=False)


def test_an_own_entry_check_is_worded_as_what_its_list_shows(index):
    """A competitor's own related list is one direction of its links: the thought says the list lacks the
    anchor, never that the competitor "has no" such link (it may have one the other way)."""
    ids = sorted(index.type)[:3]
    winner, rival, anchor = ids
    ev = G.Evidence("own_entry", "its is_a list lacks the anchor", at=3, tool="related", anchors=(anchor,),
                    relation="is_a", side="out")
    commit = G.Commit(winner, 1, 4, "call:common", "common", 2, True, "competitors_ruled_out",
                      competitors=(rival,), ruled_out=((rival, ev.text),), evidence=((rival, ev),))
    text = S.evidence_phrase(index, commit)
    assert f"the is_a links listed for {S.name_of(index, rival)} do not include {S.name_of(index, anchor)}" in text
    assert "has no" not in text
