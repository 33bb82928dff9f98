"""Subgraph sampling around a rare seed, and the longest valid reasoning chain inside it.

Scope: the *chain view* of the KG (fact relations a question can hop along), the
paper's five sampling strategies (``max_chain``, ``augmented_chain``,
``community_core_path``, ``dual_core_bridge``, ``mixed`` — the strategy actually used
is what gets recorded, unlike upstream), and an exact longest-simple-path search.

Longest path is NP-hard in general; here it is exact because it runs inside a sampled
subgraph of at most ``k`` (8–12) nodes: a depth-first search from the seed visits each
simple path once, at most sum_{l<k} (k-1)!/(k-1-l)! paths, and sparse KG subgraphs
have far fewer. A hard cap on expanded paths (``max_expansions``, default 200,000)
bounds the worst case; a search that hits the cap reports ``exact=False`` with the
best chain found so far.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx

STRATEGIES = ("max_chain", "augmented_chain", "community_core_path", "dual_core_bridge")
# Fact relations a reasoning chain may hop along. Inheritance, onset, course and drug roles are
# clues, not hops (each is shared by thousands of entities); corpus co-occurrence is not a fact,
# but a drug's definition naming a disease is.
CHAIN_RELATIONS = frozenset({"has_phenotype", "associated_with", "is_a", "definition_mentions",
                             "disease_has_feature", "disease_has_major_feature", "predisposes_towards",
                             "disease_arises_from_feature", "disease_shares_features_of",
                             "disease_causes_feature"})
ANSWER_TYPES = frozenset({"disease", "gene", "drug", "phenotype"})


def chain_view(g: nx.MultiDiGraph) -> nx.Graph:
    """Undirected simple graph of chain relations; edge attribute ``hops`` lists (relation, head, tail)."""
    view = nx.Graph()
    types = nx.get_node_attributes(g, "type")
    for u, v, k in g.edges(keys=True):
        if k not in CHAIN_RELATIONS:
            continue
        if k == "definition_mentions" and {types.get(u), types.get(v)} != {"drug", "disease"}:
            continue
        if view.has_edge(u, v):
            view[u][v]["hops"].append((k, u, v))
        else:
            view.add_edge(u, v, hops=[(k, u, v)])
    nx.set_node_attributes(view, {n: types.get(n) for n in view}, "type")
    return view


def local_pool(view: nx.Graph, seed: str, rng: random.Random, *, radius: int = 2, per_node: int = 12,
               max_nodes: int = 150) -> nx.Graph:
    """The seed's neighbourhood, at most ``per_node`` neighbours followed per node (types interleaved)."""
    seen = {seed: 0}
    queue = deque([seed])
    while queue and len(seen) < max_nodes:
        node = queue.popleft()
        if seen[node] >= radius:
            continue
        for n in interleave_types(view, sorted(view.neighbors(node)), rng)[:per_node]:
            if n not in seen:
                seen[n] = seen[node] + 1
                queue.append(n)
    return view.subgraph(seen)


def interleave_types(g: nx.Graph, nodes: list[str], rng: random.Random) -> list[str]:
    """Nodes shuffled within each entity type, then taken round-robin across types.

    A disease has dozens of phenotype neighbours and one or two genes; sampling
    uniformly would almost never keep the gene, so every type gets its turn.
    """
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(str(g.nodes[n].get("type")), []).append(n)
    for members in groups.values():
        rng.shuffle(members)
    order = sorted(groups)
    rng.shuffle(order)
    out: list[str] = []
    for i in range(max((len(m) for m in groups.values()), default=0)):
        out.extend(groups[t][i] for t in order if i < len(groups[t]))
    return out


@dataclass
class Sample:
    nodes: list[str]
    strategy: str
    requested: str
    notes: dict = field(default_factory=dict)


def _fill(pool: nx.Graph, core: list[str], k: int, rng: random.Random) -> list[str]:
    """Core nodes first, then their neighbours (types interleaved, random within a type) until ``k`` nodes."""
    chosen = list(dict.fromkeys(core))[:k]
    frontier = interleave_types(pool, sorted({n for c in chosen for n in pool.neighbors(c)} - set(chosen)), rng)
    for n in frontier:
        if len(chosen) >= k:
            break
        if n not in chosen:
            chosen.append(n)
    return chosen


def sample_max_chain(pool: nx.Graph, seed: str, k: int, rng: random.Random, starts: int = 3) -> list[str]:
    best: list[str] = [seed]
    others = sorted(n for n in pool if n != seed)
    for start in [seed, *rng.sample(others, min(starts - 1, len(others)))]:
        path, _, _ = longest_path(pool, start, max_len=k - 1, max_expansions=20_000)
        if seed in path and len(path) > len(best):
            best = path
    return _fill(pool, best, k, rng)


