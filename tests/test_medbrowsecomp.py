"""MedBrowseComp's published files (fixtures made with the authors' encoding, header included) and its scoring."""

from __future__ import annotations

import csv

import pytest

from medkit import evaluation as E
from medkit import medbrowsecomp as M
from medkit.errors import InputError
from medkit.judge import judge

# rows as the two published files hold them once decoded (first rows of each, shortened)
MBC50 = [["prompt", "gold", "Applicant_Full_Name_prompt"],
         ['"For clinical trial NCT00974311. Among the more effective regimen ingredients, find which ingredient starts '
          "with the letter 'E'.\\nReturn only the name of the ingredient or UNKNOWN in all CAPS in the format of "
          'INGREDIENT: name."', "ENZALUTAMIDE", "Ingredient"],
         ['"For clinical trial NCT00974311. ... find the applicant.\\nReturn COMPANY: name."', "ASTELLAS",
          "Applicant_Full_Name"],
         ['"For clinical trial NCT00974311. ... patent expiry.\\nReturn only the date: DATE: date."', "Aug 13, 2027",
          "Patent_Expire_Date_Text_prompt"],
         ['"For clinical trial NCT00974311. ... opening price, or \\"NOT LISTED\\"."', "NOT LISTED", "Open_on_Approval"]]
MBC605 = [["prompt", "gold", "task_name"],
          ["For clinical trial NCT02294461. Among the more effective regimen ingredients; find which is the ingredient "
           "with the first letter start with E\n return only the name of the ingredient or unknown in all CAPS in the "
           "format of INGREDIENT: name", "ENZALUTAMIDE", "Ingredient"],
          ["For clinical trial NCT02294461. ... exclusivity date. If no exclusivity date exists respond with 'DATE: NA'",
           "NA", "Exclusivity_Date"],
          ["For clinical trial NCT02294461. ... opening share price on approval", "15.989999771118164", "Open_on_Approval"],
          ["For clinical trial NCT02294461. ... not listed one", "Not_Listed", "Open_on_Approval"]]


def test_cells_round_trip_like_the_authors_encoder():
    for text in ["prompt", "What is the FDA-approved dose of tafamidis?", "Ünïcode — 25 mg ~}", "line\nbreak", ""]:
        assert M.decode_cell(M.encode_cell(text)) == text
    assert M.encode_cell("prompt") == "c3VycHN3" and M.encode_cell("gold") == "anJvZw=="  # the published header cells
    assert M.encode_cell("task_name") == "d2R2bmJxZHBo"
    assert M.decode_cell("RHNzb2xmZHF3Ykl4b29iUWRwaGJzdXJwc3c=") == "Applicant_Full_Name_prompt"


@pytest.mark.parametrize("rows,name", [(MBC50, "final50_cell_combo_shift3_b64.csv"),
                                       (MBC605, "final121_cell_combo_shift3_b64.csv")])
def test_published_files_read_encoded_or_plain(tmp_path, rows, name):
    encoded = M.encode_file(rows, tmp_path / name)
    assert encoded.read_text().splitlines()[0].startswith("c3VycHN3,anJvZw==,")  # the header is encoded too
    recs = E.load_eval_questions(encoded)
    assert len(recs) == len(rows) - 1 and all(r["benchmark"] == "MedBrowseComp" for r in recs)
    assert len({r["id"] for r in recs}) == len(recs)
    assert {r["task_name"] for r in recs} <= set(M.TASK_HOPS)  # "_prompt" suffix dropped
    assert [r["hops"] for r in recs] == [M.TASK_HOPS[r["task_name"]] for r in recs]
    first = recs[0]
    assert first["answer"] == "ENZALUTAMIDE" and first["question"].startswith("For clinical trial NCT")
    assert '"' != first["question"][0] and "\\n" not in first["question"] and "\n" in first["question"]
    plain = tmp_path / "plain.csv"
    with open(plain, "w", newline="", encoding="utf-8") as f:  # the authors' decoded copy: csv.writer, CRLF
        csv.writer(f).writerows(rows)
        f.write("\r\n")
    assert [(r["question"], r["answer"], r["task_name"]) for r in E.load_eval_questions(plain)] == \
           [(r["question"], r["answer"], r["task_name"]) for r in recs]
    again = E.load_eval_questions(encoded)
    assert [r["id"] for r in again] == [r["id"] for r in recs]  # stable ids


def test_the_50_file_keeps_its_published_prompt_and_na_stays_a_string(tmp_path):
    recs = M.read_medbrowsecomp(M.encode_file(MBC50, tmp_path / "f50.csv"))
    assert recs[0]["prompt_as_published"].startswith('"For clinical') and recs[3]["question"].endswith('"NOT LISTED".')
    recs = M.read_medbrowsecomp(M.encode_file(MBC605, tmp_path / "f605.csv"))
    assert recs[1]["answer"] == "NA" and "prompt_as_published" not in recs[0]


