"""The grounding rule (medkit.grounding) on conversations made of real tool output over real KB slices."""

from __future__ import annotations

import pandas as pd
import pytest

from medkit import grounding as G
from medkit import tools as T

# The cpu question 21cbb71f63e0 (issue 13's Ritonavir case), as notebook 03 wrote it.
RITONAVIR_QUESTION = {
    "id": "21cbb71f63e0", "hops": 3, "answer": "HIV infectious disease",
    "question": "Consider a drug that acts as a cannabinoid receptor agonist and acts as a non-narcotic analgesic. "
                "The reference definition of the drug mentions a rare disorder. The disorder is mentioned in the "
                "reference definition of a drug that has a reference definition that mentions chronic hepatitis C "
                "virus infection. The reference definition of the second drug mentions a disorder that belongs to "
                "the group of lentivirus infection. Which disorder is this?",
    "chain": ["DRUGBANK:DB00470", "MONDO:0012268", "DRUGBANK:DB00503", "MONDO:0005109"],
    "constraints": [
        {"entity_id": "DRUGBANK:DB00470", "type": "drug", "link": None,
         "clues": [{"kind": "fact", "relation": "has_role", "value": "CHEBI:67072"},
                   {"kind": "fact", "relation": "has_role", "value": "CHEBI:35481"}]},
        {"entity_id": "MONDO:0012268", "type": "disease",
         "link": {"relation": "definition_mentions", "direction": "fwd"}, "clues": []},
        {"entity_id": "DRUGBANK:DB00503", "type": "drug",
         "link": {"relation": "definition_mentions", "direction": "rev"},
         "clues": [{"kind": "fact", "relation": "definition_mentions", "value": "MONDO:0005354"}]},
        {"entity_id": "MONDO:0005109", "type": "disease",
         "link": {"relation": "definition_mentions", "direction": "fwd"},
         "clues": [{"kind": "fact", "relation": "is_a", "value": "MONDO:0022034"}]}],
    "entity_ids": {"Entity_A": "DRUGBANK:DB00470", "Clue_1": "CHEBI:67072", "Clue_2": "CHEBI:35481",
                   "Entity_B": "MONDO:0012268", "Entity_C": "DRUGBANK:DB00503", "Clue_3": "MONDO:0005354",
                   "Target_Entity": "MONDO:0005109", "Clue_4": "MONDO:0022034"},
    "entity_mapping": {"Entity_A": "Dronabinol", "Clue_1": "cannabinoid receptor agonist",
                       "Clue_2": "non-narcotic analgesic", "Entity_B": "AIDS", "Entity_C": "Ritonavir",
                       "Clue_3": "chronic hepatitis C virus infection", "Target_Entity": "HIV infectious disease",
                       "Clue_4": "lentivirus infection"},
}
RITONAVIR = "DRUGBANK:DB00503"
DRONABINOL = "DRUGBANK:DB00470"
AIDS_DRUGS = ["DRUGBANK:DB00369", DRONABINOL, RITONAVIR, "DRUGBANK:DB00529", "DRUGBANK:DB00709",
              "DRUGBANK:DB00900", "DRUGBANK:DB01004"]
# The cpu profile's corpus definition_mentions edges (drug at one end) of Dronabinol, AIDS and chronic hepatitis C.
CORPUS_EDGES = ([(DRONABINOL, t) for t in ("HP:0002017", "HP:0002039")]
                + [(d, "MONDO:0012268") for d in AIDS_DRUGS]
                + [(d, "MONDO:0005354") for d in (RITONAVIR, "DRUGBANK:DB05521", "DRUGBANK:DB08873", "DRUGBANK:DB08934",
                                                  "DRUGBANK:DB09027", "DRUGBANK:DB09183", "DRUGBANK:DB09296",
                                                  "DRUGBANK:DB09297", "DRUGBANK:DB11613")])

