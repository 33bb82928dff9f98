"""Trajectory synthesis: rate, acceptance and tool calls, KG-guided vs a free LLM teacher.

On a profile's training questions (default cpu; run its notebooks 01-03 first) this times
knowledge-informed synthesis (every candidate tool call executed for real, filters and
token counting included) on ``N`` questions, and, in the same run, the named baseline: free
rollouts of the profile's local model as teacher (batched, with the masked reasoning path as
guidance, the same filters) on ``N_FREE`` of them. It reports trajectories per second,
acceptance rate and mean tool calls per accepted trajectory for both, the speed ratio, and
the time per tool call of each tool. Writes ``results/bench/trajectories.json``.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import numpy as np

from medkit import agent as A
from medkit import io as mio
from medkit import llm, paths
from medkit import synthesis as S
from medkit import questions as Q
from medkit import tools as T
from medkit import trajectories as TR
from medkit.model import load_tokenizer


def main(profile: str = "cpu", n: int = 300, n_free: int = 8) -> dict:
    data = paths.profile_data_dir(profile)
    t0 = time.perf_counter()
    index, toolbox = T.open_tools(data)
    setup = time.perf_counter() - t0
    schemas = A.tool_schemas(toolbox.tools())
    count = TR.token_counter(load_tokenizer(profile), schemas)
    questions = mio.read_jsonl(data / "questions_train.jsonl")[:n]

    def verdict(traj: dict, rec: dict) -> dict:
        return TR.filter_trajectory(traj, rec, max_tokens=4096, count_tokens=count, resolve=toolbox.resolve_ids)

    # per-tool latency, measured on the calls synthesis makes
    tool_ms: dict[str, list[float]] = defaultdict(list)
    real_call = toolbox.call

    def timed_call(name, arguments=None):
        t1 = time.perf_counter()
        out = real_call(name, arguments)
        tool_ms[str(name)].append((time.perf_counter() - t1) * 1000)
        return out

    toolbox.call = timed_call
    t0 = time.perf_counter()
    ours = []
    for rec in questions:
        traj = S.synthesise(rec, index, toolbox).to_record()
        ours.append(verdict(traj, rec))
    ours_s = time.perf_counter() - t0
    toolbox.call = real_call

    teacher = llm.LocalTransformersBackend.from_profile(profile, batch_size=8, progress=False)
    free_qs = questions[:n_free]
    t0 = time.perf_counter()
    rollouts = A.run_agent(teacher, toolbox, free_qs, config=A.AgentConfig(max_calls=10, max_new_tokens=192,
                                                                           token_budget=4096, seed=13),
                           schemas=schemas, guidance={Q.question_id(r): TR.guidance_text(r) for r in free_qs},
                           progress=False)
    free_s = time.perf_counter() - t0
    free = [verdict(t, r) for t, r in zip(rollouts, free_qs)]

    def stats(verdicts: list[dict], seconds: float) -> dict:
        acc = [v for v in verdicts if v["accepted"]]
        return {"trajectories": len(verdicts), "seconds": round(seconds, 2),
                "trajectories_per_second": round(len(verdicts) / seconds, 3),
                "acceptance_rate": round(len(acc) / len(verdicts), 3),
                "mean_tool_calls_accepted": round(float(np.mean([v["n_tool_calls"] for v in acc])), 2) if acc else None,
                "mean_tokens_accepted": round(float(np.mean([v["n_tokens"] for v in acc])), 1) if acc else None}

    result = {
        "profile": profile, "tools_setup_seconds": round(setup, 1),
        "kg_guided": stats(ours, ours_s),
        "baseline_free_local_teacher": {**stats(free, free_s), "model": teacher.name,
                                        "stop_reasons": {k: sum(t["stop_reason"] == k for t in rollouts)
                                                         for k in A.STOP_REASONS if any(t["stop_reason"] == k
                                                                                        for t in rollouts)}},
        "speed_ratio_kg_guided_over_free": round((len(ours) / ours_s) / (len(free) / free_s), 1),
        "paper_mean_tool_calls": 4.2,
        "tool_call_ms": {k: {"calls": len(v), "p50": round(float(np.percentile(v, 50)), 2),
                             "p95": round(float(np.percentile(v, 95)), 2)} for k, v in sorted(tool_ms.items())},
    }
    mio.write_json(paths.results_dir() / "bench" / "trajectories.json", result)
    print(result)
    return result


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cpu"]))