def test_bad_files_name_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    M.encode_file(MBC605[:2], bad)
    lines = bad.read_text().splitlines()
    cells = lines[1].split(",")
    bad.write_text("\n".join([lines[0], ",".join([cells[0], "not base64!", cells[2]])]) + "\n")
    with pytest.raises(InputError, match=r"bad.csv.*line 2.*gold.*not shifted base64"):
        M.read_medbrowsecomp(bad)
    cols = tmp_path / "cols.csv"
    cols.write_text("question,answer\nx,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="cols.csv.*line 1.*not a MedBrowseComp header"):
        M.read_medbrowsecomp(cols)
    short = tmp_path / "short.csv"
    short.write_text("prompt,gold,task_name\nq,a\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2.*2 cells in a row of a 3-column file"):
        M.read_medbrowsecomp(short)
    dup = tmp_path / "dup.csv"
    M.encode_file([MBC605[0], MBC605[1], MBC605[2], MBC605[1]], dup)
    with pytest.raises(InputError, match=r"dup.csv.*line 4.*duplicate id .*first on line 2"):
        M.read_medbrowsecomp(dup)
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no rows"):
        M.read_medbrowsecomp(empty)
    with pytest.raises(InputError, match="file not found"):
        M.read_medbrowsecomp(tmp_path / "nope.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        M.read_medbrowsecomp(binary)


@pytest.mark.parametrize("prediction,gold,task,right", [
    ("INGREDIENT: ENZALUTAMIDE", "ENZALUTAMIDE", "Ingredient", True),
    ("The answer is INGREDIENT: enzalutamide.", "ENZALUTAMIDE", "Ingredient", True),
    ("INGREDIENT: IRINOTECAN", "IRINOTECAN HYDROCHLORIDE", "Ingredient", False),  # the salt form matters
    ("INGREDIENT: ENZALUTAMIDE or APALUTAMIDE", "ENZALUTAMIDE", "Ingredient", False),
    ("COMPANY: Janssen Biotech, Inc.", "JANSSEN BIOTECH INC", "Applicant_Full_Name", True),
    ("COMPANY: Astellas Pharma US, Inc.", "ASTELLAS", "Applicant_Full_Name", False),  # the judge says yes: a lower bound
    ("DATE: 08-13-2027", "Aug 13, 2027", "Patent_Expire_Date_Text", True),
    ("DATE: 2027", "Aug 13, 2027", "Patent_Expire_Date_Text", False),
    ("DATE: NA", "NA", "Exclusivity_Date", True),
    ("DATE: Nov 17, 2026", "NA", "Exclusivity_Date", False),
    ("TICKER: ALPMY, PRICE: $15.95", "15.989999771118164", "Open_on_Approval", True),
    ("PRICE: $17.50", "15.989999771118164", "Open_on_Approval", False),
    ("NOT LISTED", "Not_Listed", "Open_on_Approval", True),
    ("NOT LISTED", "NOT LISTED", "Open_on_Approval", True),
    ("PRICE: $12.00", "NOT LISTED", "Open_on_Approval", False),
    ("", "ENZALUTAMIDE", "Ingredient", False),
    (None, "NA", "Exclusivity_Date", False),
])
def test_scoring_rules(prediction, gold, task, right):
    assert M.score(prediction, gold, task) is right
    record = {"question": "q", "answer": gold, "task_name": task, "benchmark": "MedBrowseComp"}
    assert judge(prediction, record).correct is right


def test_llm_judge_conversation_and_parsing():
    msgs = M.judge_messages("Which ingredient?", "INGREDIENT: X", "ENZALUTAMIDE")
    assert msgs[0]["role"] == "system" and "ENZALUTAMIDE" in msgs[1]["content"] and "JSON" in msgs[1]["content"]
    assert M.parse_judge('{"extracted_final_answer": "X", "reasoning": "differs", "correct": "no"}') == (False, "X")
    assert M.parse_judge('Sure! {"extracted_final_answer": "ENZALUTAMIDE", "reasoning": "", "correct": "Yes"}') == \
           (True, "ENZALUTAMIDE")
    for junk in (None, "", "yes", '{"correct": "maybe"}', "{not json}", "[1, 2]"):
        assert M.parse_judge(junk) == (None, None)


def test_metrics_report_per_task(tmp_path):
    recs = E.load_eval_questions(M.encode_file(MBC605, tmp_path / "f.csv"))
    rows = [{"question_id": r["id"], "rollout": 0, "correct": r["task_name"] == "Ingredient", "stop_reason": "answer",
             "n_format_errors": 0, "n_model_calls": 1, "n_tool_calls": 0, "n_tool_errors": 0,
             "hops": r["hops"], "specialty": None, "task_name": r["task_name"]} for r in recs]
    m = E.metrics(rows)
    assert m["pass@1_by_task_name"]["Ingredient"]["mean"] == 1.0
    assert m["pass@1_by_task_name"]["Open_on_Approval"]["questions"] == 2
    assert m["pass@1_by_specialty"] == {"unknown": m["pass@1_by_specialty"]["unknown"]}  # never a fake specialty
    assert list(E.by_group({"endpoint": m}, "task_name").index)[:1] == ["Exclusivity_Date"]
