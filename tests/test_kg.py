"""KG: corpus edges with evidence, deterministic capped growth, lossless save/load."""

import gzip

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from medkit import kg, mining
from medkit.errors import InputError


def test_cooccurrence_relations_by_hand():
    passages = pd.DataFrame({"passage_id": ["p1", "p2", "p3"], "entity_id": ["D", None, None]})
    mentions = pd.DataFrame({"passage_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
                             "entity_id": ["G", "P", "G", "P", "P", "G"]})
    rel = kg.cooccurrence_relations(mentions, passages).set_index(["head_id", "relation", "tail_id"])
    assert rel.loc[("D", "definition_mentions", "G"), "evidence"] == "p1"
    co = rel.loc[("G", "co_mentioned", "P")]
    assert co["frequency"] == 3 and co["evidence"] == "p1 p2 p3"
    assert len(kg.cooccurrence_relations(mentions, passages, min_count=3)) == 1


def test_grow_nodes_caps_neighbours_rarest_first():
    rel = pd.DataFrame({"head_id": ["S"] * 5 + ["a"], "relation": ["r"] * 5 + ["q"],
                        "tail_id": ["a", "b", "c", "d", "e", "z"]})
    rarity = {"a": 9, "b": 1, "c": 5, "d": 0, "e": 3, "z": 0}
    assert kg.grow_nodes(["S"], rel, rarity, hops=1, max_neighbours=2) == {"S": 0, "d": 1, "b": 1}
    assert "z" in kg.grow_nodes(["S"], rel, rarity, hops=2, max_neighbours=5)


@pytest.fixture(scope="module")
def small_graph(entities, relations, passages, matcher, passage_slice):
    mentions = mining.mine_mentions(passage_slice, matcher, progress=False)
    stats = mining.entity_stats(entities, relations, passages, mining.document_frequency(mentions, len(passage_slice)))
    rare = mining.select_rare(stats, max_df=1, min_relations=3, types=["disease"])
    seeds = sorted(np.random.default_rng(0).choice(rare["entity_id"], 20, replace=False))
    all_rel = pd.concat([relations, kg.cooccurrence_relations(mentions, passage_slice)], ignore_index=True)
    g = kg.build_graph(entities, all_rel, stats, rare["entity_id"], seeds=seeds, hops=1, max_neighbours=10)
    return g, seeds


def test_graph_is_typed_and_grown_from_seeds(small_graph):
    g, seeds = small_graph
    assert all(g.nodes[s]["seed"] and g.nodes[s]["type"] == "disease" for s in seeds)
    assert all(d["hop"] <= 1 and d["type"] and d["name"] for _, d in g.nodes(data=True))
    assert {"has_phenotype"} <= {k for _, _, k in g.edges(keys=True)}
    for u, v, k, d in g.edges(keys=True, data=True):
        assert d["relation"] == k and d["source"]
    s = kg.summary(g)
    assert s["seeds"] == 20 and s["nodes"] == g.number_of_nodes() and sum(s["node_types"].values()) == s["nodes"]


def test_save_load_is_lossless(small_graph, tmp_path):
    g, _ = small_graph
    path = kg.save_graph(g, tmp_path / "kg.json.gz")
    g2 = kg.load_graph(path)
    assert isinstance(g2, nx.MultiDiGraph) and g2.graph == g.graph
    assert sorted(g.nodes(data=True)) == sorted(g2.nodes(data=True))
    assert sorted(g.edges(keys=True, data=True)) == sorted(g2.edges(keys=True, data=True))


def test_the_same_graph_gives_the_same_bytes(small_graph, tmp_path):
    """No file name or time in the gzip header: saved twice, elsewhere and later, the bytes agree."""
    import time

    g, _ = small_graph
    a = kg.save_graph(g, tmp_path / "kg.json.gz").read_bytes()
    time.sleep(1.1)  # gzip headers hold whole seconds
    (tmp_path / "other").mkdir()
    assert kg.save_graph(g, tmp_path / "other" / "kg.json.gz").read_bytes() == a


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="graph file not found"):
        kg.load_graph(tmp_path / "none.json.gz")
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(InputError, match="bad.json.gz: not a medkit graph file"):
        kg.load_graph(bad)
    trunc = tmp_path / "trunc.json.gz"
    trunc.write_bytes(gzip.compress(b'{"nodes": [')[:-4])
    with pytest.raises(InputError, match="trunc.json.gz"):
        kg.load_graph(trunc)


def test_neighbourhood_is_bounded(small_graph):
    g, seeds = small_graph
    centre = max(seeds, key=g.degree)
    sub = kg.neighbourhood(g, centre, max_nodes=8)
    assert centre in sub and sub.number_of_nodes() <= 8
    with pytest.raises(KeyError):
        kg.neighbourhood(g, "NOPE:1")
