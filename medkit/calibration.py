"""Difficulty calibration: solvers that must fail, and the regenerate-until-hard loop.

Scope: two pre-test solvers the paper's idea calls for, run offline —

* ``no_tool_model``: a chat model answers the question from memory (no tools);
* ``bm25_top1``: one BM25 query with the whole question over the passage corpus; the
  question counts as solved if the top passage is the answer's own definition or
  names the answer (dictionary NER on the passage);

a lenient judge (any alias of the answer appearing in the model output counts as
solved, so difficulty is not overstated), and the schedule of harder retries for
solved questions: attempt 1 obfuscates clues (phenotypes replaced by their parent
class), attempt 2 also asks for a longer chain (``max_chain`` sampling, more hops).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .ner import Matcher, surface_key
from .questions import contains_words

SOLVERS = ("no_tool_model", "bm25_top1")
SYSTEM_PROMPT = ("You are a medical expert. Answer the question with the name of the entity only, "
                 "no explanation.")


def alias_in_text(aliases: Sequence[str], text: str) -> bool:
    """True if any alias (normalised, whole words, at least 3 characters) occurs in ``text``."""
    tk = surface_key(text)
    return any(len(k) >= 3 and contains_words(tk, k) for k in (surface_key(a) for a in aliases))


def model_solver(backend: Any, records: list[dict[str, Any]], *, max_new_tokens: int = 24) -> list[dict[str, Any]]:
    """Ask the model each question without tools; judge leniently against the answer's aliases."""
    convs = [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": r["question"]}]
             for r in records]
    outs = backend.generate(convs, max_new_tokens=max_new_tokens, temperature=0.0)
    results = []
    for r, o in zip(records, outs):
        if getattr(o, "error", None):
            results.append({"solved": None, "error": o.error})
        else:
            results.append({"solved": alias_in_text(r["answer_aliases"], o.text), "output": o.text[:200]})
    return results


def bm25_solver(retriever: Any, matcher: Matcher, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-1 passage of one BM25 query on the question text."""
    hits = retriever.search_batch([r["question"] for r in records], k=1)
    results = []
    for r, h in zip(records, hits):
        if not h:
            results.append({"solved": False, "passage_id": None})
            continue
        top = h[0]
        named = {e for m in matcher.find(f"{top.title}. {top.text}") for e in m.entity_ids}
        solved = top.entity_id == r["answer_id"] or r["answer_id"] in named
        results.append({"solved": bool(solved), "passage_id": top.passage_id})
    return results


def retry_settings(attempt: int, previous_hops: int, base: dict[str, Any]) -> dict[str, Any]:
    """Generation settings for a retry of a question some solver answered."""
    settings = dict(base)
    if attempt >= 1:
        settings["level"] = 1
    if attempt >= 2:
        settings["strategy"] = "max_chain"
        settings["k_range"] = (max(base["k_range"]), max(base["k_range"]))
        settings["min_hops"] = min(previous_hops + 1, base["max_hops"])
    return settings


def solved_by(calib: dict[str, Any]) -> list[str]:
    return [s for s in SOLVERS if (calib.get(s) or {}).get("solved")]


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    """Share of records each solver answered, over the records it actually judged.

    A solver that failed on a record (dead endpoint: ``solved`` is None) is not counted
    as failing to solve it; ``judged_<solver>`` says how many records each share covers.
    """
    out: dict[str, float] = {}
    for s in SOLVERS:
        judged = [r for r in records if (r["calibration"].get(s) or {}).get("solved") is not None]
        out[s] = sum(1 for r in judged if r["calibration"][s]["solved"]) / max(1, len(judged))
        out[f"judged_{s}"] = len(judged)
    out["any"] = sum(1 for r in records if solved_by(r["calibration"])) / max(1, len(records))
    out["n"] = len(records)
    return out