TETRASOMY_12P, MRKH_1 = "MONDO:0011146", "MONDO:0010173"   # tie on "Aplasia of the upper vagina"
HYPOPLASTIC_PANCREAS = "MONDO:0017400"                        # the only 2/2 for acholic stools + jejunal atresia
# 7 diseases / 78 diseases / the only disease the two share
BODY_HEIGHT, KIDNEY_DYSPLASIA, RHYNS = "HP:0000002", "HP:0000003", "MONDO:0011202"
PRUNE_BELLY, PRUNE_BELLY_SYNDROME = "HP:0004392", "MONDO:0007032"  # shown among the first 25 of the 78


@pytest.fixture(scope="module")
def names(entities) -> dict[str, str]:
    return dict(zip(entities["entity_id"], entities["name"]))


@pytest.fixture(scope="module")
def drug_tools(entities, relations, passages) -> T.MedicalToolbox:
    """The real tools over a real KB slice: every KB relation of the question's anchors plus their corpus edges."""
    anchors = {"CHEBI:67072", "CHEBI:35481", DRONABINOL, "MONDO:0012268", "MONDO:0005354"}
    kb = relations[relations["head_id"].isin(anchors) | relations["tail_id"].isin(anchors)]
    corpus = pd.DataFrame(CORPUS_EDGES, columns=["head_id", "tail_id"]).assign(relation="definition_mentions",
                                                                               frequency=float("nan"))
    return T.MedicalToolbox(entities, pd.concat([kb, corpus], ignore_index=True), passages.iloc[:0], retriever=None)


