"""Shared fixtures: the real knowledge base (built once if missing) and small real slices of it."""

from __future__ import annotations

import os

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def kb_tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from medkit import kb

    kb.build_kb(progress=lambda _: None)
    return kb.load_kb()


@pytest.fixture(scope="session")
def entities(kb_tables):
    return kb_tables[0]


@pytest.fixture(scope="session")
def relations(kb_tables):
    return kb_tables[1]


@pytest.fixture(scope="session")
def passages(kb_tables):
    return kb_tables[2]


@pytest.fixture(scope="session")
def matcher(entities):
    from medkit import ner

    return ner.Matcher(ner.build_surfaces(entities))


@pytest.fixture(scope="session")
def passage_slice(passages) -> pd.DataFrame:
    """1,500 real passages from every source, sampled with a fixed seed."""
    return passages.sample(1500, random_state=7).sort_values("passage_id").reset_index(drop=True)


# ---------------------------------------------------------------- question-building fixtures (real data)


@pytest.fixture(scope="session")
def index(entities, relations):
    from medkit import questions as Q

    return Q.QuestionIndex(entities, relations)


@pytest.fixture(scope="session")
def view(entities, relations):
    """Chain view of a real neighbourhood: diseases around a few rare disorders."""
    import networkx as nx

    from medkit import subgraph as S

    seeds = ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376"]
    keep = set(seeds)
    rel = relations[relations["relation"].isin(["has_phenotype", "associated_with", "is_a"])]
    for _ in range(2):
        hit = rel[rel["head_id"].isin(keep) | rel["tail_id"].isin(keep)]
        keep |= set(hit["head_id"].head(400)) | set(hit["tail_id"].head(400))
    sub = rel[rel["head_id"].isin(keep) & rel["tail_id"].isin(keep)]
    g = nx.MultiDiGraph()
    types = dict(zip(entities["entity_id"], entities["type"]))
    for h, r, t in zip(sub["head_id"], sub["relation"], sub["tail_id"]):
        g.add_node(h, type=types[h])
        g.add_node(t, type=types[t])
        g.add_edge(h, t, key=r)
    return S.chain_view(g)


SEEDS = ["MONDO:0012648", "MONDO:0010526", "MONDO:0007376"]


@pytest.fixture(scope="session")
def records(index, view):
    """Real questions generated from a real KB neighbourhood (a few seeds, several attempts)."""
    from medkit import qgen

    out = []
    for seed in SEEDS:
        for attempt in range(3):
            r = qgen.generate_for_seed(index, view, seed, base_seed=13, attempt=attempt, strategy="mixed",
                                       k_range=(8, 12), max_hops=6, min_hops=2, level=0)
            if r["status"] == "ok":
                out.append(r)
    assert len(out) >= 3
    return out


@pytest.fixture(scope="session")
def synthesised(records, index, toolbox):
    """One KG-guided trajectory per record (real tool calls)."""
    from medkit import synthesis as S

    return [S.synthesise(r, index, toolbox) for r in records]


@pytest.fixture(scope="session")
def judged(records, synthesised, toolbox):
    """The synthesised trajectories as notebook 04 logs them: source, specialty and filter verdict."""
    from medkit import trajectories as TR

    rows = []
    for rec, syn in zip(records, synthesised):
        row = {**syn.to_record(), "source": "kg_guided", "specialty": rec.get("specialty")}
        row["filter"] = TR.filter_trajectory(row, rec, resolve=toolbox.resolve_ids)
        rows.append(row)
    return rows


@pytest.fixture(scope="session")
def toolbox(kb_tables):
    """The agent's tools over the real knowledge base (BM25 index built once if missing)."""
    from medkit import tools as T

    return T.MedicalToolbox.from_kb()


# ---------------------------------------------------------------- the small real model (SmolLM2-135M-Instruct)


@pytest.fixture(scope="session")
def smol_backend():
    from medkit import llm

    return llm.LocalTransformersBackend.from_profile("cpu", batch_size=4, progress=False)


@pytest.fixture(scope="session")
def small_tokenizer():
    from medkit.model import load_tokenizer

    return load_tokenizer("cpu")


# ---------------------------------------------------------------- the small model's tokenizer and tiny random Llamas


@pytest.fixture(scope="session")
def tokenizer():
    """The profile model's tokenizer (SmolLM2's chat template), from the kit's offline model cache."""
    from transformers import AutoTokenizer

    from medkit.model import ensure_small_model

    return AutoTokenizer.from_pretrained(str(ensure_small_model()))


@pytest.fixture(scope="session")
def make_tiny_llama(tokenizer):
    """``make(seed, **config)``: a 2-layer random Llama over the real tokenizer (engines and backends
    compare against it; a different seed is a model with other weights and the same architecture)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 1234, **config):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **config)
        return LlamaForCausalLM(cfg).eval()

    return make


@pytest.fixture(scope="module")
def tiny_model(make_tiny_llama):
    return make_tiny_llama(1234)
