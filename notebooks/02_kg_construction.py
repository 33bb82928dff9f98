# %% [markdown]
# # 02 · Knowledge graph construction
#
# The paper builds a knowledge graph around its rare entities and later samples
# subgraphs from it to write multi-hop questions. This notebook grows that graph from
# the rare entities of notebook 01: curated, typed relations from the ontologies
# (disease → phenotype with frequency, gene → disease, disease → inheritance / onset,
# `is_a`, drug → role) plus corpus co-occurrence edges that carry the ids of the
# passages that support them. The result is a typed networkx `MultiDiGraph`, saved in a
# format networkx reloads losslessly, with its statistics, a degree plot and a drawing
# of one rare disease's neighbourhood.
#
# **Expected results**
#
# | profile | seeds · hops | nodes | edges | wall time (2 CPU cores) |
# |---|---|---|---|---|
# | `smoke` | 60 · 1 | ~1–2 k | ~5–15 k | ~20 s |
# | `cpu` | 3,000 · 2 | ~44 k | ~580 k | ~1 min (55 s in the committed run) |
# | `gpu` | 6,000 · 2 | ~50 k | ~650 k | ~2 min |

# %% [markdown]
# ## 0 Parameters
#
# `None` means *use the profile's default* (see `medkit/profiles.py`).

# %% tags=["parameters"]
PROFILE = "cpu"          # smoke | cpu | gpu; selects every default below (smoke is CI-sized, seconds)
SEED = None              # random seed for choosing seed entities (default 13)
N_SEEDS = None           # rare entities the graph grows from (smoke 60, cpu 3000); None in the profile means all
HOPS = None              # growth radius around each seed (smoke 1, cpu 2); 2 reaches the genes and diseases questions chain through
MAX_NEIGHBOURS = None    # neighbours followed per node and relation type, rarest first (default 40); lower it for a smaller graph
MIN_COOCCURRENCE = None  # passages two entities must share before a co-occurrence edge is added (default 1)

# %% [markdown]
# ## 0 Global settings

# %%
import numpy as np
import pandas as pd
from IPython.display import display
from medkit import kb, kg, plots, profiles, paths, io as mio
from medkit import notebook_output
notebook_output.configure()  # one-line portable warnings, no library progress bars (medkit/notebook_output.py)

P = profiles.resolve_cell("kg", globals())  # the parameters above on the profile's defaults; a misspelt or mistyped -p is refused
OUT = paths.profile_data_dir(PROFILE)
FIG = paths.results_dir(PROFILE) / "figures"; FIG.mkdir(parents=True, exist_ok=True)
P

# %% [markdown]
# ## 1 Inputs
#
# The knowledge base and notebook 01's artifacts for this profile.

# %%
entities, relations, passages = kb.load_kb()
mentions = mio.read_parquet(OUT / "mentions.parquet")
stats = mio.read_parquet(OUT / "entity_stats.parquet")
rare = mio.read_parquet(OUT / "rare_entities.parquet")
corpus_ids = mio.read_parquet(OUT / "corpus_ids.parquet")
corpus = passages[passages["passage_id"].isin(set(corpus_ids["passage_id"]))]
print(f"{len(rare):,} rare entities, {len(mentions):,} mentions in {len(corpus):,} passages")

# %% [markdown]
# ## 2 Corpus co-occurrence edges
#
# Two kinds, each with the supporting passage ids as evidence:
# `definition_mentions` (the definition of X names Y) and `co_mentioned` (X and Y are named in the same passage).

# %%
corpus_rel = kg.cooccurrence_relations(mentions, corpus, min_count=P["MIN_COOCCURRENCE"])
display(pd.DataFrame({"edges": corpus_rel["relation"].value_counts()}))
names = entities.set_index("entity_id")["name"]
texts = passages.set_index("passage_id")["text"]
ex = corpus_rel[corpus_rel["relation"] == "definition_mentions"].iloc[0]
print(f"{names[ex.head_id]} --definition_mentions--> {names[ex.tail_id]}\nevidence {ex.evidence}: {texts[ex.evidence.split()[0]][:300]}")