def _call(name, arguments, think="I will look this up."):
    return {"role": "assistant", "content": f"<think>{think}</think>",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def _conversation(tb, question, steps, answer=None):
    """The question, then each (tool, arguments) with the real tool's output (a step without output: the
    last call), then the answer."""
    messages = [{"role": "system", "content": "You are a medical research agent."},
                {"role": "user", "content": question}]
    for step in steps:
        name, arguments, *run = step
        messages.append(_call(name, arguments))
        if run != [False]:
            messages.append({"role": "tool", "name": name, "content": tb.call(name, arguments)})
    if answer is not None:
        messages.append({"role": "assistant", "content": f"<think>That is the one.</think>\n<answer>{answer}</answer>"})
    return messages


def _record(names, chain, hops):
    """A question record over real ids: ``hops`` gives each entity's (link, clues); like notebook 03's, it names
    the chain and clue entities in ``entity_ids`` / ``entity_mapping``."""
    clues = list(dict.fromkeys(c["value"] for _, cs in hops for c in cs if c["value"] in names))
    return {"id": "hand", "question": "Which entity is this?", "chain": chain, "hops": len(chain) - 1,
            "constraints": [{"entity_id": e, "link": link, "clues": clues} for e, (link, clues) in zip(chain, hops)],
            "entity_ids": {**{f"E{i}": e for i, e in enumerate(chain)}, **{f"C{j}": v for j, v in enumerate(clues)}},
            "entity_mapping": {**{f"E{i}": names[e] for i, e in enumerate(chain)},
                               **{f"C{j}": names[v] for j, v in enumerate(clues)}},
            "answer": names[chain[-1]]}


def _commit(report, entity_id):
    (commit,) = [c for c in report.commits if c.entity_id == entity_id]
    return commit


def _has_phenotype(value):
    return {"kind": "fact", "relation": "has_phenotype", "value": value}


REV_PHENOTYPE = {"relation": "has_phenotype", "direction": "rev"}

# --------------------------------------------------------------------------- the Ritonavir case

HOP0 = [("related", {"entity_id": "cannabinoid receptor agonist", "relation": "has_role", "direction": "in"})]
HOP0_CHECKED = [*HOP0, ("common", {"entity_ids": ["cannabinoid receptor agonist", "non-narcotic analgesic"],
                                   "relation": "has_role"})]
HOP1 = [("related", {"entity_id": DRONABINOL, "relation": "definition_mentions", "direction": "out"})]
AIDS_LIST = ("related", {"entity_id": "MONDO:0012268", "relation": "definition_mentions", "direction": "in"})
INTERSECTION = ("common", {"entity_ids": ["AIDS", "chronic hepatitis C virus infection"],
                           "relation": "definition_mentions"})
PICK = ("related", {"entity_id": RITONAVIR, "relation": "definition_mentions", "direction": "out"}, False)


def test_ritonavir_picked_from_a_list_of_seven_is_ungrounded(drug_tools):
    messages = _conversation(drug_tools, RITONAVIR_QUESTION["question"], [*HOP0, *HOP1, AIDS_LIST, PICK])
    assert messages[-2]["content"].startswith(
        "AIDS (MONDO:0012268) — definition_mentions\nincoming (X -definition_mentions), 7:")
    report = G.check_trajectory(messages, RITONAVIR_QUESTION)
    assert report.malformed is None and report.hops == 3 and not report.grounded
    pick = _commit(report, RITONAVIR)
    assert (pick.hop, pick.via, pick.introduced_by) == (2, "call:related", "related")
    assert pick.introduced_at == len(messages) - 2  # the AIDS list, right before the committing call
    assert not pick.grounded and pick.reason == "competitors_unresolved"
    assert set(pick.competitors) == set(AIDS_DRUGS) - {RITONAVIR}
    assert set(pick.unresolved) == set(AIDS_DRUGS) - {RITONAVIR, DRONABINOL}  # Dronabinol is the chain's first drug
    assert dict(pick.ruled_out)[DRONABINOL].startswith("an entity committed earlier")
    # Dronabinol: Cannabigerol is also a cannabinoid receptor agonist and nothing checks the analgesic clue
    assert _commit(report, DRONABINOL).unresolved == ("DRUGBANK:DB14734",)
    aids = _commit(report, "MONDO:0012268")  # the only disorder Dronabinol's definition mentions
    assert aids.grounded and aids.reason == "sole_candidate" and aids.competitors == ()
    assert report.uncommitted == ("MONDO:0005109",)


def test_an_intersection_before_the_pick_grounds_ritonavir_but_not_after_it(drug_tools):
    steps = [*HOP0_CHECKED, *HOP1, AIDS_LIST, INTERSECTION, PICK]
    messages = _conversation(drug_tools, RITONAVIR_QUESTION["question"], steps)
    assert messages[-2]["content"].endswith(", 1: Ritonavir (DRUGBANK:DB00503)")
    report = G.check_trajectory(messages, RITONAVIR_QUESTION)
    pick = _commit(report, RITONAVIR)
    assert pick.grounded and pick.reason == "competitors_ruled_out" and pick.introduced_by == "related"
    evidence = dict(pick.ruled_out)
    assert set(evidence) == set(AIDS_DRUGS) - {RITONAVIR}
    assert all(evidence[d].startswith("complete common(MONDO:0012268, MONDO:0005354, definition_mentions)")
               for d in set(evidence) - {DRONABINOL})
    assert report.grounded and [c.grounded for c in report.commits] == [True, True, True]
    # the same intersection made after the commit (a verification) grounds nothing
    late = _conversation(drug_tools, RITONAVIR_QUESTION["question"],
                         [*HOP0_CHECKED, *HOP1, AIDS_LIST, PICK[:2], INTERSECTION])
    assert not _commit(G.check_trajectory(late, RITONAVIR_QUESTION), RITONAVIR).grounded


# --------------------------------------------------------------------------- diagnose


def test_diagnose_tie_and_rank_two_are_ungrounded_rank_one_unique_is_grounded(toolbox, names):
    tie = ("diagnose", {"phenotypes": ["Aplasia of the upper vagina"], "k": 3})
    out = toolbox.call(*tie).splitlines()
    # a tie shares its rank; a disease matching none of the phenotypes is not listed at all
    assert out[1].startswith("1. Mayer-Rokitansky-Kuster-Hauser syndrome type 1 (MONDO:0010173) 1/1: #1 ")
    assert out[2].startswith("1. tetrasomy 12p (MONDO:0011146) 1/1: #1 ")
    assert all(" 0/1" not in line for line in out) and "score" not in "\n".join(out)
    for pick, other in ((TETRASOMY_12P, MRKH_1), (MRKH_1, TETRASOMY_12P)):
        record = _record(names, [pick], [(None, [_has_phenotype("HP:0012673")])])
        commit = _commit(G.check_trajectory(_conversation(toolbox, "?", [tie], names[pick]), record), pick)
        assert (commit.via, commit.introduced_by) == ("answer", "diagnose")
        assert not commit.grounded and commit.unresolved == (other,)
        assert "MONDO:0000050" not in commit.competitors  # matched 0/1: not listed, so no candidate

    unique = ("diagnose", {"phenotypes": ["Acholic stools", "Jejunal atresia"], "k": 3})
    clues = [_has_phenotype("HP:0011985"), _has_phenotype("HP:0005235")]
    record = _record(names, [HYPOPLASTIC_PANCREAS], [(None, clues)])
    commit = _commit(G.check_trajectory(_conversation(toolbox, "?", [unique], names[HYPOPLASTIC_PANCREAS]), record),
                     HYPOPLASTIC_PANCREAS)
    assert commit.grounded and commit.reason == "competitors_ruled_out" and len(commit.competitors) == 2
    assert all("diagnose line lacks" in why for _, why in commit.ruled_out)


# --------------------------------------------------------------------------- complete and truncated lists


def test_a_truncated_list_rules_nothing_out_a_complete_intersection_does(toolbox, names):
    small = toolbox.related(BODY_HEIGHT, "has_phenotype", "in")
    big = toolbox.related(KIDNEY_DYSPLASIA, "has_phenotype", "in")
    (listing,) = G.parse_observation(0, "related", small, {"direction": "in"}).listings
    assert listing.complete and len(listing.items) == 3 and RHYNS in listing.items  # 7 before KB version 2: 4 lack it
    (listing,) = G.parse_observation(0, "related", big, {"direction": "in"}).listings
    assert not listing.complete and (len(listing.items), listing.hidden) == (25, 53) and big.endswith("... and 53 more")

    record = _record(names, [BODY_HEIGHT, RHYNS], [(None, []), (REV_PHENOTYPE, [_has_phenotype(KIDNEY_DYSPLASIA)])])
    start = [("lookup", {"name": names[BODY_HEIGHT]}),
             ("related", {"entity_id": BODY_HEIGHT, "relation": "has_phenotype", "direction": "in"})]
    truncated = ("related", {"entity_id": KIDNEY_DYSPLASIA, "relation": "has_phenotype", "direction": "in"})
    report = G.check_trajectory(_conversation(toolbox, "?", [*start, truncated], "RHYNS syndrome"), record)
    commit = _commit(report, RHYNS)
    assert commit.introduced_by == "related" and not commit.grounded and len(commit.unresolved) == 2

    shared = ("common", {"entity_ids": [BODY_HEIGHT, KIDNEY_DYSPLASIA], "relation": "has_phenotype"})
    report = G.check_trajectory(_conversation(toolbox, "?", [*start, shared], "RHYNS syndrome"), record)
    commit = _commit(report, RHYNS)
    assert commit.grounded and len(commit.ruled_out) == 2 and commit.unresolved == ()


def test_the_unseen_rest_of_a_truncated_list_needs_a_list_that_shows_no_more(toolbox, names):
    record = _record(names, [KIDNEY_DYSPLASIA, PRUNE_BELLY_SYNDROME],
                     [(None, []), (REV_PHENOTYPE, [_has_phenotype(PRUNE_BELLY)])])
    start = [("lookup", {"name": names[KIDNEY_DYSPLASIA]}),
             ("related", {"entity_id": KIDNEY_DYSPLASIA, "relation": "has_phenotype", "direction": "in"})]
    answer = names[PRUNE_BELLY_SYNDROME]

    def pick(*evidence):
        return _commit(G.check_trajectory(_conversation(toolbox, "?", [*start, *evidence], answer), record),
                       PRUNE_BELLY_SYNDROME)

    alone = pick()
    assert not alone.grounded and len(alone.competitors) == 24 and alone.unresolved[-1] == "+53 unseen"
    # the complete clue list rules out every shown competitor, but it names diseases the truncated list did not show,
    # so the 53 unseen ones may hold the clue too
    clue = pick(("related", {"entity_id": PRUNE_BELLY, "relation": "has_phenotype", "direction": "in"}))
    assert not clue.grounded and clue.unresolved == ("+53 unseen",) and len(clue.ruled_out) == 24
    both = pick(("common", {"entity_ids": [KIDNEY_DYSPLASIA, PRUNE_BELLY], "relation": "has_phenotype"}))
    assert both.grounded and both.unresolved == ()


# --------------------------------------------------------------------------- violations and bad rows


def test_a_commit_to_an_id_or_name_no_observation_showed_is_a_violation(toolbox, names):
    record = _record(names, [RHYNS], [(None, [_has_phenotype(KIDNEY_DYSPLASIA)])])
    blind = _conversation(toolbox, "?", [("related", {"entity_id": RHYNS, "relation": "has_phenotype",
                                                      "direction": "out"})])
    commit = _commit(G.check_trajectory(blind, record), RHYNS)
    assert (commit.reason, commit.grounded, commit.introduced_by) == ("never_shown", False, None)
    assert commit.via == "call:related"

    other = _conversation(toolbox, "?", [("lookup", {"name": names[BODY_HEIGHT]})], "RHYNS syndrome")
    assert _commit(G.check_trajectory(other, record), RHYNS).reason == "never_shown"

    thought = [*other[:-1], {"role": "assistant", "content": f"<think>It must be {RHYNS}.</think>\n<answer>?</answer>"}]
    assert _commit(G.check_trajectory(thought, record), RHYNS).via == "thought"
    quiet = G.check_trajectory(thought, record, thoughts=False)
    assert quiet.commits == [] and quiet.uncommitted == (RHYNS,) and not quiet.grounded

    # looking a chain entity up by its name before anything showed that name is a guess too
    guess = _conversation(toolbox, "?", [("lookup", {"name": "RHYNS syndrome"})], "RHYNS syndrome")
    commit = _commit(G.check_trajectory(guess, record), RHYNS)
    assert (commit.reason, commit.via, commit.turn) == ("never_shown", "call:lookup", 2)

    seen = _conversation(toolbox, "?", [("common", {"entity_ids": [BODY_HEIGHT, KIDNEY_DYSPLASIA],
                                                    "relation": "has_phenotype"})], "RHYNS syndrome")
    commit = _commit(G.check_trajectory(seen, record), RHYNS)
    assert (commit.introduced_by, commit.reason, commit.grounded) == ("common", "sole_candidate", True)
    assert commit.via == "answer"


GOOD = [{"role": "user", "content": "?"},
        {"role": "assistant", "content": "<think>x</think>\n<answer>RHYNS syndrome</answer>"}]


@pytest.mark.parametrize("messages, question_change, reason", [
    (None, {}, "messages missing"),
    ("just text", {}, "messages missing"),
    (["not a message"], {}, "message 0 is not an object"),
    ([{"role": "assistant", "content": 42}], {}, "message 0 content is not text"),
    ([{"role": "assistant", "content": "<think>x</think>", "tool_calls": "oops"}], {}, "tool_calls is not a list"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "read", "arguments": "{bad json"}}]}],
     {}, "unreadable arguments"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}], {}, "without a name"),
    ([{"role": "assistant", "content": "", "tool_calls": [7]}], {}, "without a name"),
    (GOOD, None, "no question record"),
    (GOOD, {"chain": []}, "no chain"),
    (GOOD, {"chain": [RHYNS, 3]}, "no chain"),
    (GOOD, {"constraints": []}, "constraints do not match"),
])
def test_malformed_rows_are_reported_not_raised(names, messages, question_change, reason):
    record = _record(names, [RHYNS], [(None, [])])
    question = None if question_change is None else {**record, **question_change}
    report = G.check_trajectory(messages, question)
    assert report.malformed is not None and reason in report.malformed, report.malformed
    assert report.commits == [] and not report.grounded
    assert G.check_trajectory(GOOD, record).malformed is None  # the same record with good messages is fine


