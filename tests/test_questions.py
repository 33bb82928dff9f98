"""Subgraph sampling, longest chains, constraint building, uniqueness, rendering, leaks, splits, resume."""

import json
import random

import networkx as nx
import pytest

from medkit import qgen, questions as Q, subgraph as S


# ---------------------------------------------------------------- longest path on hand-made graphs

def test_longest_path_is_exact_on_a_small_graph():
    g = nx.Graph([("s", "a"), ("a", "b"), ("b", "c"), ("s", "d"), ("d", "c"), ("c", "e")])
    path, expansions, exact = S.longest_path(g, "s")
    # three simple paths of 5 nodes exist; the lexicographically smallest wins the tie
    assert exact and path == ["s", "a", "b", "c", "d"] and expansions >= 7


def test_longest_path_cycles_terminate_and_respect_valid_end_and_cap():
    cycle = nx.cycle_graph(7)
    path, _, exact = S.longest_path(cycle, 0)
    assert exact and len(path) == 7
    path, _, _ = S.longest_path(cycle, 0, valid_end=lambda n: n == 3)
    assert path[-1] == 3 and len(path) == 5  # 0-6-5-4-3 is longer than 0-1-2-3
    big = nx.complete_graph(12)
    path, expansions, exact = S.longest_path(big, 0, max_expansions=500)
    assert not exact and expansions == 500 and len(path) >= 2


def test_longest_path_on_tiny_or_isolated_graphs():
    g = nx.Graph()
    g.add_node("alone")
    assert S.longest_path(g, "alone")[0] == ["alone"]
    assert S.longest_path(g, "alone", valid_end=lambda n: False)[0] == []


# ---------------------------------------------------------------- real data fixtures

@pytest.mark.parametrize("strategy", [*S.STRATEGIES, "mixed"])
def test_sampling_strategies_include_the_seed_and_record_what_ran(view, strategy):
    smp = S.sample_subgraph(view, "MONDO:0012648", strategy, 10, random.Random(1))
    assert "MONDO:0012648" in smp.nodes and 2 <= len(smp.nodes) <= 10 and len(set(smp.nodes)) == len(smp.nodes)
    assert smp.requested == strategy and smp.strategy in S.STRATEGIES
    if strategy != "mixed":
        assert smp.strategy == strategy
    again = S.sample_subgraph(view, "MONDO:0012648", strategy, 10, random.Random(1))
    assert again.nodes == smp.nodes  # seeded


def test_unknown_strategy_and_seed_without_edges(view):
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        S.sample_subgraph(view, "MONDO:0012648", "random_walk", 10, random.Random(0))
    smp = S.sample_subgraph(view, "NOT:1", "mixed", 10, random.Random(0))
    assert smp.nodes == ["NOT:1"] and "error" in smp.notes


