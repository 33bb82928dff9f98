# %% [markdown]
# # 03 · Question generation: longest-path multi-hop questions, obfuscated, unique, calibrated
#
# The paper's core asset is its data: multi-hop questions grounded in a knowledge graph
# around rare entities, hard enough that a strong model without tools fails. For each
# rare seed entity this notebook samples a subgraph with one of the paper's five
# strategies, finds the **longest valid reasoning chain** from the seed (exact search
# inside the sampled subgraph), turns it into constraints — each chain entity is
# *described* by clue facts, never named — and **verifies against the whole knowledge
# base that exactly one entity satisfies them**. A question must also need **every hop it
# states**: when the last hops' clues alone already pin the answer (a solver could skip the
# rest), the chain is cut to those hops. Every question is then pre-tested by two
# solvers that must fail (the profile's model answering from memory, and one BM25 query
# over the corpus); solved questions are regenerated with more obfuscation or a longer
# chain. The result is split into train and held-out test by source entity.
#
# **Expected results**
#
# | profile | seeds | questions (unique, leak-free, calibrated) | held-out | mean hops | wall time (2 CPU cores) |
# |---|---|---|---|---|---|
# | `smoke` | 40 | ~27 | ~4 | ~4.5 | ~1.5 min |
# | `cpu` | 2,000 (half capped at 2-3 hops) | ~1,170 (1,171 in the committed run; 19% cut to the hops they need) | ~176 (136 of ≤ 3 hops) | ~2.9 | ~5 min (4.8 min in the committed run, on a CPU with AVX512-BF16; about twice that on one without; most of it the no-tool model solver, on OpenVINO) |
# | `gpu` | 3,000 (all KG seeds) | ~2,000 | ~300 | ~4.7 | ~5 min with a 7B solver |
#
# Specialties: ≥ 12 in the `cpu` profile. Solvers after calibration: ≤ 10% solved.

# %% [markdown]
# ## 0 Parameters
#
# `None` means *use the profile's default* (see `medkit/profiles.py`).

# %% tags=["parameters"]
PROFILE = "cpu"               # smoke | cpu | gpu; selects every default below
SEED = None                   # base random seed (default 13); a seed entity's randomness depends only on it, so runs resume exactly
N_SEEDS = None                # KG seed entities to build questions from (smoke 40, cpu 2000)
STRATEGY = None               # max_chain, augmented_chain, community_core_path, dual_core_bridge or mixed (default mixed)
MAX_HOPS = None               # longest chain considered (default 6); longer chains give harder, longer questions
MIN_HOPS = None               # shorter chains are dropped (default 2)
SHORT_SHARE = None            # share of seeds whose chain is capped at MIN_HOPS..SHORT_MAX_HOPS hops (cpu 0.5, else 0), short chains for the SFT curriculum and a measurable 2-3-hop evaluation
SHORT_MAX_HOPS = None         # the cap's upper end for those seeds (default 3)
MAX_ATTEMPTS = None           # generation attempts per seed while a solver still answers (default 3)
TEST_SHARE = None             # share of source entities held out for evaluation (default 0.15)
SOLVER_MODEL = None           # no-tool solver: local for the profile model, an endpoint spec dict, or "off" to skip it
SOLVER_MAX_NEW_TOKENS = None  # tokens the no-tool solver may answer with (default 24)
POLISH_ENDPOINT = None        # optional OpenAI-compatible endpoint dict (type, base_url, model) to rewrite questions
ENGINE = None                 # local solver engine: auto (default: OpenVINO on CPU where it runs), openvino, ctranslate2 or transformers (the reference)
ENGINE_PRECISION = None       # auto (default: bf16 on OpenVINO where the CPU has it, 1.5x faster, like transformers' bf16), float32 (the exact model) or int8 (CTranslate2 only: approximate)
ENGINE_BATCH = None           # conversations the engine schedules at once (default 64; lower it if memory is short)
K_MIN = None                  # smallest sampled subgraph, in nodes (default 8): larger gives longer candidate chains, slower sampling
K_MAX = None                  # largest sampled subgraph, in nodes (default 12)
SOLVER_BATCH = None           # questions the no-tool solver answers per batch (default 16; lower it if memory is short)

