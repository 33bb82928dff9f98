"""MedBrowseComp as published: its two encoded CSV files read into question records, and its scoring rules.

Scope. MedBrowseComp (Chen et al. 2025; repository ``shan23chen/MedBrowseComp``, files under ``data/``)
ships two files, every cell — **the header row included** — Unicode-shifted by +3 per code point, then
UTF-8 encoded and base64-encoded (the authors' ``data/encode_decode.py``, "cell combo" mode):

* ``final50_cell_combo_shift3_b64.csv`` — MedBrowseComp-50: 10 trials x 5 tasks, in blocks of 10 rows.
  Its third column is named ``Applicant_Full_Name_prompt`` (not ``task_name``); its prompts keep an
  earlier export's artefacts: a literal ``"`` at each end and literal two-character ``\\n`` sequences.
* ``final121_cell_combo_shift3_b64.csv`` — MedBrowseComp-605: 121 trials x 5 tasks, interleaved per trial,
  third column ``task_name``.

:func:`read_medbrowsecomp` reads either, encoded or plain, with either header (the third column is the task
whatever its name), skips blank lines (the encoder appends one), accepts CRLF, keeps a gold ``NA`` as the
string it is, normalises task names (a ``_prompt`` suffix dropped: ``Patent_Expire_Date_Text_prompt`` is
``Patent_Expire_Date_Text``), cleans the 50-file's prompt artefacts (the published prompt is kept in
``prompt_as_published`` when it differs) and validates every record with the kit's evaluation schema
(:func:`medkit.records.check_questions`): a stable id from the question text, duplicate rows refused with
both lines, a bad cell named by file, line and column. ``hops`` is the task's place in the benchmark's
chain — trial → ingredient (1) → applicant (2) → patent expiry (3) → exclusivity (4) → share price on
approval (5) — the "hop" the authors' per-hop summaries report (``results121/hop_correctness_summary.py``
assigns it by row position, which fits the 50-file's blocks only; here it is by task name).

Scoring (:func:`score`). The benchmark's published numbers come from a BrowseComp-style LLM judge
(``process_NCT_predictions.py --use_judge``, default judge ``gpt-4.1-mini``): it extracts the response's
final answer and says yes when it matches the gold ignoring case, or is within a small margin for a
number. :func:`judge_messages` / :func:`parse_judge` implement that judge for any OpenAI-compatible endpoint
(the criteria in the kit's own words). Without a judge, :func:`score` applies the rules of the authors'
judge-free mode, made explicit: the value after the task's ``LABEL:`` (``INGREDIENT: name``) or the whole
answer, compared case-insensitively; prices within 1%; ``NOT LISTED`` / ``Not_Listed`` / ``NA`` as one
"none" answer; and — beyond the authors' rules, which compare dates as strings — two dates that parse to
the same day (or, for a gold given as a year, the same year). It is stricter than the judge (a company's
full name against a short gold is wrong here, as "Astellas Pharma US, Inc." for ``ASTELLAS``), so it is a
lower bound of the judge's score, reported as such.
"""

from __future__ import annotations

import base64
import binascii
import csv
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import InputError

SHIFT = 3
TASK_HOPS = {"Ingredient": 1, "Applicant_Full_Name": 2, "Patent_Expire_Date_Text": 3, "Exclusivity_Date": 4,
             "Open_on_Approval": 5}
TASK_LABELS = {"Ingredient": ("INGREDIENT",), "Applicant_Full_Name": ("COMPANY", "APPLICANT"),
               "Patent_Expire_Date_Text": ("DATE", "YEAR"), "Exclusivity_Date": ("DATE",),
               "Open_on_Approval": ("PRICE", "TICKER")}
NONE_ANSWERS = {"NOT LISTED", "NOT_LISTED", "NA", "N/A", "NONE", "UNKNOWN"}
PRICE_TOLERANCE = 0.01  # the authors' judge-free rule for prices: within 1%
DATE_FORMATS = ("%b %d, %Y", "%B %d, %Y", "%m-%d-%Y", "%m/%d/%Y", "%Y-%m-%d", "%d %b %Y", "%d %B %Y", "%b %d %Y")