def test_generated_question_is_unique_masked_and_well_formed(index, view):
    recs = [qgen.generate_for_seed(index, view, s, base_seed=13, attempt=0, strategy="mixed", k_range=(8, 12),
                                   max_hops=6, min_hops=2, level=0)
            for s in ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376"]]
    ok = [r for r in recs if r["status"] == "ok"]
    assert ok, [r.get("reason") for r in recs]
    for rec in ok:
        variables = Q.variables_from_record(rec)
        assert Q.solve(index, variables) == {rec["answer_id"]}
        assert Q.leaks(index, variables, [rec["question"], rec["reasoning_path"]]) == []
        assert rec["hops"] == len(rec["chain"]) - 1 == len(rec["relation_types"]) >= 2
        assert rec["question"].endswith((".", "?")) and rec["answer"] == index.name[rec["answer_id"]]
        # the reasoning path carries placeholders only
        for name in [index.name[e] for e in rec["chain"]]:
            assert name.lower() not in rec["reasoning_path"].lower()
        assert set(rec["entity_mapping"]) >= {"Entity_A", "Target_Entity"}
        assert all(k.startswith(("Entity_", "Clue_", "Target_Entity")) for k in rec["entity_mapping"])
        for field in ("question", "answer", "reasoning_path", "entity_mapping", "sampling_algorithm", "source_entity"):
            assert field in rec
        json.dumps(rec)  # serialisable
        # every stated hop is needed: no shorter tail of the chain pins the answer
        assert Q.sufficient_hops(index, variables) == rec["needed_hops"] == rec["hops"] <= rec["chain_hops_before_cut"]
        for start in range(1, rec["hops"] + 1):
            tail = [Q.Variable(variables[start].entity_id, variables[start].type, None, variables[start].clues),
                    *variables[start + 1:]]
            assert Q.solve(index, tail) != {rec["answer_id"]}


def test_hop_cap_is_per_seed_deterministic_and_honours_the_share():
    seeds = [f"S:{i}" for i in range(400)]
    caps = [qgen.hop_cap(13, s, max_hops=6, min_hops=2, short_share=0.5, short_max_hops=3) for s in seeds]
    assert caps == [qgen.hop_cap(13, s, max_hops=6, min_hops=2, short_share=0.5, short_max_hops=3) for s in seeds]
    assert set(caps) == {2, 3, 6} and 0.4 < sum(c <= 3 for c in caps) / len(caps) < 0.6
    assert {qgen.hop_cap(13, s, max_hops=6, min_hops=2, short_share=0.0, short_max_hops=3) for s in seeds} == {6}
    assert {qgen.hop_cap(13, s, max_hops=6, min_hops=2, short_share=1.0, short_max_hops=3) for s in seeds} == {2, 3}
    with pytest.raises(ValueError, match="short_share"):
        qgen.hop_cap(13, "S:1", max_hops=6, min_hops=2, short_share=1.5, short_max_hops=3)


def test_short_share_gives_short_chains_and_records_the_cap(index, view):
    seeds = ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376"]
    recs = [qgen.generate_for_seed(index, view, s, base_seed=13, attempt=0, strategy="mixed", k_range=(8, 12),
                                   max_hops=6, min_hops=2, level=0, short_share=1.0, short_max_hops=3) for s in seeds]
    ok = [r for r in recs if r["status"] == "ok"]
    assert ok and all(2 <= r["hops"] <= r["hop_cap"] <= 3 for r in ok)
    # a calibration retry that needs a longer chain than the cap gets it (min_hops wins)
    retry = qgen.generate_for_seed(index, view, seeds[0], base_seed=13, attempt=2, strategy="max_chain",
                                   k_range=(12, 12), max_hops=6, min_hops=4, level=1, short_share=1.0)
    assert retry["hop_cap"] == 4 and (retry["status"] != "ok" or retry["hops"] == 4)


def test_solve_detects_ambiguity(index, view):
    rec = next(r for s in ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376"]
               if (r := qgen.generate_for_seed(index, view, s, base_seed=13, attempt=0, strategy="mixed",
                                               k_range=(8, 12), max_hops=6, min_hops=2, level=0))["status"] == "ok")
    variables = Q.variables_from_record(rec)
    for v in variables:
        v.clues = []  # without clues a multi-hop chain is ambiguous
    assert len(Q.solve(index, variables)) > 1


def test_leak_check_catches_names_synonyms_ids_and_overlapping_clues(index):
    fabry = Q.Variable("MONDO:0010526", "disease", None, [])
    assert Q.leaks(index, [fabry], ["A question about Anderson-Fabry disease."])
    assert Q.leaks(index, [fabry], ["see MONDO:0010526"])
    assert Q.leaks(index, [fabry], ["A lysosomal storage disease with angiokeratomas."]) == []
    mild = Q.Variable("HP:0001256", "phenotype", None, [{"kind": "fact", "relation": "is_a", "value": "HP:0001249"}])
    assert any("gives away" in x for x in Q.leaks(index, [mild], ["a kind of it"]))  # 'Intellectual disability'


def test_a_masked_name_inside_a_longer_clue_word_is_a_leak(index):
    formoterol = Q.Variable("DRUGBANK:DB00983", "drug", None, [])  # Formoterol; DB01274 is Arformoterol
    assert Q.leaks(index, [formoterol], ["A drug closely related to arformoterol."])
    keys = Q.masked_keys(index, ["DRUGBANK:DB00983"])
    assert Q.overlaps_masked(index, "DRUGBANK:DB01274", keys) == "DRUGBANK:DB00983"
    assert Q.leaks(index, [formoterol], ["A long-acting beta-2 agonist for asthma."]) == []
    assert not Q.names_inside("hand foot", "and")  # short keys still need whole words


def test_sufficient_hops_counts_the_hops_a_solver_cannot_skip(index):
    fabry, gla = "MONDO:0010526", "NCBIGene:2717"
    pinned = Q.Variable(fabry, "disease", {"relation": "associated_with", "direction": "fwd"},
                        [{"kind": "fact_rev", "relation": "associated_with", "value": gla}])
    assert Q.solve(index, [Q.Variable(fabry, "disease", None, pinned.clues)]) == {fabry}  # GLA names Fabry alone
    start = Q.Variable(gla, "gene", None, [])
    assert Q.sufficient_hops(index, [start, pinned]) == 0  # the answer's own clue: no hop needed
    bare = Q.Variable(fabry, "disease", {"relation": "associated_with", "direction": "fwd"}, [])
    assert Q.sufficient_hops(index, [Q.Variable(gla, "gene", None, [{"kind": "fact", "relation": "associated_with",
                                                                      "value": fabry}]), bare]) == 1


def test_needed_tail_cuts_a_chain_to_the_hops_a_solver_needs(index):
    fabry, gla = "MONDO:0010526", "NCBIGene:2717"
    pinned = Q.Variable(fabry, "disease", {"relation": "associated_with", "direction": "fwd"},
                        [{"kind": "fact_rev", "relation": "associated_with", "value": gla}])
    start = Q.Variable(gla, "gene", None, [])
    cut, why = Q.needed_tail(index, [start, pinned], 0, random.Random(0))
    assert why is None and [v.entity_id for v in cut] == [fabry] and cut[0].link is None  # 0 hops: named by its clues
    assert Q.solve(index, cut) == {fabry}
    bare = Q.Variable(fabry, "disease", {"relation": "associated_with", "direction": "fwd"}, [])
    gene = Q.Variable(gla, "gene", None, [{"kind": "fact", "relation": "associated_with", "value": fabry}])
    same, why = Q.needed_tail(index, [gene, bare], 0, random.Random(0))
    assert why is None and same == [gene, bare]  # the one hop is needed: kept as it is


def test_generation_cuts_or_drops_questions_with_a_shortcut(index, view, monkeypatch):
    seeds = ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376", "MONDO:0009061", "MONDO:0008199"]
    def gen():
        return [qgen.generate_for_seed(index, view, s, base_seed=13, attempt=a, strategy="mixed", k_range=(8, 12),
                                       max_hops=6, min_hops=2, level=0) for s in seeds for a in range(3)]
    real = Q.sufficient_hops
    monkeypatch.setattr(Q, "sufficient_hops", lambda idx, v: 0 if len(v) > 1 else real(idx, v))  # every chain: a shortcut
    recs = gen()
    assert not [r for r in recs if r["status"] == "ok"]
    assert [r for r in recs if r["reason"].startswith("shortcut: the last 0 of")], [r["reason"] for r in recs]


def test_a_definition_clue_says_whose_definition_mentions_what(index):
    clue = {"kind": "fact", "relation": "definition_mentions", "value": "MONDO:0010526"}
    phrases = {Q.clue_phrase(index, "DRUGBANK:DB00983", clue, random.Random(s)) for s in range(40)}
    assert len(phrases) == 2  # both wordings drawn; each says the owner's definition refers to the value
    assert all(("definition" in p or "defined" in p) and p.endswith("fabry disease") for p in phrases), phrases


def test_only_entities_the_mining_stage_found_rare_are_called_rare(index, monkeypatch):
    import random

    fabry = Q.Variable("MONDO:0010526", "disease", None, [])
    monkeypatch.setattr(index, "rare", frozenset())
    plain = [Q.describe(index, fabry, random.Random(i)) for i in range(40)]
    assert not any("rare" in d or "little-known" in d for d in plain)
    monkeypatch.setattr(index, "rare", frozenset({"MONDO:0010526"}))
    rare = [Q.describe(index, fabry, random.Random(i)) for i in range(40)]
    assert any(d.startswith("a rare ") for d in rare) and any("little-known" in d for d in rare)
    assert [d.replace("rare ", "").replace("little-known ", "") for d in rare] == plain  # only the adjective changes


def test_obfuscation_replaces_phenotypes_by_their_parent(index):
    plain = Q.candidate_clues(index, "MONDO:0010526", 0, set())
    obf = Q.candidate_clues(index, "MONDO:0010526", 1, set())
    assert any(c["kind"] == "fact" and c["relation"] == "has_phenotype" for c in plain)
    unders = [c for c in obf if c["kind"] == "under"]
    assert unders and not any(c["kind"] == "fact" and c["relation"] == "has_phenotype" for c in obf)
    for c in unders:
        assert c["via"] in index.below(c["value"]) and "MONDO:0010526" in index.holders(c)


def test_split_by_source_keeps_seeds_and_answers_apart():
    recs = [{"source_entity_id": f"S{i}", "answer_id": f"A{i % 7}"} for i in range(60)]
    train, test = Q.split_by_source(recs, 0.2, seed=3)
    held = {r["source_entity_id"] for r in test} | {r["answer_id"] for r in test}
    assert test and train
    assert not held & ({r["source_entity_id"] for r in train} | {r["answer_id"] for r in train})
    assert Q.split_by_source(recs, 0.2, seed=3) == (train, test)


def test_generation_resumes_without_loss_or_duplicates(tmp_path, index, view):
    seeds = ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376", "NOT:1"]
    path = tmp_path / "attempts.jsonl"
    calls = []

    def make(seed, attempt, kw):
        calls.append(seed)
        if seed == "MONDO:0010526" and len(calls) == 2:
            raise KeyboardInterrupt  # the first run is killed on its second job
        return qgen.generate_for_seed(index, view, seed, base_seed=13, attempt=attempt, strategy="mixed",
                                      k_range=(8, 12), max_hops=6, min_hops=2, level=0)

    with pytest.raises(KeyboardInterrupt):
        qgen.run(path, [(s, 0, {}) for s in seeds], make, progress=False)
    with open(path, "a") as f:
        f.write('{"source_entity_id": "MONDO:00')  # a torn line from the interruption
    done = qgen.run(path, [(s, 0, {}) for s in seeds], make, progress=False)
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]
    assert sorted(r["source_entity_id"] for r in lines) == sorted(seeds)
    assert set(done) == {(s, 0) for s in seeds}
    fresh = tmp_path / "fresh.jsonl"
    qgen.run(fresh, [(s, 0, {}) for s in seeds], make, progress=False)
    a = {r["source_entity_id"]: r.get("question") for r in lines}
    b = {json.loads(x)["source_entity_id"]: json.loads(x).get("question") for x in fresh.read_text().splitlines()}
    assert a == b  # resumed output equals an uninterrupted run
    assert path.read_bytes() == fresh.read_bytes()  # timings live beside the records: the same jobs, the same bytes
    assert done[("NOT:1", 0)]["reason"] == "seed has no chain relations"
    timings = qgen.read_timings(path)  # one per job that searched a chain (the seed without relations has none)
    assert sorted(t["source_entity_id"] for t in timings) == sorted(seeds[:3])
    assert all(t["chain_search_ms"] >= 0 for t in timings) and not any("chain_search_ms" in r for r in lines)
    # the same jobs again: nothing to do; other settings for one seed: that record is made again, not reused
    n = len(calls)
    assert qgen.run(path, [(s, 0, {}) for s in seeds], make, progress=False) == done and len(calls) == n
    again = qgen.run(path, [(seeds[0], 0, {"strategy": "max_chain"})], make, progress=False)
    assert calls[n:] == [seeds[0]] and again[(seeds[0], 0)]["settings_key"] != done[(seeds[0], 0)]["settings_key"]


