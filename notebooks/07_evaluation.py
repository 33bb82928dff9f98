# %% [markdown]
# # 07 · Evaluation and plots: every stage on the same held-out questions, ablations, reported vs measured
#
# The results notebook a reviewer asks for. It puts the base model, SFT (notebook 05) and SFT+GRPO
# (notebook 06) side by side on the *same* held-out questions with the same harness (k sampled
# rollouts, pass@1 with its 95% bootstrap interval over questions, paired differences between stages,
# per hop count and specialty), runs the ablations the paper's reviewers missed — GRPO from the base
# model without SFT, GRPO with the accuracy term alone, GRPO with the ungated reward — and plots the
# paper's reported MedBrowseComp / GAIA / xBench-DeepSearch numbers beside the kit's own runs,
# labelled *reported* or *measured*. It ends with the kit's benchmark results (`results/bench/`).
#
# **Expected results**
#
# | profile | what runs here | wall time (2 CPU cores) |
# |---|---|---|
# | `smoke` | tables and plots from notebooks 05-06; both ablations with 1 GRPO step each, 2 questions × 1 rollout | ~1 min |
# | `cpu` | tables and plots; ablation *GRPO from base* (2 steps), evaluated on the 12 held-out questions × 3 rollouts; the accuracy-only ablation is off (another ~15 min: set `ABLATIONS`); base 0.000, SFT 0.000, SFT+GRPO 0.000, GRPO from base 0.000 on these 12 questions (each needs every hop it states; 12 × 3 rollouts cannot resolve a pass@1 below ~0.1) | ~4.5 min (4.4 min in the committed run; peak 9.2 GiB) |
# | `cpu_long` | tables and plots of the reference run: all 176 held-out questions × 4 rollouts — base 0.000, SFT 0.237 (95% CI 0.188–0.291), SFT+GRPO 0.271 (0.214–0.334); paired SFT − base +0.237 (+0.188 … +0.291), SFT+GRPO − SFT +0.034 (+0.003 … +0.065); SFT on the 136 questions of ≤ 3 hops 0.305 (0.245–0.368); no ablations (set `ABLATIONS`: each is a GRPO run plus an evaluation, ~40 min at notebook 06's measured cost: 10 steps and an evaluation) | 13 s (`results/cpu_long/`) |
# | `gpu` | both ablations with notebook 06's settings | hours |
#
# The reported numbers come from a 32B model with web search on public benchmarks; the measured ones
# from a 135M model on the kit's own held-out KG questions. They share a plot so the scale of the gap
# is visible, not because they are comparable.

# %% [markdown]
# ## 0 Parameters
#
# `None` means *use the profile's default* (stage `evaluation`; GRPO settings of the ablations are
# notebook 06's, evaluation settings notebook 05's).

# %% tags=["parameters"]
PROFILE = "cpu"               # smoke | cpu | gpu; selects every default below
ABLATIONS = None              # extra GRPO runs: grpo_from_base (no SFT), grpo_accuracy_only (preference and efficiency weights 0); [] for none
ABLATION_STEPS = None         # optimizer steps of each ablation run; None means MAX_STEPS of notebook 06
ENDPOINT_RESULTS = None       # summary JSON files of `python -m medkit eval-endpoint` runs (e.g. MedResearcher-R1-32B on MedBrowseComp with web search), shown as measured bars beside the reported ones; None: none

# %% [markdown]
# ## 0 Global settings

# %%
import json
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display
from medkit import (evaluation as E, grpo as G, paths, plots, profiles, records, reported, questions as Q,
                    tools as T, io as mio)
from medkit import notebook_output
notebook_output.configure()  # one-line portable warnings, no library progress bars (medkit/notebook_output.py)

P = profiles.resolve_cell("evaluation", globals())  # the parameters above on the profile's defaults; a misspelt or mistyped -p is refused
GP = profiles.resolve(PROFILE, "grpo")          # notebook 06's GRPO settings
EVAL = profiles.resolve(PROFILE, "sft")         # notebook 05's evaluation settings
KNOWN = {"grpo_from_base", "grpo_accuracy_only"}
unknown = set(P["ABLATIONS"]) - KNOWN
assert not unknown, f"unknown ablation(s) {sorted(unknown)}; choose from {sorted(KNOWN)}"
DATA = paths.profile_data_dir(PROFILE)
RES = paths.results_dir(PROFILE); FIG = RES / "figures"; FIG.mkdir(parents=True, exist_ok=True)
import torch
ON_CUDA = torch.cuda.is_available()
P