def test_summarise_counts_commits_by_tool_and_hops_and_malformed_rows(drug_tools):
    bad = _conversation(drug_tools, "?", [*HOP0, *HOP1, AIDS_LIST, PICK])
    good = _conversation(drug_tools, "?", [*HOP0_CHECKED, *HOP1, AIDS_LIST, INTERSECTION, PICK])
    rows = [{"question_id": "21cbb71f63e0", "variant": 0, "messages": bad},
            {"question_id": "21cbb71f63e0", "variant": 1, "messages": good},
            {"question_id": "21cbb71f63e0", "variant": 2, "messages": [{"role": "assistant", "tool_calls": {}}]},
            {"question_id": "unknown", "messages": good}, "not a row"]
    reports = G.check_rows(rows, [RITONAVIR_QUESTION, {"no": "id"}])
    assert [r.variant for r in reports] == [0, 1, 2, None, None]
    frame = G.commit_frame(reports)
    assert len(frame) == 6 and frame["hops"].eq(3).all() and frame["trajectory"].tolist() == [0, 0, 0, 1, 1, 1]
    s = G.summarise(reports)
    assert (s["trajectories"], s["malformed"], s["commits"], s["grounded_commits"]) == (5, 3, 6, 4)
    assert s["malformed_reasons"] == {"message 0 tool_calls is not a list": 1, "no question record for this row": 1,
                                      "row is not an object": 1}
    assert s["grounded_commit_rate"] == round(4 / 6, 4) and s["grounded_trajectory_rate"] == 0.5
    assert s["final_commit_grounded_rate"] is None and s["uncommitted_entities"] == 2
    assert s["by_tool"].loc["related", "commits"] == 6 and s["by_tool"].loc["related", "grounded"] == 4
    assert s["by_tool"]["share_of_commits"].sum() == 1.0
    hops = s["by_hops"].loc[3]
    assert (hops["trajectories"], hops["grounded_trajectories"], hops["commits"]) == (2, 1, 6)
    assert s["by_position"]["commits"].tolist() == [2, 2, 2]