# %% [markdown]
# ## 0 Global settings

# %%
import json, random, time
import numpy as np
import pandas as pd
from IPython.display import display
from medkit import (kb, kg, ner, plots, profiles, paths, questions as Q, qgen, subgraph as SG,
                    specialty, calibration as C, retriever as R, io as mio)
from medkit import notebook_output
notebook_output.configure()  # one-line portable warnings, no library progress bars (medkit/notebook_output.py)

P = profiles.resolve_cell("questions", globals())  # the parameters above on the profile's defaults; a misspelt or mistyped -p is refused
OUT = paths.profile_data_dir(PROFILE)
FIG = paths.results_dir(PROFILE) / "figures"; FIG.mkdir(parents=True, exist_ok=True)
P

# %% [markdown]
# ## 1 Inputs
#
# The knowledge base, notebook 02's graph and corpus relations (a drug's definition naming a
# disease is the one corpus relation chains may use), and each entity's medical specialty
# (from the HPO organ systems of its phenotypes).

# %%
entities, relations, passages = kb.load_kb()
corpus_rel = mio.read_parquet(OUT / "corpus_relations.parquet")
types = dict(zip(entities["entity_id"], entities["type"]))
G = kg.load_graph(OUT / "kg.json.gz")
rare_ids = [n for n, is_rare in G.nodes(data="rare") if is_rare]  # only these are described as "rare"
index = Q.QuestionIndex(entities, Q.question_relations(entities, relations, corpus_rel), rare=rare_ids)
view = SG.chain_view(G)
specialty_of = specialty.entity_specialties(entities, relations)
kg_seeds = sorted(n for n, d in G.nodes(data=True) if d.get("seed"))
rng = random.Random(P["SEED"])
seeds = kg_seeds if P["N_SEEDS"] is None else sorted(rng.sample(kg_seeds, min(P["N_SEEDS"], len(kg_seeds))))
print(f"chain view: {view.number_of_nodes():,} nodes, {view.number_of_edges():,} edges; {len(seeds):,} seeds")

# %% [markdown]
# ## 2 Subgraph sampling and the longest chain
#
# One seed, every strategy. The longest simple path from the seed is searched exactly inside
# the sampled subgraph (8–12 nodes): a depth-first search that visits each simple path once,
# capped at 200,000 expansions (`exact` says whether the cap was reached).

# %%
demo_seed = next(s for s in seeds if types[s] == "disease" and s in view)
rows = []
for strategy in [*SG.STRATEGIES, "mixed"]:
    r = random.Random(f"demo:{strategy}")
    smp = SG.sample_subgraph(view, demo_seed, strategy, 10, r)
    chain, expansions, exact = SG.longest_path(view.subgraph(smp.nodes), demo_seed, max_len=P["MAX_HOPS"])
    rows.append({"requested": strategy, "used": smp.strategy, "nodes": len(smp.nodes), "chain_hops": len(chain) - 1,
                 "expansions": expansions, "exact": exact})
print(demo_seed, index.name[demo_seed])
pd.DataFrame(rows)

# %% [markdown]
# ## 3 One question, step by step
#
# Constraints (type, link to the previous entity, clue facts), the rendered question, the masked
# reasoning path, the verification over the whole knowledge base, and the leak check.

# %%
rec = qgen.generate_for_seed(index, view, demo_seed, base_seed=P["SEED"], attempt=0, strategy=P["STRATEGY"],
                            k_range=(P["K_MIN"], P["K_MAX"]), max_hops=P["MAX_HOPS"], min_hops=P["MIN_HOPS"], level=0,
                            short_share=P["SHORT_SHARE"], short_max_hops=P["SHORT_MAX_HOPS"], specialty=specialty_of.get(demo_seed))
