"""Evaluate any OpenAI-compatible endpoint on a question file with the medical and the web tools.

Scope: the one command that measures a real model on a public benchmark — a user's vLLM server with
MedResearcher-R1-32B, a hosted model — through the kit's agent loop::

    python -m medkit eval-endpoint --base-url http://127.0.0.1:8000/v1 --model MedResearcher-R1-32B \\
        --questions final50_cell_combo_shift3_b64.csv --web searxng --web-url http://127.0.0.1:8888 --k 1

It reads the question file through the kit's one validated loader (:func:`medkit.evaluation.load_eval_questions`:
MedBrowseComp's published CSVs, the kit's or the paper authors' JSONL), gives the agent the tools named by
``tools`` (``medical``: :class:`medkit.tools.MedicalToolbox`; ``web``: :class:`medkit.web.WebTools` over
the configured provider — offline over the kit's corpus unless a search service is named), runs ``k``
rollouts per question (:func:`medkit.evaluation.evaluate`), scores them by the question's own rules
(MedBrowseComp's judge-free rules, a lower bound) and, when a judge endpoint is given, by the benchmark's
LLM judge too, and writes strict JSON: pass@1 with its 95% bootstrap interval overall, per task and per hop,
pass@k, answer / format-error / tool-error rates, the judge's agreement with the rules, and provenance (the
endpoint's URL and model, never its key). Every prediction is kept in a JSONL file beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .agent import AgentConfig, compact_tools
from .errors import ConfigError

TOOL_SETS = ("medical", "web")
RESEARCH_PROMPT = (
    "You are a medical research agent. Answer the user's question with evidence from your tools. "
    "Each turn: reason in <think>...</think>, then call one tool in <tool_call>...</tool_call>, "
    "or give the final answer, in the format the question asks for, in <answer>...</answer> once the "
    "evidence suffices.\n\n")


def research_prompt(tools: Sequence[Any]) -> str:
    """The system prompt of an endpoint run: :data:`RESEARCH_PROMPT` and one line per tool."""
    return RESEARCH_PROMPT + compact_tools(tools)


def build_tools(tools: Sequence[str], web: dict[str, Any] | None, *, cache_dir: str | Path | None = None) -> Any:
    """The agent's tools for ``tools`` (a subset of :data:`TOOL_SETS`, ``medical`` required: the judge and the
    kit's questions resolve names through it)."""
    from .tools import MedicalToolbox, ToolSet
    from .web import web_tools_from_config

    unknown = sorted(set(tools) - set(TOOL_SETS))
    if unknown or "medical" not in tools:
        raise ConfigError(f"tools must include medical and be among {', '.join(TOOL_SETS)}, got {list(tools)}")
    medical = MedicalToolbox.from_kb()
    if "web" not in tools:
        return medical
    return ToolSet(medical, web_tools_from_config(web, toolbox=medical, cache_dir=cache_dir))


def llm_judge(judge_backend: Any, questions: Sequence[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """The benchmark's LLM judge over ``rows`` (in place): ``judge_correct`` True / False, or None when the
    judge's reply was not the JSON asked for (counted, and scored as not correct)."""
    from .medbrowsecomp import judge_messages, parse_judge

    by_id = {q["id"]: q for q in questions}
    todo = [r for r in rows if r.get("prediction")]
    convs = [judge_messages(by_id[r["question_id"]]["question"], r["prediction"], str(r["answer"])) for r in todo]
    outs = judge_backend.generate(convs, max_new_tokens=400, temperature=0.0) if convs else []
    for r in rows:
        r["judge_correct"], r["judge_extracted"] = (False, None) if not r.get("prediction") else (None, None)
    for r, out in zip(todo, outs):
        r["judge_correct"], r["judge_extracted"] = parse_judge(out.text if out.ok else None)


def summarise(rows: list[dict[str, Any]], *, judged: bool) -> dict[str, Any]:
    """:func:`medkit.evaluation.metrics` of the rule scores, and of the LLM judge's when there is one."""
    from .evaluation import metrics

    out: dict[str, Any] = {"rules": metrics(rows)}
    if judged:
        as_judged = [{**r, "correct": bool(r["judge_correct"])} for r in rows]
        out["judge"] = metrics(as_judged)
        out["judge_unparsed"] = sum(r["judge_correct"] is None for r in rows)
        out["judge_agrees_with_rules"] = round(sum(bool(r["judge_correct"]) == bool(r["correct"]) for r in rows)
                                               / max(len(rows), 1), 4)
    return out


def web_config(provider: str, url: str | None = None, key_env: str | None = None,
               allow_private: bool = False) -> dict[str, Any]:
    """The ``web`` setting from command-line options (:func:`medkit.web.web_tools_from_config`)."""
    config: dict[str, Any] = {"provider": provider}
    if url:
        config["base_url"] = url
    if key_env:
        config["key_env"] = key_env
    if allow_private:
        config["allow_private"] = True
    return config


def evaluate_endpoint(endpoint: dict[str, Any], questions_path: str | Path, out_path: str | Path, *,
                      k: int = 1, tools: Sequence[str] = TOOL_SETS, web: dict[str, Any] | None = None,
                      judge: dict[str, Any] | None = None, n: int | None = None, max_calls: int = 30,
                      max_new_tokens: int = 1024, temperature: float = 0.0, seed: int = 13,
                      progress: bool = True) -> dict[str, Any]:
    """Run the agent on ``endpoint`` (an ``openai`` backend spec: ``base_url``, ``model``, ``api_key_env``, …)
    over the questions in ``questions_path`` and write the summary JSON to ``out_path`` (predictions beside it,
    ``<out>.rows.jsonl``). Returns the summary."""
    from . import io as mio
    from .evaluation import evaluate, load_eval_questions
    from .llm import backend_from_config
    from .paths import portable

    if k < 1 or (k > 1 and temperature <= 0):
        raise ConfigError(f"k must be >= 1, and k > 1 needs temperature > 0 (got k={k}, temperature={temperature})")
    questions = load_eval_questions(questions_path)
    questions = questions[:n] if n else questions
    backend = backend_from_config({"type": "openai", **endpoint})
    judge_backend = backend_from_config({"type": "openai", **judge}) if judge else None
    out_path = Path(out_path)
    toolset = build_tools(tools, web, cache_dir=out_path.parent / "web_cache")
    config = AgentConfig(max_calls=max_calls, max_new_tokens=max_new_tokens, temperature=temperature,
                         token_budget=1_000_000)
    rows = evaluate(backend, toolset, questions, k=k, config=config, seed=seed,
                    system=research_prompt(toolset.tools()), progress=progress)
    if judge_backend is not None:
        llm_judge(judge_backend, questions, rows)
    summary = {"questions_file": portable(questions_path), "questions": len(questions), "k": k,
               "endpoint": {"base_url": endpoint.get("base_url"), "model": endpoint.get("model")},
               "judge": ({"base_url": judge.get("base_url"), "model": judge.get("model")} if judge else None),
               "tools": list(tools), "web": {key: v for key, v in (web or {"provider": "offline"}).items()},
               **summarise(rows, judged=judge_backend is not None),
               "provenance": mio.provenance(k=k, n=n, max_calls=max_calls, max_new_tokens=max_new_tokens,
                                            temperature=temperature, seed=seed)}
    mio.write_jsonl(out_path.with_suffix(".rows.jsonl"), rows)
    mio.write_json(out_path, summary)
    return summary