# %% [markdown]
# ## 1 Every stage on the same held-out questions
#
# Rows written by notebooks 05 (base, SFT) and 06 (SFT+GRPO): one per question and rollout, judged by
# the KG-aware judge. Metrics are recomputed here from the rows, not copied.

# %%
def rows_of(name):
    return mio.read_jsonl(RES / name)
runs = {"base": rows_of("05_eval_base.jsonl"), "sft": rows_of("05_eval_sft.jsonl"), "sft+grpo": rows_of("06_eval_grpo.jsonl")}
questions = {name: sorted({r["question_id"] for r in rows}) for name, rows in runs.items()}
assert len({tuple(q) for q in questions.values()}) == 1, "the stages were not evaluated on the same questions"
metrics = {name: E.metrics(rows) for name, rows in runs.items()}
stage_table = E.stage_table(metrics)
print(f"{len(questions['base'])} held-out questions x {metrics['base']['rollouts']} rollouts each")
stage_table

# %% [markdown]
# Is a stage better than the one before it? Both were scored on the same questions, so the right test
# is **paired**: the per-question difference in accuracy, bootstrapped over questions. It removes the
# variation both stages share (some questions are hard for every model) and is much tighter than two
# separate intervals. An interval that excludes 0 is a difference the evaluation can see; `better` /
# `worse` count the questions that moved each way.

# %%
paired = E.compare(runs, {"sft_minus_base": ("base", "sft"), "grpo_minus_sft": ("sft", "sft+grpo")})
E.paired_table(paired)

# %%
fig = plots.stage_panels(stage_table)
plots.save(fig, FIG / "07_stages.png")

# %%
hops, spec = E.by_group(metrics, "hops"), E.by_group(metrics, "specialty")
fig = plots.by_hops_and_specialty(hops, spec)
plots.save(fig, FIG / "07_by_hops_specialty.png")
display(hops)

# %% [markdown]
# ## 2 Ablations
#
# *SFT only* is notebook 05's row above. Each ablation here is a full GRPO run through the same code
# as notebook 06 (`medkit.grpo.run_grpo`) followed by the same held-out evaluation:
#
# * `grpo_from_base` — GRPO straight from the base model with a fresh adapter, no SFT cold start.
#   The base model sees the tool schemas in its prompt (it has never seen the tools otherwise), as in
#   notebook 05's base evaluation.
# * `grpo_accuracy_only` — GRPO from the SFT adapter with `W_PREFERENCE = W_EFFICIENCY = 0`: the
#   reward terms' contribution, switched off.
# * `grpo_ungated` — GRPO from the SFT adapter with the plain sum of the reward terms
#   (`GATE_PROCESS = False`): preference and efficiency pay wrong answers too (see notebook 06).

# %%
index, toolbox = T.open_tools(DATA)
all_test = records.load_questions(DATA / "questions_test.jsonl")  # validated: file, line and field named on bad input
test_q = [q for q in E.select_questions(all_test, EVAL["EVAL_QUESTIONS"], EVAL["EVAL_MAX_HOPS"])]
assert sorted(Q.question_id(q) for q in test_q) == questions["base"], "held-out questions differ from notebook 05's"
pool_ids = mio.read_json(DATA / "grpo" / "pool.json")["question_ids"]  # notebook 06's measured pool: same questions
by_id = {Q.question_id(q): q for q in records.load_questions(DATA / "questions_train.jsonl", records.KitQuestion)}
train_q = [by_id[i] for i in pool_ids]
SFT_SCHEMAS = None if EVAL["TOOLS_IN_PROMPT"] else []
ablation = {}
for name in P["ABLATIONS"]:
    params, from_base = G.ablation_params(name, {**GP, "MAX_STEPS": P["ABLATION_STEPS"] or GP["MAX_STEPS"]})
    start, schemas = DATA / "sft" / "adapter", SFT_SCHEMAS
    if from_base:
        start, schemas = None, None          # fresh adapter on the base; full tool schemas in the prompt
    run = G.run_grpo(PROFILE, params, adapter_dir=start, questions=train_q, toolbox=toolbox,
                     out_dir=DATA / "ablations" / name, schemas=schemas, use_cpu=not ON_CUDA)
    ev = E.evaluate_adapter(PROFILE, run["adapter"], test_q, toolbox, EVAL, name=name, schemas=schemas)
    mio.write_jsonl(RES / f"07_eval_{name}.jsonl", [{k: v for k, v in r.items() if k != "messages"} for r in ev["rows"]])
    hist = G.history_frame(run["history"])
    ablation[name] = {"metrics": ev["metrics"], "train": {k: v for k, v in run["train"].items() if k not in ("loss_curve", "log")},
                      "training_reward_accuracy": float(hist["reward_accuracy"].mean()) if len(hist) else None}
    print(name, "pass@1", ev["metrics"]["pass@1"], "| training accuracy", ablation[name]["training_reward_accuracy"])
