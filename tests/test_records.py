"""Question files read for evaluation: validated with clear errors, stable ids, unknown hops kept unknown."""

from __future__ import annotations

import json

import pytest

from medkit import evaluation as E
from medkit import records
from medkit.errors import InputError

KIT = {"id": "abc123", "question": "Which disorder ...?", "answer": "Fabry disease", "answer_id": "MONDO:0010526",
       "answer_aliases": ["Fabry disease"], "hops": 2, "specialty": "Genetics", "chain": ["X", "Y"]}
# the paper authors' format: no id, no hops (a sample record's fields, shortened)
AUTHORS = {"question": "A rare disease presents with angiokeratoma ...; which enzyme is deficient?",
           "answer": "alpha-galactosidase A", "reasoning_path": "Entity_A --has_phenotype--> Clue_1",
           "entity_mapping": {"Entity_A": "Fabry disease"}, "source_entity": "Fabry disease"}


def write(tmp_path, rows, name="q.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_kits_and_the_authors_records_load(tmp_path):
    other = {**AUTHORS, "question": AUTHORS["question"].replace("enzyme", "protein")}
    qs = records.load_questions(write(tmp_path, [KIT, AUTHORS, other]))
    assert [q["id"] for q in qs][0] == "abc123" and len({q["id"] for q in qs}) == 3
    assert qs[1]["id"] == records.derived_id(AUTHORS["question"]) == records.derived_id(" " + AUTHORS["question"] + " ")
    assert qs[0]["chain"] == ["X", "Y"] and qs[1]["entity_mapping"] == AUTHORS["entity_mapping"]  # other fields kept
    assert qs[1]["hops"] is None and qs[1]["specialty"] is None


@pytest.mark.parametrize("change, line_field, message", [
    ({"answer": 5}, "line 2, field 'answer'", "valid string"),
    ({"question": ["a", "list"]}, "line 2, field 'question'", "valid string"),
    ({"hops": "three"}, "line 2, field 'hops'", "valid integer"),
    ({"hops": 0}, "line 2, field 'hops'", "greater than or equal to 1"),
    ({"id": ""}, "line 2, field 'id'", "at least 1 character"),
    ({"answer": None}, "line 2, field 'answer'", "valid string"),
])
def test_a_bad_record_names_file_line_and_field(tmp_path, change, line_field, message):
    path = write(tmp_path, [KIT, {**KIT, "id": "other", **change}])
    with pytest.raises(InputError, match=rf"q.jsonl, {line_field}: .*{message}"):
        records.load_questions(path)


def test_missing_fields_duplicates_torn_lines_and_empty_files_are_refused(tmp_path):
    no_answer = {k: v for k, v in KIT.items() if k != "answer"}
    with pytest.raises(InputError, match=r"line 1, field 'answer': Field required"):
        records.load_questions(write(tmp_path, [no_answer]))
    with pytest.raises(InputError, match=r"line 3, field 'id': duplicate id 'abc123' \(first on line 1\)"):
        records.load_questions(write(tmp_path, [KIT, {**KIT, "id": "x"}, KIT]))
    with pytest.raises(InputError, match=r"duplicate id .*first on line 1"):  # two id-less copies of one question
        records.load_questions(write(tmp_path, [AUTHORS, AUTHORS]))
    torn = write(tmp_path, [KIT])
    torn.write_text(torn.read_text() + '{"id": "b", "question": "Wh')
    with pytest.raises(InputError, match=r"line 2: not valid JSON"):
        records.load_questions(torn)
    with pytest.raises(InputError, match="no question records"):
        records.load_questions(write(tmp_path, []))


def test_unknown_hops_are_an_unknown_bucket_and_never_pass_a_hop_limit(tmp_path):
    qs = records.load_questions(write(tmp_path, [KIT, AUTHORS]))
    assert [q["id"] for q in E.select_questions(qs, max_hops=3)] == ["abc123"]
    assert len(E.select_questions(qs)) == 2
    rows = [{"question_id": q["id"], "rollout": 0, "correct": i == 0, "stop_reason": "answer", "n_format_errors": 0,
             "n_model_calls": 1, "n_tool_calls": 1, "n_tool_errors": 0, "hops": q["hops"], "specialty": q["specialty"]}
            for i, q in enumerate(qs)]
    m = E.metrics(rows)
    assert m["questions"] == 2 and set(m["pass@1_by_hops"]) == {"2", "unknown"}
    assert m["pass@1_by_specialty"]["unknown"]["questions"] == 1


KIT_FULL = {**KIT, "chain": ["HP:0000001", "MONDO:0010526"], "hops": 1, "answer_id": "MONDO:0010526",
            "constraints": [{"entity_id": "HP:0000001"}, {"entity_id": "MONDO:0010526"}]}


def test_kit_records_need_a_chain_that_agrees_with_hops_and_answer(tmp_path):
    """What once became an accepted trajectory (issue 15's probes): the kit's files are checked as a whole."""
    assert records.load_questions(write(tmp_path, [KIT_FULL]), records.KitQuestion)[0]["hops"] == 1
    for change, message in [({"hops": 2}, r"line 1: .*chain has 2 entities for 2 hops"),
                            ({"answer_id": "MONDO:1"}, r"line 1: .*the chain ends at 'MONDO:0010526', not at answer_id"),
                            ({"id": None}, r"line 1, field 'id': .*valid string"),
                            ({"hops": "three"}, r"line 1, field 'hops'"),
                            ({"constraints": [{}]}, r"line 1, field 'constraints'")]:
        with pytest.raises(InputError, match=message):
            records.load_questions(write(tmp_path, [{**KIT_FULL, **change}]), records.KitQuestion)
    with pytest.raises(InputError, match=r"line 1, field 'id': Field required; also wrong: answer_id, chain, "
                                         r"constraints, hops$"):
        records.load_questions(write(tmp_path, [AUTHORS]), records.KitQuestion)  # the authors' format has no chain


def test_the_committed_cpu_questions_pass_the_kit_schema():
    from medkit.paths import profile_data_dir

    path = profile_data_dir("cpu") / "questions_train.jsonl"
    if not path.exists():
        pytest.skip("data/cpu not built (notebook 03)")
    assert len(records.load_questions(path, records.KitQuestion)) > 100
