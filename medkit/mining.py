"""Rare-entity mining: mentions over a corpus, document frequency, rare-entity selection.

Scope: run a :class:`medkit.ner.Matcher` over passages in one process, on a local
process pool (``concurrent.futures``) or on a Dask cluster (``dask.distributed``;
pass a scheduler address for a real cluster, or let it start a local one), with
identical, order-stable output from every backend; count the document frequency
of every entity; and select entities that are *rare* (mentioned in few passages)
yet *meaningful* (anchored in curated knowledge, so a question can be built on them).

The paper mines >30M PubMed abstracts and keeps low-frequency entities that an LLM
judges clinically meaningful. Offline we mine the definitional corpus (or PubMed
baseline files via :mod:`medkit.pubmed`) and replace the LLM judge with curated
evidence: enough typed relations in the KB, a definition to retrieve, not a generic
grouping term.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, InputError
from .ner import Matcher

MENTION_COLUMNS = ["passage_id", "entity_id", "start", "end", "surface"]
BACKENDS = ("serial", "processes", "dask")

_WORKER_MATCHER: Matcher | None = None


def mine_chunk(matcher: Matcher, passage_ids: Sequence[str], texts: Sequence[str]) -> pd.DataFrame:
    """Mentions in one chunk of passages (one row per passage x entity x span)."""
    rows: list[tuple[str, str, int, int, str]] = []
    for pid, text in zip(passage_ids, texts):
        for m in matcher.find(text):
            surface = text[m.start:m.end]
            for eid in m.entity_ids:
                rows.append((pid, eid, m.start, m.end, surface))
    return pd.DataFrame(rows, columns=MENTION_COLUMNS)


def _init_worker(matcher: Matcher) -> None:
    global _WORKER_MATCHER
    _WORKER_MATCHER = matcher


def _mine_in_worker(passage_ids: Sequence[str], texts: Sequence[str]) -> pd.DataFrame:
    assert _WORKER_MATCHER is not None, "worker not initialised"
    return mine_chunk(_WORKER_MATCHER, passage_ids, texts)


def chunks(passages: pd.DataFrame, size: int) -> Iterator[tuple[list[str], list[str]]]:
    ids, texts = passages["passage_id"].tolist(), passages["text"].tolist()
    for i in range(0, len(ids), size):
        yield ids[i:i + size], texts[i:i + size]


def mine_mentions(passages: pd.DataFrame, matcher: Matcher, *, backend: str = "serial", n_workers: int = 2,
                  chunk_size: int = 2000, scheduler: str | Any | None = None, progress: bool = True) -> pd.DataFrame:
    """All mentions in ``passages`` (columns passage_id, text) with the chosen backend.

    ``scheduler`` (dask only): a ``distributed.Client``, a scheduler address such as
    ``tcp://host:8786``, or ``None`` to start a local cluster of ``n_workers`` processes.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown mining backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    for col in ("passage_id", "text"):
        if col not in passages.columns:
            raise InputError(None, f"passage table has no {col!r} column", field=col)
    if passages.empty:
        raise InputError(None, "the corpus is empty: no passages to mine")
    work = list(chunks(passages, chunk_size))
    from .notebook_output import progress as tqdm  # tqdm.auto, off in headless runs

    bar = tqdm(total=len(passages), desc=f"mining ({backend})", unit="passage", disable=not progress)
    parts: list[pd.DataFrame] = []
    if backend == "serial":
        for ids, texts in work:
            parts.append(mine_chunk(matcher, ids, texts))
            bar.update(len(ids))
    elif backend == "processes":
        with ProcessPoolExecutor(max_workers=n_workers, initializer=_init_worker, initargs=(matcher,)) as pool:
            for (ids, _), part in zip(work, pool.map(_mine_in_worker, *zip(*work))):
                parts.append(part)
                bar.update(len(ids))
    else:
        parts = _mine_dask(work, matcher, n_workers, scheduler, bar)
    bar.close()
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=MENTION_COLUMNS)
    return out.astype({"start": "int32", "end": "int32"})