all_metrics = {**metrics, **{k: v["metrics"] for k, v in ablation.items()}}
ablation_table = E.stage_table(all_metrics)
if ablation:
    fig, ax = plt.subplots(figsize=(7, 3.4))
    plots.stage_bars(ablation_table, "pass@1", "held-out pass@1: stages and ablations (95% CI)",
                     ci=("ci95 low", "ci95 high"), ax=ax)
    fig.tight_layout(); plots.save(fig, FIG / "07_ablations.png")
ablation_table

# %% [markdown]
# ## 3 Reported vs measured
#
# Grey hatched bars: pass@1 as *reported* by the paper (MedResearcher-R1-32B and its baselines on
# MedBrowseComp, GAIA text and xBench-DeepSearch; arXiv:2508.14880) and by the MedBrowseComp
# maintainers (arXiv:2505.14963) — each row's `source` says where it comes from (`medkit.reported`);
# not re-run: those benchmarks need live web search and hosted models. Green bars:
# *measured* here, on the kit's held-out KG questions (the `measured` benchmark label says which),
# with the sd over rollouts. A public benchmark can be *measured* too, with an endpoint serving a
# capable model and web search: `python -m medkit eval-endpoint` (README, "Public benchmarks") runs
# the agent with the medical and web tools on MedBrowseComp's published files and writes a summary;
# list its JSON in `ENDPOINT_RESULTS` and it appears here as a measured bar with its interval.

# %%
model_name = json.loads((DATA / "sft" / "card.json").read_text())["base_model"].split("/")[-1]
measured = reported.measured_rows(all_metrics, benchmark=f"kit held-out KG questions ({PROFILE})", model=model_name)
endpoint_runs = [reported.endpoint_rows(json.loads((paths.REPO_ROOT / f).read_text())) for f in P["ENDPOINT_RESULTS"] or []]
frame = pd.concat([reported.reported_frame(), measured, *endpoint_runs], ignore_index=True)
fig = plots.reported_vs_measured(frame); plots.save(fig, FIG / "07_reported_vs_measured.png")
frame[["benchmark", "system", "pass@1", "sd", "kind", "source"]].round(2)

# %% [markdown]
# ## 4 The kit's benchmarks
#
# Throughput and latency measured by `make bench` (`bench/*.py` → `results/bench/*.json`), each
# against a named baseline in the same run.

# %%
BENCH = next((d for d in (paths.results_dir() / "bench", paths.REPO_ROOT / "results" / "bench")
              if any(d.glob("*.json"))), paths.REPO_ROOT / "results" / "bench")   # a scratch run reads the committed ones
print("benchmark results from", BENCH)
def load(name):
    p = BENCH / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None
panels = [(n, plots.benchmark_bars(n, load(n))) for n in ("engine", "sft", "grpo", "generation", "retriever") if load(n)]
fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4), squeeze=False)
for ax, (name, (bars, ylabel)) in zip(axes[0], panels):
    ax.bar(list(bars), list(bars.values()), color="#4477aa")
    for x, v in enumerate(bars.values()):
        ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set(ylabel=ylabel, title=f"results/bench/{name}.json"); ax.tick_params(axis="x", labelrotation=25, labelsize=7)
    if name == "retriever":
        ax.set_yscale("log")
fig.tight_layout(); plots.save(fig, FIG / "07_benchmarks.png")
{n: bars for n, (bars, _) in panels}

# %% [markdown]
# ## 5 Summary
#
# Everything above in `results/<profile>/07_evaluation.json`: every stage's and ablation's metrics,
# the ablation runs' training figures, and the reported numbers with their sources.

# %%
grpo_train = mio.read_json(RES / "06_grpo.json")["train"]   # notebook 06's run: what the SFT+GRPO row cost
summary = {"profile": PROFILE, "questions": len(questions["base"]), "k": metrics["base"]["rollouts"],
           "stages": all_metrics, "paired": paired, "ablations": ablation,
           "sft_pass@1_max3_hops": all_metrics["sft"]["pass@1_max3_hops"],
           "grpo": {k: grpo_train.get(k) for k in ("steps", "rollouts", "seconds_per_step", "rollouts_per_second")},
           "reported": reported.reported_frame().to_dict("records")}
mio.write_json(RES / "07_evaluation.json", summary)
ablation_table[["pass@1", "ci95 low", "ci95 high", "pass@k", "answer rate"]]
