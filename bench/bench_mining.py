"""Entity-mining throughput: Aho-Corasick matcher vs the straightforward n-gram baseline.

Measures end to end (normalise, match, build mention rows) on the real passage corpus:
one core for each matcher on the same 2 MB slice (ratio reported), the full corpus on
one core and on the local process pool, and the projected wall time for 30M PubMed
abstracts on 16 cores. Writes ``results/bench/mining.json``.
"""

from __future__ import annotations

import os
import platform
import time

from medkit import io as mio
from medkit import kb, mining, ner
from medkit.paths import results_dir

PUBMED_ABSTRACTS = 30_000_000
PUBMED_CHARS_PER_ABSTRACT = 1_500  # title + abstract; PubMed abstracts average roughly 1.2-1.6 k characters
PROJECT_CORES = 16


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> dict:
    kb.build_kb(progress=lambda _: None)
    entities, _, passages = kb.load_kb()
    t0 = time.perf_counter()
    surfaces = ner.build_surfaces(entities)
    fast = ner.Matcher(surfaces)
    build_fast = time.perf_counter() - t0
    slow = ner.BaselineMatcher(surfaces)

    sl = passages.sample(frac=1, random_state=0)
    sl = sl[sl["text"].str.len().cumsum() <= 2_000_000]
    mb_slice = sl["text"].str.len().sum() / 1e6
    ids, texts = sl["passage_id"].tolist(), sl["text"].tolist()
    t_fast = best_of(lambda: mining.mine_chunk(fast, ids, texts))
    t_slow = best_of(lambda: mining.mine_chunk(slow, ids, texts), repeats=1)

    mb_all = passages["text"].str.len().sum() / 1e6
    t_serial = best_of(lambda: mining.mine_mentions(passages, fast, backend="serial", progress=False), repeats=2)
    workers = min(2, os.cpu_count() or 1)
    t_pool = best_of(lambda: mining.mine_mentions(passages, fast, backend="processes", n_workers=workers,
                                                  progress=False), repeats=2)
    per_core = mb_all / t_serial
    pubmed_mb = PUBMED_ABSTRACTS * PUBMED_CHARS_PER_ABSTRACT / 1e6
    result = {
        "benchmark": "entity mining throughput (M characters/s; the corpus is ASCII-dominated, ~1 byte/char)",
        "corpus": {"passages": len(passages), "mega_chars": round(mb_all, 2), "surfaces": len(surfaces)},
        "matcher_build_seconds": round(build_fast, 2),
        "slice_mega_chars": round(mb_slice, 2),
        "aho_corasick_one_core_mb_s": round(mb_slice / t_fast, 2),
        "baseline_ngram_one_core_mb_s": round(mb_slice / t_slow, 2),
        "speedup_vs_baseline": round(t_slow / t_fast, 1),
        "full_corpus_serial_mb_s_per_core": round(per_core, 2),
        "full_corpus_process_pool": {"workers": workers, "mb_s": round(mb_all / t_pool, 2),
                                     "mb_s_per_core": round(mb_all / t_pool / workers, 2)},
        "goal_mb_s_per_core": 5.0,
        "meets_goal": bool(per_core >= 5.0),
        "projection_pubmed": {"abstracts": PUBMED_ABSTRACTS, "chars_per_abstract": PUBMED_CHARS_PER_ABSTRACT,
                              "cores": PROJECT_CORES,
                              "hours": round(pubmed_mb / (per_core * PROJECT_CORES) / 3600, 2)},
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    out = results_dir() / "bench" / "mining.json"
    mio.write_json(out, result)
    print(mio.read_json(out))
    return result


if __name__ == "__main__":
    main()