def test_probe_commit_tells_what_is_still_open_with_structured_evidence(drug_tools):
    question = RITONAVIR_QUESTION["question"]
    before = _conversation(drug_tools, question, [*HOP0_CHECKED, *HOP1, AIDS_LIST])
    n = len(before)
    probe = G.probe_commit(before, RITONAVIR_QUESTION, RITONAVIR)
    assert len(before) == n  # the conversation is not changed
    assert not probe.grounded and probe.introduced_at == n - 1 and probe.turn == n
    assert set(probe.unresolved) == set(AIDS_DRUGS) - {RITONAVIR, DRONABINOL}
    after = _conversation(drug_tools, question, [*HOP0_CHECKED, *HOP1, AIDS_LIST, INTERSECTION])
    probe = G.probe_commit(after, RITONAVIR_QUESTION, RITONAVIR)
    assert probe.grounded and probe.unresolved == ()
    evidence = dict(probe.evidence)
    assert evidence[DRONABINOL].kind == "committed" and evidence[DRONABINOL].at is None
    shared = [e for c, e in probe.evidence if c != DRONABINOL]
    assert len(shared) == 5 and {e.kind for e in shared} == {"intersection"}
    assert {(e.tool, e.anchors, e.relation, e.items, e.at) for e in shared} == \
        {("common", ("MONDO:0012268", "MONDO:0005354"), "definition_mentions", (RITONAVIR,), len(after) - 1)}
    assert dict(probe.ruled_out) == {c: e.text for c, e in probe.evidence}
    # a commit already made is returned as judged; unknown entities and bad records give None
    made = _conversation(drug_tools, question, [*HOP0_CHECKED, *HOP1, AIDS_LIST, PICK[:2]])
    assert G.probe_commit(made, RITONAVIR_QUESTION, RITONAVIR).turn == len(made) - 2
    assert G.probe_commit(after, RITONAVIR_QUESTION, "MONDO:9999999") is None
    assert G.probe_commit(after, {"chain": []}, RITONAVIR) is None
    assert G.probe_commit("not messages", RITONAVIR_QUESTION, RITONAVIR) is None
    assert [h.entity_id for h in G.question_hops(RITONAVIR_QUESTION)] == RITONAVIR_QUESTION["chain"]
    assert G.question_hops({"chain": []}) == []