if rec["status"] != "ok":  # show the first seed that yields a question
    for s in seeds:
        rec = qgen.generate_for_seed(index, view, s, base_seed=P["SEED"], attempt=0, strategy=P["STRATEGY"],
                                    k_range=(P["K_MIN"], P["K_MAX"]), max_hops=P["MAX_HOPS"], min_hops=P["MIN_HOPS"],
                                    level=0, short_share=P["SHORT_SHARE"], short_max_hops=P["SHORT_MAX_HOPS"],
                                    specialty=specialty_of.get(s))
        if rec["status"] == "ok":
            break
print("QUESTION:", rec["question"], "\nANSWER:", rec["answer"], f"({rec['answer_id']})")
print("REASONING PATH:", rec["reasoning_path"])
print("ENTITY MAPPING:", json.dumps(rec["entity_mapping"], indent=1)[:800])
variables = Q.variables_from_record(rec)
print("solutions over the whole KB:", Q.solve(index, variables), "· leaks:", Q.leaks(index, variables, [rec["question"], rec["reasoning_path"]]))
fig = plots.draw_chain(rec); plots.save(fig, FIG / "03_example_chain.png")

# %% [markdown]
# ## 4 The solvers that must fail
#
# `bm25_top1`: the top passage of one BM25 query (bm25s) with the question. `no_tool_model`:
# the profile's model answering from memory. The BM25 index is built once and cached.

# %%
retriever = R.load_or_build(passages, paths.kb_dir() / "bm25")
matcher = ner.Matcher(ner.build_surfaces(entities))
solvers = {"bm25_top1": lambda recs: C.bm25_solver(retriever, matcher, recs)}
if P["SOLVER_MODEL"] is not None:
    from medkit import llm
    spec = ({"type": "local", "profile": PROFILE, "batch_size": P["SOLVER_BATCH"], "engine": P["ENGINE"],
             "precision": P["ENGINE_PRECISION"], "engine_batch": P["ENGINE_BATCH"]} if P["SOLVER_MODEL"] == "local" else P["SOLVER_MODEL"])
    backend = llm.backend_from_config(spec)
    solvers["no_tool_model"] = lambda recs: C.model_solver(backend, recs, max_new_tokens=P["SOLVER_MAX_NEW_TOKENS"])
    print(backend.generate([[{"role": "system", "content": C.SYSTEM_PROMPT}, {"role": "user", "content": rec["question"]}]],
                           max_new_tokens=P["SOLVER_MAX_NEW_TOKENS"])[0].text, "<- no-tool answer to the example")
print([(h.passage_id, h.title, round(h.score, 1)) for h in retriever.search(rec["question"], k=3)], "<- BM25 top 3")

# %% [markdown]
# ## 5 Generate and calibrate every seed
#
# Resumable: every (seed, attempt) and every calibration result is appended to a JSONL file as
# soon as it exists; rerunning this cell after an interruption continues where it stopped.

# %%
t0 = time.perf_counter()
res = qgen.calibrated_questions(index, view, seeds, OUT, solvers=solvers, specialty_of=specialty_of,
                                max_attempts=P["MAX_ATTEMPTS"],
                                settings={"seed": P["SEED"], "strategy": P["STRATEGY"], "k_range": (P["K_MIN"], P["K_MAX"]),
                                          "max_hops": P["MAX_HOPS"], "min_hops": P["MIN_HOPS"], "level": 0,
                                          "short_share": P["SHORT_SHARE"], "short_max_hops": P["SHORT_MAX_HOPS"],
                                          "kb_version": kb.KB_VERSION})  # another knowledge base: questions redone
secs = time.perf_counter() - t0
final = res["final"]
attempts = pd.DataFrame(res["attempts"])
print(f"{len(final):,} calibrated questions from {len(seeds):,} seeds in {secs/60:.1f} min")
display(pd.DataFrame({"first attempt": res["before"], "after calibration": res["after"]}).T)
display(pd.Series(res["dropped"], name="seeds dropped").to_frame())

# %% [markdown]
# ## 6 What the questions look like
#
# `hops` is the number of hops a solver **needs**: every question was checked for a shorter
# tail of its chain whose constraints alone leave the answer (`questions.sufficient_hops`), and
# cut to it. The table counts, per chain length found in the subgraph (rows), the hops the
# question kept (columns); off the diagonal are the questions whose last hops gave the answer
# away. Without the cut, a "6-hop" question could be answered from its last clue.