def test_polish_check_rejects_dropped_clues_and_leaks(index, view):
    rec = next(r for s in ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376"]
               if (r := qgen.generate_for_seed(index, view, s, base_seed=13, attempt=0, strategy="mixed",
                                               k_range=(8, 12), max_hops=6, min_hops=2, level=0))["status"] == "ok")
    assert Q.polish_problem(index, rec, rec["question"]) is None
    assert Q.polish_problem(index, rec, rec["question"] + " It is " + rec["answer"] + ".").startswith("leak")
    first_clue = next(c for c in rec["constraints"][0]["clues"] if c["kind"] == "fact")
    gone = rec["question"].replace(index.name[first_clue["value"]], "something", 1)
    gone = gone.replace(index.name[first_clue["value"]][0].lower() + index.name[first_clue["value"]][1:], "something")
    assert Q.polish_problem(index, rec, gone).startswith("clue dropped")


class _FakeBackend:
    name = "fake"

    def __init__(self, texts):
        self.texts = texts

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, **kw):
        from medkit.llm import Completion
        return [Completion.failed("endpoint down") if t is None else Completion(text=t, n_prompt_tokens=1,
                n_completion_tokens=1, finish_reason="stop") for t in self.texts]


def test_polish_records_keeps_only_faithful_rewrites(index, view):
    rec = next(r for s in ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376"]
               if (r := qgen.generate_for_seed(index, view, s, base_seed=13, attempt=0, strategy="mixed",
                                               k_range=(8, 12), max_hops=6, min_hops=2, level=0))["status"] == "ok")
    faithful = "Puzzle: " + rec["question"]
    leaky = rec["question"] + " (hint: " + rec["answer"] + ")"
    out, stats = Q.polish_records(index, [rec, rec, rec], _FakeBackend([faithful, leaky, None]))
    assert stats == {"polished": 1, "kept_original": 1, "errors": 1}
    assert out[0]["question"] == faithful and out[0]["question_original"] == rec["question"]
    assert out[1]["question"] == rec["question"] and out[1]["polish"]["reason"].startswith("leak")
    assert out[2]["question"] == rec["question"]


