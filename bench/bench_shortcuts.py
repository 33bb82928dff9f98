"""How many of a question's hops does a solver need? (``medkit.questions.sufficient_hops``)

Every question is verified unique as a whole, but a chain's tail can already pin the answer: the
answer's own clues may name it (0 hops needed), or its last two hops may (2), whatever the chain's
length. This counts, per split and hop count of a profile's questions, how many hops are needed,
the share of questions that need every hop, and the time per question. Baseline: the hop count the
record states (``hops``); the ratio reported is needed / stated hops.

``python bench/bench_shortcuts.py [profile]`` -> ``results/bench/question_shortcuts.json``.
Needs notebook 03's questions (``data/<profile>/questions_{train,test}.jsonl``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from typing import Any

from medkit import io as mio
from medkit import paths, records
from medkit import questions as Q
from medkit import tools as T


def main(profile: str = "cpu") -> dict[str, Any]:
    data = paths.profile_data_dir(profile)
    index, _ = T.open_tools(data)
    out: dict[str, Any] = {"bench": "question_shortcuts", "profile": profile, "baseline": "stated hops", "splits": {}}
    for split in ("train", "test"):
        recs = records.load_questions(data / f"questions_{split}.jsonl", records.KitQuestion)
        t0 = time.perf_counter()
        needed = [Q.sufficient_hops(index, Q.variables_from_record(r)) for r in recs]
        seconds = time.perf_counter() - t0
        by_hops: dict[int, Counter] = defaultdict(Counter)
        for r, n in zip(recs, needed):
            by_hops[int(r["hops"])][n] += 1
        stated = sum(int(r["hops"]) for r in recs)
        out["splits"][split] = {
            "questions": len(recs),
            "every_hop_needed": round(sum(n == int(r["hops"]) for r, n in zip(recs, needed)) / len(recs), 4),
            "answer_named_by_its_own_clues": round(sum(n == 0 for n in needed) / len(recs), 4),
            "mean_stated_hops": round(stated / len(recs), 3),
            "mean_needed_hops": round(sum(needed) / len(recs), 3),
            "needed_over_stated": round(sum(needed) / stated, 4),
            "needed_by_stated_hops": {str(h): {str(k): v for k, v in sorted(c.items())} for h, c in sorted(by_hops.items())},
            "ms_per_question": round(1000 * seconds / len(recs), 2),
        }
        print(split, {k: v for k, v in out["splits"][split].items() if k != "needed_by_stated_hops"}, flush=True)
    out["provenance"] = mio.provenance(builder="bench/bench_shortcuts.py")
    mio.write_json(paths.results_dir() / "bench" / "question_shortcuts.json", out)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:2])