# %% [markdown]
# ## 3 Growing the graph from rare seeds
#
# From each seed, follow at most `MAX_NEIGHBOURS` neighbours per relation type, rarest
# first, for `HOPS` hops; then keep every curated and corpus relation among the nodes reached.

# %%
rng = np.random.default_rng(P["SEED"])
pool = rare["entity_id"].to_numpy()
n_seeds = len(pool) if P["N_SEEDS"] is None else min(P["N_SEEDS"], len(pool))
seeds = sorted(rng.choice(pool, size=n_seeds, replace=False))
all_rel = pd.concat([relations, corpus_rel], ignore_index=True)
G = kg.build_graph(entities, all_rel, stats, rare["entity_id"], seeds=seeds, hops=P["HOPS"],
                   max_neighbours=P["MAX_NEIGHBOURS"])
S = kg.summary(G)
print(f"{S['nodes']:,} nodes, {S['edges']:,} edges, {S['seeds']:,} seeds, {S['components']} connected component(s)")

# %% [markdown]
# ## 4 Statistics

# %%
display(pd.DataFrame({"nodes": S["node_types"]}))
display(pd.DataFrame({"edges": S["edge_types"]}))
print({k: S[k] for k in ("largest_component", "degree_mean", "degree_median", "degree_max")})
fig = plots.degree_distribution(G); plots.save(fig, FIG / "02_degree_distribution.png")


# %% [markdown]
# ## 5 One rare entity's neighbourhood
#
# A rare seed disease with a gene, an inheritance mode and phenotypes: the kind of local
# structure notebook 03 turns into a multi-hop question.

# %%
def score(n):
    kinds = {G.nodes[m]["type"] for m in nx_neighbours(n)}
    return (len(kinds & {"gene", "phenotype", "inheritance", "drug"}), -abs(G.degree(n) - 25))

def nx_neighbours(n):
    return set(G.successors(n)) | set(G.predecessors(n))

candidates = [n for n in seeds if n in G and G.nodes[n]["type"] == "disease"]
centre = max(candidates, key=score)
sub = kg.neighbourhood(G, centre, radius=1, max_nodes=25)
print(centre, G.nodes[centre]["name"], "—", (G.nodes[centre]["definition"] or "")[:250])
fig = plots.draw_neighbourhood(sub, centre); plots.save(fig, FIG / "02_neighbourhood.png")

# %%
rows = [(G.nodes[u]["name"], k, G.nodes[v]["name"], d.get("frequency"), d.get("evidence", "")[:40])
        for u, v, k, d in sub.edges(keys=True, data=True) if centre in (u, v)]
pd.DataFrame(rows, columns=["head", "relation", "tail", "frequency", "evidence"]).head(15)

# %% [markdown]
# ## 6 Save and reload
#
# gzip node-link JSON; reloading gives the same nodes, edges, keys and attributes.

# %%
path = kg.save_graph(G, OUT / "kg.json.gz")
mio.write_parquet(OUT / "corpus_relations.parquet", corpus_rel)
G2 = kg.load_graph(path)
assert sorted(G.nodes(data=True)) == sorted(G2.nodes(data=True))
assert sorted(G.edges(keys=True, data=True)) == sorted(G2.edges(keys=True, data=True))
mio.write_json(OUT / "kg.provenance.json", {**mio.provenance(**P), "inputs": ["data/kb", f"data/{PROFILE}/mentions.parquet",
               f"data/{PROFILE}/rare_entities.parquet"], "summary": S, "n_seeds": len(seeds)})
mio.write_json(paths.results_dir(PROFILE) / "02_kg.json", S)
print(f"saved {path} ({path.stat().st_size/1e6:.1f} MB); reload is lossless")