def decode_cell(cell: str, shift: int = SHIFT) -> str:
    """The authors' decoding of one cell: base64, UTF-8, each code point shifted back by ``shift``."""
    raw = base64.b64decode(cell.strip(), validate=True).decode("utf-8")
    return "".join(chr((ord(c) - shift) % 0x110000) for c in raw)


def encode_cell(text: str, shift: int = SHIFT) -> str:
    """The authors' encoding of one cell (for fixtures): each code point shifted by ``shift``, UTF-8, base64."""
    shifted = "".join(chr((ord(c) + shift) % 0x110000) for c in text)
    return base64.b64encode(shifted.encode("utf-8")).decode("ascii")


def encode_file(rows: list[list[str]], path: str | Path) -> Path:
    """A CSV as the authors' encoder writes it: every row (the header too) encoded, a blank line at the end."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for row in rows:
            writer.writerow([encode_cell(cell) for cell in row])
        f.write("\n")
    return path


def normalise_task(name: str) -> str:
    """``Patent_Expire_Date_Text_prompt`` -> ``Patent_Expire_Date_Text``; spaces to underscores."""
    name = "_".join(name.strip().split())
    return name.removesuffix("_prompt")


def clean_prompt(text: str) -> str:
    """A prompt without the 50-file's export artefacts: enclosing literal quotes, literal ``\\n``, ``\\"``."""
    out = text.strip()
    if len(out) >= 2 and out[0] == out[-1] == '"':
        out = out[1:-1]
    return out.replace("\\n", "\n").replace('\\"', '"').strip()


def _header(cells: list[str]) -> tuple[list[str], bool] | None:
    """(column names, encoded?) when ``cells`` is a header row, plain or encoded; else None."""
    plain = [c.strip().strip('"').lower() for c in cells]
    if plain[:2] == ["prompt", "gold"]:
        return [c.strip().strip('"') for c in cells], False
    try:
        decoded = [decode_cell(c) for c in cells]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if [d.strip().lower() for d in decoded[:2]] == ["prompt", "gold"]:
        return decoded, True
    return None