# %%
qdf = pd.DataFrame(final)
display(pd.crosstab(qdf["chain_hops_before_cut"], qdf["hops"], margins=True)
        .rename_axis(index="chain hops found", columns="hops needed"))
ok = attempts[attempts["status"] == "ok"]
gen_ms = pd.DataFrame(res["timings"])["chain_search_ms"]  # timings live beside the records, not in them
stats = {"questions": len(qdf), "mean_hops": round(float(qdf["hops"].mean()), 2),
         "specialties": int(qdf["specialty"].nunique()),
         "cut_to_needed_hops": round(float((qdf["chain_hops_before_cut"] > qdf["hops"]).mean()), 3),
         "uniqueness_pass_rate": round(float(len(ok)) / max(1, (attempts["status"] == "ok").sum() +
                                                     attempts["reason"].fillna("").str.startswith("not unique").sum()), 3),
         "chain_search_ms_p95": round(float(np.percentile(gen_ms, 95)), 2),
         "solved_before": res["before"], "solved_after": res["after"]}
fig, axes = plots.plt.subplots(2, 2, figsize=(13, 8))
plots.bar_counts(qdf["hops"].value_counts().sort_index(), "Hops per question", axes[0, 0])
plots.bar_counts(qdf["sampling_algorithm"].value_counts(), "Sampling strategy actually used", axes[0, 1])
plots.bar_counts(qdf["specialty"].value_counts(), "Specialty", axes[1, 0])
plots.bar_counts(qdf["answer_type"].value_counts(), "Answer type", axes[1, 1])
fig.tight_layout(); plots.save(fig, FIG / "03_distributions.png")
fig = plots.calibration_bars(res["before"], res["after"]); plots.save(fig, FIG / "03_calibration.png")
stats

# %%
for r in qdf.sample(min(3, len(qdf)), random_state=1).to_dict("records"):
    print(f"[{r['specialty']} · {r['hops']} hops · attempt {r['attempt']}] {r['question']}\n  -> {r['answer']}\n")
    plots.draw_chain(r)

# %% [markdown]
# ## 7 Optional: polish with an LLM
#
# With `POLISH_ENDPOINT` set (any OpenAI-compatible server), questions are rewritten for fluency;
# a rewrite is kept only if every named clue survives and nothing masked leaks.

# %%
polish_stats = None
if P["POLISH_ENDPOINT"]:
    from medkit import llm
    pol = llm.backend_from_config(P["POLISH_ENDPOINT"])
    ok_, msg = pol.check()
    print(msg)
    if ok_:
        final, polish_stats = Q.polish_records(index, final, pol)
polish_stats

# %% [markdown]
# ## 8 Split and save
#
# Train / held-out test by source entity: no test seed or answer is a train seed or answer. Files
# are JSONL that pandas and HF `datasets` read directly.

# %%
train, test = Q.split_by_source(final, P["TEST_SHARE"], P["SEED"])
stamp = {**mio.provenance(**P), "kb": "data/kb", "kg": f"data/{PROFILE}/kg.json.gz"}
for name, recs in (("questions", final), ("questions_train", train), ("questions_test", test)):
    mio.write_jsonl(OUT / f"{name}.jsonl", [{**r, "split": name.split("_")[-1] if "_" in name else None} for r in recs])
mio.write_json(OUT / "questions.provenance.json", {**stamp, "stats": stats, "train": len(train), "test": len(test)})
assert not ({r["source_entity_id"] for r in test} | {r["answer_id"] for r in test}) & \
           ({r["source_entity_id"] for r in train} | {r["answer_id"] for r in train})
import datasets
ds = datasets.load_dataset("json", data_files={"train": str(OUT / "questions_train.jsonl"),
                                               "test": str(OUT / "questions_test.jsonl")})
summary = {**stats, "train": len(train), "test": len(test), "generation_minutes": round(secs / 60, 2)}
mio.write_json(paths.results_dir(PROFILE) / "03_questions.json", summary)
print(ds); summary