def test_model_solver_judges_leniently_and_never_mistakes_letters(index):
    from medkit import calibration as C

    recs = [{"question": "q", "answer_aliases": ["Hepatitis B", "HBV infection"]}] * 3
    res = C.model_solver(_FakeBackend(["I think it is hepatitis B.", "B", None]), recs)
    assert res[0]["solved"] is True and res[1]["solved"] is False and res[2]["solved"] is None
    summary = C.summarise([{"calibration": {"no_tool_model": r, "bm25_top1": {"solved": False}}} for r in res])
    assert summary["no_tool_model"] == 0.5 and summary["judged_no_tool_model"] == 2


def test_bm25_solver_on_the_real_corpus(passages, matcher):
    from medkit import calibration as C
    from medkit import retriever as R

    retr = R.BM25Retriever.build(passages[passages["source"].isin(["MONDO", "HPO"])])
    fabry = passages.set_index("passage_id").loc["MONDO:0010526", "text"]
    easy = {"question": fabry, "answer_id": "MONDO:0010526"}
    named = {"question": "Which gene is mutated in Fabry disease, the lysosomal storage disease?",
             "answer_id": "MONDO:0010526"}
    hard = {"question": "A rare disorder shows a feature also seen in another disorder. Name it.",
            "answer_id": "MONDO:0010526"}
    res = C.bm25_solver(retr, matcher, [easy, named, hard])
    assert res[0]["solved"] and res[0]["passage_id"] == "MONDO:0010526"
    assert res[1]["solved"] and not res[2]["solved"]