def _mine_dask(work: list[tuple[list[str], list[str]]], matcher: Matcher, n_workers: int,
               scheduler: str | Any | None, bar: Any) -> list[pd.DataFrame]:
    from dask.distributed import Client, LocalCluster, as_completed

    own_cluster = None
    if scheduler is None:
        # distributed's nanny sets OMP/MKL/OPENBLAS_NUM_THREADS=1 (and MALLOC_TRIM_THRESHOLD_) for its workers
        # in *this* process's environment, where every later subprocess inherits it: a kernel started after
        # it ran torch single-threaded and OpenVINO with 1 thread, which crashes OpenVINO 2026.4's CPU plugin
        # on AMX Xeons. The workers have their copy once started; put ours back.
        environ = dict(os.environ)
        try:
            own_cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
        finally:
            os.environ.clear()
            os.environ.update(environ)
        client = Client(own_cluster)
    elif isinstance(scheduler, str):
        client = Client(scheduler)
    else:
        client = scheduler
    try:
        m = client.scatter(matcher, broadcast=True)
        futures = [client.submit(mine_chunk, m, ids, texts, pure=False) for ids, texts in work]
        index = {f.key: i for i, f in enumerate(futures)}
        parts: list[pd.DataFrame | None] = [None] * len(futures)
        for fut in as_completed(futures):
            i = index[fut.key]
            parts[i] = fut.result()
            bar.update(len(work[i][0]))
        return [p for p in parts if p is not None]
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()


def document_frequency(mentions: pd.DataFrame, n_passages: int) -> pd.DataFrame:
    """Per entity: df (distinct passages), mentions (total), df_share."""
    if mentions.empty:
        return pd.DataFrame(columns=["entity_id", "df", "mentions", "df_share"])
    g = mentions.groupby("entity_id")
    out = pd.DataFrame({"df": g["passage_id"].nunique(), "mentions": g.size()}).reset_index()
    out["df_share"] = out["df"] / max(n_passages, 1)
    return out.sort_values(["df", "entity_id"], ascending=[False, True]).reset_index(drop=True)


def entity_stats(entities: pd.DataFrame, relations: pd.DataFrame, passages: pd.DataFrame,
                 df: pd.DataFrame) -> pd.DataFrame:
    """Entities with df (0 if never mentioned), curated relation counts and KB evidence."""
    deg = pd.concat([relations["head_id"], relations["tail_id"]]).value_counts()
    curated = relations[relations["relation"] != "is_a"]
    cdeg = pd.concat([curated["head_id"], curated["tail_id"]]).value_counts()
    children = relations[relations["relation"] == "is_a"]["tail_id"].value_counts()
    own_passage = set(passages["entity_id"].dropna())
    out = entities[["entity_id", "type", "name", "definition"]].merge(df, on="entity_id", how="left")
    out["df"] = out["df"].fillna(0).astype(int)
    out["mentions"] = out["mentions"].fillna(0).astype(int)
    out["df_share"] = out["df_share"].fillna(0.0)
    out["degree"] = out["entity_id"].map(deg).fillna(0).astype(int)
    out["curated_relations"] = out["entity_id"].map(cdeg).fillna(0).astype(int)
    out["n_children"] = out["entity_id"].map(children).fillna(0).astype(int)
    out["has_passage"] = out["entity_id"].isin(own_passage)
    return out.drop(columns=["definition"])


def select_rare(stats: pd.DataFrame, *, max_df: int, min_relations: int, types: Sequence[str],
                max_children: int = 0, max_rare: int | None = None, seed: int = 13) -> pd.DataFrame:
    """Rare but meaningful entities, with the reason each one qualifies.

    Rare: mentioned in at most ``max_df`` passages (other than nothing at all being
    required: an entity the corpus never names is the rarest of all). Meaningful:
    of a wanted type, at least ``min_relations`` curated (non-is_a) relations, and not
    a grouping term (at most ``max_children`` is_a children). Diseases must also have a
    definition passage, so the retriever can find them. ``max_rare`` keeps a seeded
    random sample, stratified by type.
    """
    s = stats
    mask = (s["type"].isin(list(types)) & (s["df"] <= max_df) & (s["curated_relations"] >= min_relations)
            & (s["n_children"] <= max_children) & ((s["type"] != "disease") | s["has_passage"]))
    rare = s[mask].copy()
    rare["reason"] = (f"df<={max_df}; " + rare["curated_relations"].astype(str) + " curated relations"
                      + np.where(rare["has_passage"], "; has definition", ""))
    if max_rare is not None and len(rare) > max_rare:
        rng = np.random.default_rng(seed)
        share = rare["type"].value_counts(normalize=True)
        picks = []
        for t, frac in share.sort_index().items():
            group = rare[rare["type"] == t]
            k = max(1, int(round(frac * max_rare)))
            picks.append(group.iloc[np.sort(rng.choice(len(group), size=min(k, len(group)), replace=False))])
        rare = pd.concat(picks)
    return rare.sort_values("entity_id").reset_index(drop=True)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