def test_an_intersection_with_one_relation_per_anchor_bounds_the_hop_only_when_each_pair_is_a_constraint(toolbox, names):
    hypotonia, houge_janssens_2, facial_hypotonia = "HP:0001252", "MONDO:0014605", "HP:0000297"
    record = _record(names, [hypotonia, facial_hypotonia],
                     [(None, []), ({"relation": "is_a", "direction": "rev"},
                                   [{"kind": "fact_rev", "relation": "has_phenotype", "value": houge_janssens_2}])])
    start = [("lookup", {"name": names[hypotonia]}),
             ("related", {"entity_id": hypotonia, "relation": "is_a", "direction": "in"})]  # 9 subtypes, complete
    # the disease's own phenotype list is cut at 25 of 49: it rules nothing out
    own = ("related", {"entity_id": houge_janssens_2, "relation": "has_phenotype", "direction": "out"})

    def pick(*evidence):
        return _commit(G.check_trajectory(_conversation(toolbox, "?", [*start, *evidence], names[facial_hypotonia]),
                                          record), facial_hypotonia)

    alone = pick(own)
    assert alone.introduced_by == "related" and not alone.grounded and len(alone.unresolved) == 8
    mixed = pick(("common", {"entity_ids": [hypotonia, houge_janssens_2], "relation": "is_a,has_phenotype"}))
    assert mixed.grounded and len(mixed.ruled_out) == 8
    assert {e.kind for _, e in mixed.evidence} == {"intersection"}
    swapped = pick(("common", {"entity_ids": [hypotonia, houge_janssens_2], "relation": "has_phenotype,is_a"}))
    assert not swapped.grounded and len(swapped.unresolved) == 8  # complete (none), but not the hop's constraints