def test_records_of_an_older_generator_are_regenerated(tmp_path, index, view):
    path = tmp_path / "attempts.jsonl"
    path.write_text(json.dumps({"source_entity_id": "MONDO:0012648", "attempt": 0, "status": "ok",
                                "generator_version": qgen.GENERATOR_VERSION - 1}) + "\n")
    done = qgen.run(path, [("MONDO:0012648", 0, {})],
                    lambda s, a, kw: qgen.generate_for_seed(index, view, s, base_seed=13, attempt=a, strategy="mixed",
                                                            k_range=(8, 12), max_hops=6, min_hops=2, level=0),
                    progress=False)
    assert done[("MONDO:0012648", 0)]["generator_version"] == qgen.GENERATOR_VERSION
    assert len(path.read_text().splitlines()) == 2


def test_answer_aliases_do_not_depend_on_set_order():
    """Names that differ only in case once came out in hash order (PYTHONHASHSEED): sorted by case too."""
    from types import SimpleNamespace

    names = ["abc syndrome", "ABC syndrome", "Abc Syndrome", "aBC syndrome", "x"]
    orders = {tuple(Q.answer_aliases(SimpleNamespace(name={"E:1": names[i]}, synonyms={"E:1": names[:i] + names[i + 1:]}),
                                     "E:1")) for i in range(len(names))}
    assert orders == {("ABC syndrome", "Abc Syndrome", "aBC syndrome", "abc syndrome")}