def read_rows(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]], bool]:
    """(header, [(line, {prompt, gold, task})], encoded?) of a MedBrowseComp CSV, cells decoded."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            numbered = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise InputError(path, f"not a CSV file ({e})") from None
    if not numbered:
        raise InputError(path, "no rows")
    first_line, first = numbered[0]
    found = _header(first)
    if found is None:
        raise InputError(path, "the first row is not a MedBrowseComp header: expected prompt, gold and a task column"
                         " (plain, or encoded as the published files are)", line=first_line)
    header, encoded = found
    if len(header) < 3:
        raise InputError(path, f"{len(header)} columns; expected prompt, gold and a task column", line=first_line)
    rows = []
    for line, cells in numbered[1:]:
        if len(cells) != len(header):
            raise InputError(path, f"{len(cells)} cells in a row of a {len(header)}-column file", line=line)
        values = {}
        for col, key in zip(range(3), ("prompt", "gold", "task")):
            cell = cells[col]
            if encoded:
                try:
                    cell = decode_cell(cell)
                except (binascii.Error, UnicodeDecodeError, ValueError) as e:
                    raise InputError(path, f"cell is not shifted base64 ({type(e).__name__})", line=line,
                                     field=header[col]) from None
            values[key] = cell
        rows.append((line, values))
    return header, rows, encoded


def read_medbrowsecomp(path: str | Path) -> list[dict[str, Any]]:
    """Validated question records (``id``, ``question``, ``answer``, ``task_name``, ``hops``, …) of either
    published file (see the module docstring)."""
    from .records import check_questions

    header, rows, encoded = read_rows(path)
    records = []
    for line, v in rows:
        task = normalise_task(v["task"])
        question = clean_prompt(v["prompt"])
        rec: dict[str, Any] = {"question": question, "answer": v["gold"].strip(), "answer_aliases": [],
                               "answer_id": None, "task_name": task, "hops": TASK_HOPS.get(task), "specialty": None,
                               "benchmark": "MedBrowseComp", "source_line": line, "source_encoded": encoded}
        if question != v["prompt"]:
            rec["prompt_as_published"] = v["prompt"]
        records.append((line, rec))
    return check_questions(records, path, id_parts=("question", "answer", "task_name"))


# --------------------------------------------------------------------------- scoring


def final_value(prediction: str | None, task: str | None) -> str:
    """The answer a response gives: the text after its last ``LABEL:`` for the task (``INGREDIENT: x``),
    else after any ``WORD:`` label, else the whole response; whitespace collapsed."""
    text = " ".join(str(prediction or "").split())
    labels = TASK_LABELS.get(task or "", ())
    for label in labels:
        hits = list(re.finditer(rf"\b{label}\s*:\s*", text, flags=re.IGNORECASE))
        if hits:
            return text[hits[-1].end():].strip().rstrip(".").strip()
    generic = list(re.finditer(r"\b[A-Z][A-Z_ ]{1,20}:\s*", text))
    if generic:
        return text[generic[-1].end():].strip().rstrip(".").strip()
    return text.strip().rstrip(".").strip()


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^0-9A-Za-z]+", " ", text).upper().split())


def _number(text: str) -> float | None:
    m = re.search(r"-?\d[\d,]*\.?\d*", text.replace("$", ""))
    if not m:
        return None
    try:
        return float(m.group().replace(",", ""))
    except ValueError:
        return None


def _date(text: str) -> datetime | None:
    text = " ".join(text.replace(",", ", ").split()).replace(" ,", ",")
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def score(prediction: str | None, gold: str, task: str | None) -> bool:
    """The judge-free score of one response (module docstring): a lower bound of the LLM judge's."""
    if prediction is None or not str(prediction).strip():
        return False
    value, gold = final_value(prediction, task), gold.strip()
    if not value:
        return False
    g, v = _key(gold), _key(value)
    if g.replace(" ", "_") in NONE_ANSWERS or g in NONE_ANSWERS:
        return v.replace(" ", "_") in NONE_ANSWERS or v in NONE_ANSWERS
    if v == g:
        return True
    if re.fullmatch(r"-?\d[\d,]*\.\d+", gold):  # a price
        got, price = _number(value), float(gold.replace(",", ""))
        return got is not None and abs(got - price) <= PRICE_TOLERANCE * abs(price)
    gold_date = _date(gold)
    if gold_date is not None:
        got_date = _date(value)
        return got_date is not None and got_date.date() == gold_date.date()
    if re.fullmatch(r"\d{4}", gold):
        years = re.findall(r"\b(\d{4})\b", value)
        return bool(years) and years[-1] == gold
    return False


def judge_messages(question: str, response: str, gold: str) -> list[dict[str, str]]:
    """The BrowseComp-style judge's conversation, the criteria of MedBrowseComp's ``--use_judge`` mode in the
    kit's words: extract the final answer, compare it with the gold ignoring case, allow a small margin for
    numbers, answer JSON."""
    instructions = (
        "You grade one answer to a research question against its reference answer.\n"
        f"Question: {question}\n"
        f"Response: {response}\n"
        f"Reference answer: {gold}\n\n"
        "1. extracted_final_answer: copy the final answer the response commits to, exactly; write None if it "
        "commits to none.\n"
        "2. reasoning: say only whether and how extracted_final_answer differs in meaning from the reference "
        "answer. Letter case does not matter. Do not solve the question yourself and do not argue for another answer.\n"
        "3. correct: yes if extracted_final_answer means the same as the reference answer, or, for a number, lies "
        "within a small margin of it; no if it differs, is ambiguous, is incomplete or is None.\n"
        'Reply with one JSON object: {"extracted_final_answer": "...", "reasoning": "...", "correct": "yes" or "no"}.')
    return [{"role": "system", "content": "You are an impartial grader. Reply with JSON only."},
            {"role": "user", "content": instructions}]


def parse_judge(text: str | None) -> tuple[bool | None, str | None]:
    """(correct, extracted answer) from a judge's reply; (None, None) when the reply is not the JSON asked for
    (an unparsable verdict counts as not correct where it is scored, and is counted)."""
    import json

    if not text:
        return None, None
    m = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if not m:
        return None, None
    try:
        obj = json.loads(m.group())
    except ValueError:
        return None, None
    verdict = str(obj.get("correct", "")).strip().lower() if isinstance(obj, dict) else ""
    if verdict not in ("yes", "no"):
        return None, None
    extracted = obj.get("extracted_final_answer")
    return verdict == "yes", (str(extracted) if extracted is not None else None)
