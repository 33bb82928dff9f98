"""The medical knowledge graph around rare entities.

Scope: corpus co-occurrence edges (with evidence passage ids), the typed networkx
``MultiDiGraph`` grown from rare seed entities over curated relations plus corpus
edges, its statistics, and lossless save / load (gzip node-link JSON).

Edges are keyed by relation name, so one pair of nodes can carry several typed
relations (``has_phenotype`` from HPO and ``definition_mentions`` from the corpus).
Growth is deterministic: from each frontier node, at most ``max_neighbours``
neighbours per relation type are followed, rarest first (lowest document
frequency, then id), so hub phenotypes lead to rare diseases rather than swamping
the graph with common ones.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from .errors import InputError
from .io import atomic_path
from .kb import RELATION_COLUMNS

MAX_EVIDENCE = 5  # passage ids kept per corpus edge
# Edge attributes include "source" (where a relation comes from), so the node-link
# endpoint fields get names that cannot collide with any attribute.
_NODE_LINK = {"edges": "edges", "source": "_from", "target": "_to", "key": "_key", "name": "_id"}


def cooccurrence_relations(mentions: pd.DataFrame, passages: pd.DataFrame, *, min_count: int = 1) -> pd.DataFrame:
    """Corpus edges from mined mentions.

    ``definition_mentions``: the passage defines X (its ``entity_id``) and mentions Y.
    ``co_mentioned``: X and Y are both mentioned in one passage (stored once, X < Y).
    ``frequency`` holds the number of supporting passages, ``evidence`` up to 5 passage ids.
    """
    if mentions.empty:
        return pd.DataFrame(columns=RELATION_COLUMNS)
    owner = passages.set_index("passage_id")["entity_id"]
    per_passage = mentions.drop_duplicates(["passage_id", "entity_id"])[["passage_id", "entity_id"]]
    defined = per_passage.assign(head_id=per_passage["passage_id"].map(owner)).dropna(subset=["head_id"])
    defined = defined[defined["head_id"] != defined["entity_id"]]
    rows = [("definition_mentions", h, t, p) for h, t, p in
            zip(defined["head_id"], defined["entity_id"], defined["passage_id"])]
    for pid, group in per_passage.groupby("passage_id", sort=True):
        own = owner.get(pid)
        ents = sorted(e for e in group["entity_id"] if e != own)
        rows.extend(("co_mentioned", a, b, pid) for a, b in combinations(ents, 2))
    edges = pd.DataFrame(rows, columns=["relation", "head_id", "tail_id", "passage_id"])
    agg = (edges.sort_values("passage_id").groupby(["head_id", "relation", "tail_id"], sort=True)["passage_id"]
           .agg(frequency="size", evidence=lambda s: " ".join(list(s)[:MAX_EVIDENCE])).reset_index())
    agg = agg[agg["frequency"] >= min_count]
    agg["source"] = "corpus co-occurrence"
    agg["frequency"] = agg["frequency"].astype(float)
    return agg[RELATION_COLUMNS].reset_index(drop=True)


def _adjacency(relations: pd.DataFrame) -> dict[str, dict[str, set[str]]]:
    adj: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for h, r, t in zip(relations["head_id"], relations["relation"], relations["tail_id"]):
        adj[h][r].add(t)
        adj[t][r].add(h)
    return adj


def grow_nodes(seeds: Iterable[str], relations: pd.DataFrame, rarity: dict[str, int], *, hops: int,
               max_neighbours: int) -> dict[str, int]:
    """Nodes within ``hops`` of the seeds, following at most ``max_neighbours`` per relation type.

    Returns node -> hop distance from the nearest seed.
    """
    adj = _adjacency(relations)
    dist = {s: 0 for s in sorted(set(seeds))}
    frontier = list(dist)
    for hop in range(1, hops + 1):
        nxt = []
        for node in frontier:
            for rel in sorted(adj.get(node, {})):
                nbrs = sorted(adj[node][rel], key=lambda n: (rarity.get(n, 0), n))[:max_neighbours]
                for n in nbrs:
                    if n not in dist:
                        dist[n] = hop
                        nxt.append(n)
        frontier = nxt
    return dist


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_graph(entities: pd.DataFrame, relations: pd.DataFrame, stats: pd.DataFrame, rare_ids: Iterable[str],
                *, seeds: Iterable[str], hops: int, max_neighbours: int) -> nx.MultiDiGraph:
    """The typed KG around ``seeds``: grown nodes plus every relation among them."""
    rarity = dict(zip(stats["entity_id"], stats["df"]))
    dist = grow_nodes(seeds, relations, rarity, hops=hops, max_neighbours=max_neighbours)
    rare = set(rare_ids)
    seed_set = set(seeds)
    ent = entities.set_index("entity_id")
    g = nx.MultiDiGraph(name="medkit rare-entity KG")
    for node in sorted(dist):
        if node not in ent.index:
            continue
        row = ent.loc[node]
        g.add_node(node, type=row["type"], name=row["name"], definition=_clean(row["definition"]),
                   synonyms=[str(s) for s in (row["synonyms"] if row["synonyms"] is not None else [])],
                   df=int(rarity.get(node, 0)), rare=node in rare, seed=node in seed_set, hop=dist[node])
    inside = relations[relations["head_id"].isin(g) & relations["tail_id"].isin(g)]
    for h, r, t, s, ev, fr in zip(inside["head_id"], inside["relation"], inside["tail_id"], inside["source"],
                                 inside["evidence"], inside["frequency"]):
        g.add_edge(h, t, key=r, relation=r, source=s, evidence=ev or "", frequency=_clean(float(fr)))
    return g


def summary(g: nx.MultiDiGraph) -> dict[str, Any]:
    """Node / edge counts by type, components, degree statistics."""
    und = nx.Graph(g)
    comps = sorted((len(c) for c in nx.connected_components(und)), reverse=True)
    degrees = np.array([d for _, d in und.degree()]) if und.number_of_nodes() else np.array([0])
    node_types = pd.Series(dict(g.nodes(data="type"))).value_counts().sort_index().to_dict()
    edge_types = pd.Series([k for _, _, k in g.edges(keys=True)]).value_counts().sort_index().to_dict()
    return {
        "nodes": g.number_of_nodes(),
        "edges": g.number_of_edges(),
        "node_types": {k: int(v) for k, v in node_types.items()},
        "edge_types": {k: int(v) for k, v in edge_types.items()},
        "seeds": sum(1 for _, s in g.nodes(data="seed") if s),
        "rare_nodes": sum(1 for _, r in g.nodes(data="rare") if r),
        "components": len(comps),
        "largest_component": comps[0] if comps else 0,
        "degree_mean": float(degrees.mean()),
        "degree_median": float(np.median(degrees)),
        "degree_max": int(degrees.max()),
    }


def save_graph(g: nx.MultiDiGraph, path: str | Path) -> Path:
    """Write ``g`` as gzip node-link JSON (atomic); :func:`load_graph` restores it exactly."""
    data = nx.node_link_data(g, **_NODE_LINK)
    path = Path(path)
    with atomic_path(path, suffix=".json.gz") as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as f:  # no name or time in the gzip header: same graph, same bytes
        json.dump(data, f, ensure_ascii=False, sort_keys=True)
    return path


def load_graph(path: str | Path) -> nx.MultiDiGraph:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "graph file not found (run notebook 02 first)")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        return nx.node_link_graph(data, directed=True, multigraph=True, **_NODE_LINK)
    except (OSError, EOFError, json.JSONDecodeError, KeyError) as e:
        raise InputError(path, f"not a medkit graph file ({type(e).__name__}: {e})") from None


CORPUS_RELATIONS = frozenset({"definition_mentions", "co_mentioned"})


def neighbourhood(g: nx.MultiDiGraph, node: str, *, radius: int = 1, max_nodes: int = 30) -> nx.MultiDiGraph:
    """The ego graph of ``node`` (both directions), trimmed to ``max_nodes`` nodes.

    Nearest first; among equally near nodes, those tied to ``node`` by a curated
    relation come before corpus-only neighbours, then the rarest.
    """
    if node not in g:
        raise KeyError(f"{node} is not in the graph")
    ego = nx.ego_graph(g, node, radius=radius, undirected=True)
    if ego.number_of_nodes() > max_nodes:
        dist = nx.single_source_shortest_path_length(ego.to_undirected(as_view=True), node)

        def corpus_only(n: str) -> bool:
            keys = set(g.get_edge_data(node, n, default={})) | set(g.get_edge_data(n, node, default={}))
            return n != node and keys <= CORPUS_RELATIONS

        keep = sorted(ego, key=lambda n: (dist[n], corpus_only(n), g.nodes[n].get("df", 0), n))[:max_nodes]
        ego = ego.subgraph(keep)
    return nx.MultiDiGraph(ego)
