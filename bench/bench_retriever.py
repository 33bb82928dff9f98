"""Passage retrieval: the kit's bm25s retriever vs the plain-Python baseline rank-bm25.

On the full passage corpus, with the same tokens for both libraries (medkit.retriever's
tokenizer: folded, lower-cased, English stopwords out, no stemming) and the same
k1 / b: index build time, p50 / p95 per-query latency over 200 realistic queries
(a random passage's title plus the first 3-8 words of its definition; seeded), bm25s'
batched throughput, and how often the two agree on the top-1 passage. The raw
``bm25s.BM25.retrieve`` (its own top-k selection, which medkit replaces) is timed too. The libraries
differ in their IDF (bm25s: Lucene, log(1 + (N - n + .5) / (n + .5)); rank-bm25's
BM25Okapi: log((N - n + .5) / (n + .5)) with negative values floored), so agreement
is high but not total. Both rank with medkit.retriever.top_k (score desc, passage_id).
Writes ``results/bench/retriever.json``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import bm25s
import numpy as np
import pandas as pd
from rank_bm25 import BM25Okapi

from medkit import io as mio
from medkit import kb
from medkit import retriever as R
from medkit.paths import results_dir

N_QUERIES = 200
SEED = 0
K = 10


def best_of(fn: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    """(shortest wall time, last result) over ``repeats`` runs."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def realistic_queries(passages: pd.DataFrame, n: int = N_QUERIES, seed: int = SEED) -> list[str]:
    """A passage title plus the first 3-8 words of its definition, for ``n`` seeded random passages."""
    return [q for q, _ in queries_with_sources(passages, n, seed)]


def queries_with_sources(passages: pd.DataFrame, n: int = N_QUERIES, seed: int = SEED) -> list[tuple[str, str]]:
    """(query, id of the passage it was made from) pairs of :func:`realistic_queries`."""
    rng = np.random.default_rng(seed)
    rows = passages.iloc[rng.choice(len(passages), size=n, replace=False)]
    lengths = rng.integers(3, 9, size=n)
    return [(f"{title} {' '.join(text.split()[:m])}", pid)
            for title, text, m, pid in zip(rows["title"], rows["text"], lengths, rows["passage_id"])]


def dense_rerank_section(retriever: R.BM25Retriever, passages: pd.DataFrame, n: int = 100) -> dict:
    """BM25 alone vs BM25 top 30 re-ranked by MiniLM: latency and how often the source passage comes first.

    Two query sets: the lexical recipe above (title + first words, which favours BM25) and a
    paraphrase-like one (the definition's words 4-16, without the title).
    """
    embed = R.minilm_embedder()
    rng = np.random.default_rng(SEED + 1)
    rows = passages.iloc[rng.choice(len(passages), size=n, replace=False)]
    paraphrase = [(" ".join(t.split()[3:16]), pid) for t, pid in zip(rows["text"], rows["passage_id"])
                  if len(t.split()) >= 10]
    out = {}
    for name, pairs in (("title_plus_first_words", queries_with_sources(passages, n)),
                        ("definition_words_4_to_16", paraphrase)):
        qs = [q for q, _ in pairs]
        lat_bm25, bm25_hits = latencies(lambda q: retriever.search(q, k=K), qs)
        lat_dense, dense_hits = latencies(lambda q: R.rerank(q, retriever.search(q, k=30), embed)[:K], qs)
        def hit_at(hits: list, k: int) -> float:
            return round(float(np.mean([src in [h.passage_id for h in hs[:k]] for hs, (_, src) in zip(hits, pairs)])), 3)
        out[name] = {"queries": len(qs),
                     "bm25": {"hit@1": hit_at(bm25_hits, 1), "hit@5": hit_at(bm25_hits, 5), **summary_ms(lat_bm25)},
                     "bm25_top30_minilm_rerank": {"hit@1": hit_at(dense_hits, 1), "hit@5": hit_at(dense_hits, 5),
                                                  **summary_ms(lat_dense)}}
    return out


def latencies(fn: Callable[[str], object], queries: list[str], warmup: int = 5) -> tuple[np.ndarray, list[object]]:
    for q in queries[:warmup]:
        fn(q)
    times, outs = [], []
    for q in queries:
        t0 = time.perf_counter()
        outs.append(fn(q))
        times.append(time.perf_counter() - t0)
    return np.array(times) * 1000, outs


def summary_ms(t: np.ndarray) -> dict[str, float]:
    return {"p50": round(float(np.percentile(t, 50)), 3), "p95": round(float(np.percentile(t, 95)), 3),
            "mean": round(float(t.mean()), 3)}