def test_the_summary_record_is_strict_json():
    import json

    frame = pd.DataFrame({"commits": [2, 0], "grounded_commit_rate": [0.5, float("nan")]},
                         index=pd.Index([2, 6], name="hops"))
    rec = G.summary_record({"grounded_commit_rate": 0.5, "by_hops": frame})
    assert rec["by_hops"] == [{"hops": 2, "commits": 2, "grounded_commit_rate": 0.5},
                              {"hops": 6, "commits": 0, "grounded_commit_rate": None}]
    json.dumps(rec, allow_nan=False)


def test_diagnose_parser_maps_numbered_phenotypes_and_reads_the_older_formats():
    v5 = ("Query: #1 Renal hypoplasia/aplasia (HP:0008678); #2 Abnormal periauricular region morphology (HP:0000383)\n"
           "1. microcephaly syndrome (MONDO:0011050) score=-1.21 2/2: #1 55%; #2 freq unknown\n"
           "2. acrorenal syndrome (MONDO:0007059) score=-4.72 1/2: #1 90%\n"
           "3. radio-renal syndrome (MONDO:0008359) score=-4.72 1/2: #2 0% [excluded]")
    old = ("Query: Renal hypoplasia/aplasia (HP:0008678); Abnormal periauricular region morphology (HP:0000383)\n"
           "1. microcephaly syndrome (MONDO:0011050) score=-1.21 matched=2/2: Renal hypoplasia/aplasia 55%; "
           "Abnormal periauricular region morphology freq unknown\n"
           "2. acrorenal syndrome (MONDO:0007059) score=-4.72 matched=1/2: Renal hypoplasia/aplasia 90%\n"
           "3. radio-renal syndrome (MONDO:0008359) score=-4.72 matched=1/2: Abnormal periauricular region morphology "
           "0% [excluded]")
    # since v9 the query is by name: its ids are the call's (an id as written, a name through the question's names)
    new = ("Unresolved (ignored): no such phenotype\n"
           "Query: #1 Renal hypoplasia/aplasia; #2 Abnormal periauricular region morphology\n"
           "1. microcephaly syndrome (MONDO:0011050) 2/2: #1 55%; #2 freq unknown\n"
           "2. acrorenal syndrome (MONDO:0007059) 1/2: #1 90%\n"
           "3. radio-renal syndrome (MONDO:0008359) 1/2: #1 90%; #2 excluded")
    call = {"phenotypes": ["HP:0008678", "no such phenotype", "abnormal periauricular region MORPHOLOGY"]}
    names = {"abnormal periauricular region morphology": "HP:0000383"}
    assert G.query_ids(call, new.splitlines(), names) == ["HP:0008678", "HP:0000383"]
    assert G.query_ids({"phenotypes": ["HP:0008678"]}, new.splitlines(), names) == []  # counts differ: by name only
    for text, args in ((v5, {}), (old, {}), (new, call)):
        obs = G.parse_observation(0, "diagnose", text, args, names)
        assert obs.query == {"HP:0008678": "Renal hypoplasia/aplasia", "HP:0000383": "Abnormal periauricular region morphology"}
        assert obs.listings[0].items == ("MONDO:0011050", "MONDO:0007059", "MONDO:0008359")
        assert obs.matched["MONDO:0011050"] == {"Renal hypoplasia/aplasia", "Abnormal periauricular region morphology"}
        assert obs.matched["MONDO:0007059"] == {"Renal hypoplasia/aplasia"}
    # an excluded annotation says the disease is known to lack the phenotype: no match, in any format
    assert G.parse_observation(0, "diagnose", new, call, names).matched["MONDO:0008359"] == {"Renal hypoplasia/aplasia"}
    for text in (v5, old):
        assert G.parse_observation(0, "diagnose", text, {}).matched["MONDO:0008359"] == set()


