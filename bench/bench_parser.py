"""The agent's reply parser on hostile input: linear time, measured against a benign reply of the same size.

Model output is untrusted text. A reply of ~400 KB made of nested unclosed ``<think>`` tags once
took the parser 3.7 s (each unclosed tag searched the rest of the text for its close: quadratic).
This times :func:`medkit.agent.parse_turn` on that reply and, in the same run, on the named
baseline: a well-formed reply of the same length (one ``<think>`` block, one call). A ratio near 1
means the hostile case costs what its length costs. Also: the hostile case at a quarter and half
the size, so the growth is visible (linear: time doubles with size). Best of ``REPEATS`` runs.
Writes ``results/bench/parser.json``.
"""

from __future__ import annotations

import time

from medkit import agent as A
from medkit import io as mio
from medkit.paths import results_dir

REPEATS = 5
SIZE = 400_000


def best_seconds(text: str) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        A.parse_turn(text)
        times.append(time.perf_counter() - t0)
    return min(times)


def nested(size: int) -> str:
    return "<think>" * (size // len("<think>")) + "b</think><answer>x</answer>"


def benign(size: int) -> str:
    call = '<tool_call>\n{"name": "search", "arguments": {"query": "fabry"}}\n</tool_call>'
    body = ("Fabry disease is an X-linked lysosomal storage disorder. " * (size // 57 + 1))[: size - len(call) - 15]
    return f"<think>{body}</think>\n{call}"


def main() -> dict:
    base = best_seconds(benign(SIZE))
    growth = {str(n): round(best_seconds(nested(n)), 5) for n in (SIZE // 4, SIZE // 2, SIZE)}
    hostile = growth[str(SIZE)]
    result = {"size_chars": SIZE, "repeats": REPEATS, "baseline": "a well-formed reply of the same size",
              "baseline_seconds": round(base, 5), "nested_unclosed_seconds": hostile,
              "ratio_nested_to_baseline": round(hostile / base, 2) if base else None,
              "nested_seconds_by_size": growth}
    mio.write_json(results_dir() / "bench" / "parser.json", result)
    print(result)
    return result


if __name__ == "__main__":
    main()