def test_a_failed_solver_verdict_is_not_a_finished_calibration(tmp_path):
    """A dead endpoint's verdicts (solved None) are redone on the next run; given verdicts are kept."""
    path = tmp_path / "calibration.jsonl"
    records = [{"id": "q1"}, {"id": "q2"}]
    calls = []

    def dead(batch):
        calls.extend(r["id"] for r in batch)
        return [{"solved": None, "error": "connection refused"} for _ in batch]

    def live(batch):
        calls.extend(r["id"] for r in batch)
        return [{"solved": r["id"] == "q1", "output": "..."} for r in batch]

    assert qgen.calibrate_pending(path, records, {"model": dead}, progress=False)["q1"]["model"]["solved"] is None
    done = qgen.calibrate_pending(path, records, {"model": live}, progress=False)
    assert calls == ["q1", "q2", "q1", "q2"] and done["q1"]["model"]["solved"] and not done["q2"]["model"]["solved"]
    assert qgen.calibrate_pending(path, records, {"model": live}, progress=False) == done and len(calls) == 4


def test_a_chain_with_a_shortcut_is_cut_to_the_needed_tail(index, view):
    seeds = ["HP:0000364", "HP:0002024", "HP:0002027"]  # fixture seeds whose chains' tails pin the answer
    recs = [r for s in seeds for a in range(2)
            if (r := qgen.generate_for_seed(index, view, s, base_seed=13, attempt=a, strategy="mixed", k_range=(8, 12),
                                            max_hops=6, min_hops=2, level=0))["status"] == "ok"]
    cut = [r for r in recs if r["chain_hops_before_cut"] > r["hops"]]
    assert len(cut) >= 3, [(r["hops"], r["chain_hops_before_cut"]) for r in recs]
    for r in cut:
        variables = Q.variables_from_record(r)
        assert variables[0].link is None and variables[0].clues and len(r["chain"]) == r["hops"] + 1
        assert Q.solve(index, variables) == {r["answer_id"]} and Q.sufficient_hops(index, variables) == r["hops"] >= 2
        assert Q.leaks(index, variables, [r["question"], r["reasoning_path"]]) == []