def sample_augmented_chain(pool: nx.Graph, seed: str, k: int, rng: random.Random) -> list[str]:
    far = sorted(n for n in pool if n != seed and not pool.has_edge(seed, n))
    if not far:
        return _fill(pool, [seed], k, rng)
    target = rng.choice(far)
    backbone = nx.shortest_path(pool, seed, target)[:k]
    chosen = list(backbone)
    for node in backbone:
        extra = sorted(n for n in pool.neighbors(node) if n not in chosen)
        rng.shuffle(extra)
        for n in extra[: rng.randint(1, 2)]:
            if len(chosen) < k:
                chosen.append(n)
    return _fill(pool, chosen, k, rng)


def sample_community_core_path(pool: nx.Graph, seed: str, k: int, rng: random.Random) -> list[str]:
    centre = max(sorted(pool), key=pool.degree)
    community = set(nx.single_source_shortest_path_length(pool, centre, cutoff=2)) | {seed}
    sub = pool.subgraph(community)
    lengths = dict(nx.single_source_shortest_path_length(sub, seed))
    far = max(sorted(lengths), key=lambda n: lengths[n])
    core = nx.shortest_path(sub, seed, far)[:k]
    return _fill(sub, core, k, rng)


def sample_dual_core_bridge(pool: nx.Graph, seed: str, k: int, rng: random.Random) -> list[str]:
    ranked = sorted(sorted(pool), key=pool.degree, reverse=True)[:10]
    pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:] if not pool.has_edge(a, b)]
    if not pairs:
        return sample_augmented_chain(pool, seed, k, rng)
    a, b = rng.choice(pairs)
    bridge = nx.shortest_path(pool, a, b)
    to_seed = nx.shortest_path(pool, seed, min(bridge, key=lambda n: nx.shortest_path_length(pool, seed, n)))
    core = list(dict.fromkeys(to_seed + bridge))[:k]
    return _fill(pool, core, k, rng)


SAMPLERS = {"max_chain": sample_max_chain, "augmented_chain": sample_augmented_chain,
            "community_core_path": sample_community_core_path, "dual_core_bridge": sample_dual_core_bridge}


def sample_subgraph(view: nx.Graph, seed: str, strategy: str, k: int, rng: random.Random) -> Sample:
    """Sample ``k`` nodes around ``seed`` with ``strategy`` (``mixed`` picks one at random)."""
    if strategy not in (*STRATEGIES, "mixed"):
        raise ValueError(f"unknown sampling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}, mixed")
    if seed not in view:
        return Sample([seed], strategy if strategy != "mixed" else "none", strategy, {"error": "seed has no chain edges"})
    used = rng.choice(STRATEGIES) if strategy == "mixed" else strategy
    pool = local_pool(view, seed, rng)
    nodes = SAMPLERS[used](pool, seed, k, rng)
    if seed not in nodes:
        nodes = [seed, *nodes[: k - 1]]
    return Sample(nodes, used, strategy, {"pool_size": pool.number_of_nodes()})


def type_diversity(g: nx.Graph) -> Callable[[list[str]], int]:
    """Tie-breaker for equally long chains: more distinct entity types (a gene or drug hop
    makes a richer question than another disease -> phenotype -> disease detour), and an
    entity rather than a clinical feature as the answer."""
    return lambda path: (len({g.nodes[n].get("type") for n in path})
                         + (g.nodes[path[-1]].get("type") != "phenotype"))


def longest_path(g: nx.Graph, start: str, *, max_len: int = 11, max_expansions: int = 200_000,
                 valid_end: Callable[[str], bool] | None = None,
                 prefer: Callable[[list[str]], int] | None = None) -> tuple[list[str], int, bool]:
    """Longest simple path from ``start`` in ``g`` (exact unless the expansion cap is hit).

    ``valid_end(node) -> bool`` restricts where a chain may end. Among equally long
    paths the highest ``prefer(path)`` wins, then the lexicographically smallest path,
    so the result is deterministic. Returns (path, expansions, exact).
    """
    best: list[str] = [start] if (valid_end is None or valid_end(start)) else []
    best_pref = prefer(best) if (prefer and best) else 0
    expansions = 0
    exact = True
    adj = {n: sorted(g.neighbors(n)) for n in g}
    path = [start]
    on_path = {start}

    def better(pref: int) -> bool:
        if len(path) != len(best):
            return len(path) > len(best)
        return pref > best_pref or (pref == best_pref and path < best)

    def dfs() -> None:
        nonlocal best, best_pref, expansions, exact
        if expansions >= max_expansions:
            exact = False
            return
        expansions += 1
        node = path[-1]
        if valid_end is None or valid_end(node):
            pref = prefer(path) if prefer and len(path) >= len(best) else 0
            if better(pref):
                best, best_pref = list(path), pref
        if len(path) > max_len:
            return
        for n in adj[node]:
            if n not in on_path:
                path.append(n)
                on_path.add(n)
                dfs()
                path.pop()
                on_path.discard(n)

    dfs()
    return best, expansions, exact