def main() -> dict:
    kb.build_kb(progress=lambda _: None)
    _, _, passages = kb.load_kb()
    queries = realistic_queries(passages)

    # the kit's retriever end to end (validation, tokenisation, sorted vocabulary, index, checksums)
    t_kit_build, retriever = best_of(lambda: R.BM25Retriever.build(passages))
    docs = retriever.docs  # sorted by passage_id: the tie-break order
    pids = docs["passage_id"].to_numpy(dtype=object)
    t_tok, tokens = best_of(lambda: R.tokenize(R.document_texts(docs, include_title=True)))
    k1, b = retriever.params["k1"], retriever.params["b"]

    def build_bm25s() -> bm25s.BM25:
        model = bm25s.BM25(k1=k1, b=b, method=R.METHOD)
        model.index(tokens, show_progress=False)
        return model

    t_bm25s, raw = best_of(build_bm25s)
    t_okapi, okapi = best_of(lambda: BM25Okapi(tokens, k1=k1, b=b))

    def okapi_search(q: str) -> list[str]:
        toks = R.tokenize([R.prepare_query(q)[0]])[0]
        return [pids[i] for i in R.top_k(okapi.get_scores(toks), K)[0]] if toks else []

    def raw_search(q: str) -> list[str]:
        toks = [t for t in R.tokenize([q])[0] if t in raw.vocab_dict]
        if not toks:
            return []
        res = raw.retrieve([toks], k=K, show_progress=False, backend_selection="numpy")
        return [pids[i] for i in res.documents[0]]

    lat_kit, kit_hits = latencies(lambda q: retriever.search(q, k=K), queries)
    lat_raw, _ = latencies(raw_search, queries)
    lat_okapi, okapi_ids = latencies(okapi_search, queries)
    t_batch, batch_hits = best_of(lambda: retriever.search_batch(queries, k=K))
    t_raw_batch, _ = best_of(lambda: raw.retrieve([[t for t in toks if t in raw.vocab_dict]
                                                   for toks in R.tokenize(queries)], k=K, show_progress=False,
                                                  backend_selection="numpy"))

    kit_ids = [[h.passage_id for h in hits] for hits in kit_hits]
    assert kit_ids == [[h.passage_id for h in hits] for hits in batch_hits], "search_batch differs from search"
    answered = [i for i, (a, o) in enumerate(zip(kit_ids, okapi_ids)) if a and o]
    top1 = float(np.mean([kit_ids[i][0] == okapi_ids[i][0] for i in answered]))
    overlap = float(np.mean([len(set(kit_ids[i]) & set(okapi_ids[i])) / K for i in answered]))
    source_top1 = float(np.mean([kit_ids[i][0] in set(okapi_ids[i][:3]) for i in answered]))

    qps_kit_batch = len(queries) / t_batch
    qps_okapi = len(queries) / (lat_okapi.sum() / 1000)
    result = {
        "benchmark": "BM25 passage retrieval: medkit.retriever (bm25s) vs rank-bm25 BM25Okapi (baseline)",
        "corpus": {"passages": len(passages), "vocabulary": retriever.vocab_size,
                   "tokens": int(sum(len(t) for t in tokens)), "indexed": "title + text"},
        "queries": {"n": len(queries), "seed": SEED, "k": K,
                    "recipe": "random passage title + first 3-8 words of its definition",
                    "mean_tokens": round(float(np.mean([len(t) for t in R.tokenize(queries)])), 2),
                    "examples": queries[:3]},
        "params": {"k1": k1, "b": b, "bm25s_method": R.METHOD, "stemmer": retriever.params["stemmer"]},
        "build_seconds": {
            "tokenize_corpus": round(t_tok, 3),
            "bm25s_index_same_tokens": round(t_bm25s, 3),
            "rank_bm25_index_same_tokens": round(t_okapi, 3),
            "medkit_build_end_to_end": round(t_kit_build, 3),
        },
        "build_ratio_rank_bm25_over_bm25s": round(t_okapi / t_bm25s, 2),
        "latency_ms": {
            "medkit_search (bm25s scores + medkit top_k, incl. tokenisation)": summary_ms(lat_kit),
            "bm25s_retrieve_raw (bm25s' own top-k selection)": summary_ms(lat_raw),
            "rank_bm25 (same tokens, same tie-break)": summary_ms(lat_okapi),
        },
        "latency_speedup_vs_rank_bm25": {f"p{q}": round(float(np.percentile(lat_okapi, q) / np.percentile(lat_kit, q)), 1)
                                         for q in (50, 95)},
        "throughput_qps": {
            "medkit_search_batch": round(qps_kit_batch, 1),
            "bm25s_retrieve_raw_batch": round(len(queries) / t_raw_batch, 1),
            "rank_bm25_serial": round(qps_okapi, 2),
        },
        "batch_speedup_vs_rank_bm25": round(qps_kit_batch / qps_okapi, 1),
        "agreement_with_rank_bm25": {"queries_compared": len(answered), "top1": round(top1, 3),
                                     "medkit_top1_in_rank_bm25_top3": round(source_top1, 3),
                                     "top10_overlap": round(overlap, 3)},
        "dense_rerank (optional, offline all-MiniLM-L6-v2)": dense_rerank_section(retriever, passages),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "numba": mio.package_version("numba"), "jax": mio.package_version("jax")},
        "versions": {"bm25s": bm25s.__version__, "rank-bm25": mio.package_version("rank-bm25"), "numpy": np.__version__},
    }
    out = results_dir() / "bench" / "retriever.json"
    mio.write_json(out, result)
    print(mio.read_json(out))
    return result


if __name__ == "__main__":
    main()