def test_search_hits_parse_with_and_without_a_passage_id():
    text = ("Fabry disease (MONDO:0010526): A lysosomal storage disease ...\n"
            "[PMID:1] Enzyme therapy (MONDO:0010526): Agalsidase ...\n"
            "[UBERON:0000002] uterine cervix: no entity, not a candidate")
    obs = G.parse_observation(0, "search", text, {})
    assert obs.listings[0].items == ("MONDO:0010526", "MONDO:0010526") and not obs.listings[0].complete


def test_common_anchors_come_from_the_call_and_the_older_headers_still_parse():
    new = "has_phenotype shared, 2: Ataxia (HP:0001251); Seizure (HP:0001250)"
    call = {"entity_ids": ["MONDO:0010044", "Developmental and epileptic encephalopathy, 6A"]}
    names = {"developmental and epileptic encephalopathy 6a": "MONDO:0100079"}
    v5 = "has_phenotype shared by MONDO:0010044, MONDO:0100079, 2: Ataxia (HP:0001251); Seizure (HP:0001250)"
    old = ("has_phenotype neighbours shared by hereditary spastic paraplegia 15 (MONDO:0010044), developmental and "
           "epileptic encephalopathy, 6A (MONDO:0100079), 2: Ataxia (HP:0001251); Seizure (HP:0001250)")
    for text, args in ((new, call), (v5, {}), (old, {})):
        (lst,) = G.parse_observation(0, "common", text, args, names).listings
        assert lst.anchors == ("MONDO:0010044", "MONDO:0100079") and lst.relation == "has_phenotype"
        assert lst.items == ("HP:0001251", "HP:0001250") and lst.complete
    (lst,) = G.parse_observation(0, "common", "is_a,has_phenotype shared by HP:0001258, MONDO:0012435: none.", {}).listings
    assert lst.anchors == ("HP:0001258", "MONDO:0012435") and lst.items == () and lst.complete
    # a name that denotes several entries: the tool says which it took, and that wins over the question's names
    picked = ("has_phenotype shared (Developmental and epileptic encephalopathy, 6A = MONDO:0999999), 2: "
              "Ataxia (HP:0001251); Seizure (HP:0001250)")
    assert G.parse_observation(0, "common", picked, call, names).listings[0].anchors == ("MONDO:0010044", "MONDO:0999999")
    # a name the question does not give stays a name: it is no constraint's anchor, so the list bounds nothing
    other = {"entity_ids": ["MONDO:0010044", "Some other disease"]}
    assert G.parse_observation(0, "common", new, other, names).listings[0].anchors == ("MONDO:0010044", "Some other disease")
    (lst,) = G.parse_observation(0, "common", "is_a,has_phenotype shared: none.",
                                 {"entity_ids": ["HP:0001258", "MONDO:0012435"]}).listings
    assert lst.anchors == ("HP:0001258", "MONDO:0012435") and lst.items == () and lst.complete
