"""Question generation speed without any LLM, and the cost of the longest-chain search.

On the KG of a profile (default cpu; run its notebooks 01-02 first), generates one
question per rare seed for ``N`` seeds (sampling, exact longest chain, constraints,
uniqueness verification over the whole KB, rendering, leak check) and reports
questions/s, seeds/s, the p50 / p95 / max time of the longest-path search per subgraph,
and the share of seeds that yield a verified question. Baseline in the same run: the
same seeds with the longest-path search replaced by networkx's ``all_simple_paths``
enumeration (what one would write first), timed on the same subgraphs.
Writes ``results/bench/questions.json``.
"""

from __future__ import annotations

import random
import sys
import time

import networkx as nx
import numpy as np
import pandas as pd

from medkit import io as mio
from medkit import kb, kg, paths
from medkit import qgen, questions as Q, subgraph as S


def main(profile: str = "cpu", n: int = 500) -> dict:
    data = paths.profile_data_dir(profile)
    entities, relations, _ = kb.load_kb()
    corpus = mio.read_parquet(data / "corpus_relations.parquet")
    t0 = time.perf_counter()
    index = Q.QuestionIndex(entities, Q.question_relations(entities, relations, corpus))
    graph = kg.load_graph(data / "kg.json.gz")
    view = S.chain_view(graph)
    setup = time.perf_counter() - t0
    seeds = sorted(n_ for n_, d in graph.nodes(data=True) if d.get("seed"))  # the rare seeds, as in notebook 03
    seeds = sorted(random.Random(0).sample(seeds, min(n, len(seeds))))

    t0 = time.perf_counter()
    recs = [qgen.generate_for_seed(index, view, s, base_seed=13, attempt=0, strategy="mixed", k_range=(8, 12),
                                   max_hops=6, min_hops=2, level=0) for s in seeds]
    total = time.perf_counter() - t0
    ok = [r for r in recs if r["status"] == "ok"]
    search_ms = np.array([r["chain_search_ms"] for r in recs if "chain_search_ms" in r])

    # baseline: enumerate every simple path from the seed with networkx, keep the longest
    base_ms, ours_ms, agree = [], [], 0
    for r in recs[:200]:
        if "subgraph_nodes" not in r:
            continue
        sub = view.subgraph(r["subgraph_nodes"])
        s = r["source_entity_id"]
        t1 = time.perf_counter()
        ours, _, _ = S.longest_path(sub, s, max_len=11)
        ours_ms.append((time.perf_counter() - t1) * 1000)
        t1 = time.perf_counter()
        longest = max((p for t in sub if t != s for p in nx.all_simple_paths(sub, s, t)), key=len, default=[s])
        base_ms.append((time.perf_counter() - t1) * 1000)
        agree += len(longest) == len(ours)
    result = {
        "profile": profile, "seeds": len(seeds), "index_and_graph_setup_seconds": round(setup, 1),
        "questions_per_second": round(len(ok) / total, 2), "seeds_per_second": round(len(seeds) / total, 2),
        "yield": round(len(ok) / len(seeds), 3), "mean_hops": round(float(np.mean([r["hops"] for r in ok])), 2),
        "sampling_plus_chain_search_ms": {"p50": round(float(np.percentile(search_ms, 50)), 2),
                                          "p95": round(float(np.percentile(search_ms, 95)), 2),
                                          "max": round(float(search_ms.max()), 2)},
        "longest_path_only_ms": {"ours_p95": round(float(np.percentile(ours_ms, 95)), 3),
                                 "networkx_all_simple_paths_p95": round(float(np.percentile(base_ms, 95)), 3),
                                 "speedup_mean": round(float(np.sum(base_ms) / max(np.sum(ours_ms), 1e-9)), 2),
                                 "same_length": f"{agree}/{len(ours_ms)}"},
        "drop_reasons": pd.Series([r["reason"].split(":")[0] for r in recs if r["status"] != "ok"]).value_counts().to_dict(),
    }
    mio.write_json(paths.results_dir() / "bench" / "questions.json", result)
    print(result)
    return result


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cpu"]))
