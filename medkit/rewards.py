"""The composite GRPO reward: task accuracy + expert preference - efficiency penalty.

Scope (notebook 06): each term is a separate function of one agent rollout (the dict
:func:`medkit.agent.run_agent` returns: ``messages``, ``prediction``, ``format_errors``,
``n_model_calls``, ``n_tool_calls``, ``n_tokens``) and, for accuracy, the question record, so
each can be logged on its own and unit-tested on hand-made trajectories.

* :func:`accuracy` — 1 if the final answer is judged correct (:func:`medkit.judge.judge`,
  the evaluation harness's judge), else 0.
* :func:`preference` — the paper's "expert preference" made checkable, mean of three parts
  (:func:`preference_parts`): *well-formed* (share of model turns that parse cleanly),
  *grounded* (the answer was seen in a tool response before it was given: evidence retrieved,
  not guessed) and *verified* (at least one further tool call after the first observation
  that shows the answer: the search-verify-synthesise pattern). A rollout without an answer
  can still earn the well-formed part.
* :func:`efficiency_penalty` — in [0, 1]: tool calls above ``call_budget`` and tokens above
  ``token_budget``, each scaled by its budget and capped, averaged.
* **Gating** (``gate=True``, the default; notebook 06's ``GATE_PROCESS``): the process terms pay
  only alongside a correct answer — *grounded* and *verified* count only when the answer is right,
  and the efficiency penalty applies only to right answers (it ranks right answers by cost). A
  wrong rollout then earns at most ``w_pref / 3`` (its well-formed turns), whether it answers early,
  late or not at all, so no reward is left for answering early with any entity a tool showed —
  the reward hacking the ungated sum produced in the first cpu reference run (answer rate up,
  accuracy down). Ungated (``gate=False``) is the paper's plain sum, kept for ablations.
* :func:`composite` — ``w_acc * accuracy + w_pref * preference - w_eff * penalty`` with every
  term reported (the paid terms and the raw parts); :class:`RewardWeights` holds the weights of
  notebook 06's ``parameters`` cell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .judge import clean_prediction, judge
from .ner import surface_key

if TYPE_CHECKING:
    import pandas as pd

TERMS = ("accuracy", "preference", "efficiency")


@dataclass(frozen=True)
class RewardWeights:
    accuracy: float = 1.0
    preference: float = 0.3
    efficiency: float = 0.2

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "RewardWeights":
        """The weights of a resolved GRPO parameter set (``W_ACCURACY``, ``W_PREFERENCE``, ``W_EFFICIENCY``)."""
        return cls(params["W_ACCURACY"], params["W_PREFERENCE"], params["W_EFFICIENCY"])

    def signed(self) -> tuple[float, float, float]:
        """The weights in :data:`TERMS` order with the sign each term is paid with: accuracy and
        preference added, the efficiency penalty subtracted (TRL's ``reward_weights``)."""
        return (float(self.accuracy), float(self.preference), -float(self.efficiency))

    def total(self, terms: Any) -> Any:
        """The composite reward of paid ``terms``: a dict, DataFrame or Series with one entry per
        :data:`TERMS` (numbers or columns)."""
        return sum(w * terms[t] for w, t in zip(self.signed(), TERMS))


def accuracy(rollout: dict[str, Any], record: dict[str, Any], *,
             resolve: Callable[[str], Iterable[str]] | None = None) -> float:
    """1.0 when the rollout's final answer is the record's answer (KG-aware judge), else 0.0."""
    return 1.0 if judge(rollout.get("prediction"), record, resolve=resolve).correct else 0.0


def _turns(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in rollout.get("messages") or [] if isinstance(m, dict)]


def _answer_index(messages: list[dict[str, Any]]) -> int:
    """Index of the assistant message that gave the answer (or len(messages) if none did)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") == "assistant" and "<answer>" in str(m.get("content") or ""):
            return i
    return len(messages)


def _mentions(text: str, key: str) -> bool:
    return bool(key) and f" {key} " in f" {surface_key(text)} "


def preference_parts(rollout: dict[str, Any]) -> dict[str, float]:
    """``well_formed``, ``grounded`` and ``verified``, each in [0, 1] (see the module docstring)."""
    calls = int(rollout.get("n_model_calls") or 0)
    bad = len(rollout.get("format_errors") or [])
    well_formed = max(0.0, 1.0 - bad / calls) if calls else 0.0
    key = surface_key(clean_prediction(rollout.get("prediction")))
    messages = _turns(rollout)
    end = _answer_index(messages)
    first_seen = next((i for i, m in enumerate(messages[:end])
                       if m.get("role") == "tool" and _mentions(str(m.get("content") or ""), key)), None)
    grounded = 1.0 if rollout.get("prediction") and first_seen is not None else 0.0
    verified = 0.0
    if grounded:
        later_calls = [m for m in messages[first_seen + 1:end] if m.get("role") == "assistant" and m.get("tool_calls")]
        verified = 1.0 if later_calls else 0.0
    return {"well_formed": round(well_formed, 4), "grounded": grounded, "verified": verified}


def _mean(parts: dict[str, float]) -> float:
    return round(sum(parts.values()) / len(parts), 4)


def preference(rollout: dict[str, Any], *, correct: bool | None = None) -> float:
    """Mean of :func:`preference_parts`; with ``correct`` given (gating), *grounded* and *verified* count
    only when it is True (``well_formed`` always counts)."""
    parts = preference_parts(rollout)
    if correct is not None and not correct:
        parts = {**parts, "grounded": 0.0, "verified": 0.0}
    return _mean(parts)


def efficiency_penalty(rollout: dict[str, Any], *, call_budget: int = 8, token_budget: int = 3072) -> float:
    """Penalty in [0, 1] for tool calls above ``call_budget`` and tokens above ``token_budget``."""
    if call_budget < 1 or token_budget < 1:
        raise ValueError("call_budget and token_budget must be >= 1")
    extra_calls = max(0, int(rollout.get("n_tool_calls") or 0) - call_budget) / call_budget
    extra_tokens = max(0, int(rollout.get("n_tokens") or 0) - token_budget) / token_budget
    return round((min(1.0, extra_calls) + min(1.0, extra_tokens)) / 2, 4)


def gated_efficiency(rollout: dict[str, Any], *, correct: bool, call_budget: int = 8,
                     token_budget: int = 3072) -> float:
    """:func:`efficiency_penalty` for a right answer, 0 for a wrong one (gating: see the module docstring)."""
    return efficiency_penalty(rollout, call_budget=call_budget, token_budget=token_budget) if correct else 0.0


def composite(rollout: dict[str, Any], record: dict[str, Any], weights: RewardWeights = RewardWeights(), *,
              call_budget: int = 8, token_budget: int = 3072, gate: bool = True,
              resolve: Callable[[str], Iterable[str]] | None = None) -> dict[str, float]:
    """Every paid term, the raw preference parts, the raw ``efficiency_raw`` penalty and the weighted ``total``."""
    parts = preference_parts(rollout)
    acc = accuracy(rollout, record, resolve=resolve)
    raw_eff = efficiency_penalty(rollout, call_budget=call_budget, token_budget=token_budget)
    correct = acc == 1.0 if gate else None
    terms = {"accuracy": acc, "preference": preference(rollout, correct=correct),
             "efficiency": raw_eff if correct is None or correct else 0.0}
    return {**terms, **parts, "efficiency_raw": raw_eff, "total": round(weights.total(terms), 4)}


def as_rollout(messages: list[dict[str, Any]], *, n_tokens: int = 0) -> dict[str, Any]:
    """A stored conversation (e.g. a notebook-04 trajectory, or a cut of one) in the shape the reward
    terms read from a rollout: its final answer, tool and model call counts, no format errors."""
    from .agent import final_answer

    calls = sum(1 for m in messages if m.get("tool_calls"))
    return {"messages": messages, "prediction": final_answer(messages), "format_errors": [], "n_tool_calls": calls,
            "n_model_calls": calls + 1, "n_tokens": n_tokens}


def breakdown(cases: dict[str, dict[str, Any]], record: dict[str, Any], params: dict[str, Any], *,
              resolve: Callable[[str], Iterable[str]] | None = None) -> "pd.DataFrame":
    """:func:`composite` of each named rollout under a resolved GRPO parameter set (weights, budgets,
    gating): one row per case, one column per term."""
    import pandas as pd

    weights = RewardWeights.from_params(params)
    return pd.DataFrame({name: composite(r, record, weights, call_budget=params["CALL_BUDGET"],
                                         token_budget=params["TOKEN_BUDGET"], gate=params["GATE_PROCESS"],
                                         resolve=resolve) for name, r in cases.items()}).T

