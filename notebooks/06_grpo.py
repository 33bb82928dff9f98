# %% [markdown]
# # 06 · GRPO with the composite reward: online RL against the real tools
#
# Stage two of the paper's training. Starting from notebook 05's SFT adapter, the agent answers
# training questions with the kit's real tools, several rollouts per question, and TRL's
# `GRPOTrainer` pushes the policy toward the rollouts that score above their group's mean under the
# paper's **composite reward** — task accuracy + expert preference − efficiency penalty — each term a
# separate function, logged on its own. Rollouts are generated *token by token* by the policy being
# trained (`medkit.grpo.AgentRollouts`, TRL's `rollout_func`): the ids the loss sees are the ids the
# policy sampled, and every tool-response token is masked out of the loss (`env_mask`).
#
# **Expected results**
#
# | profile | policy | GRPO run | wall time (2 CPU cores) |
# |---|---|---|---|
# | `smoke` | SmolLM2-135M + smoke SFT adapter (QLoRA) | 2 steps × 1 question × 2 rollouts, 48-token turns | ~1 min |
# | `cpu` | SmolLM2-135M + the cpu SFT adapter (LoRA, fp32) | probe 32 training questions × 4 → 3 learnable; 6 steps × 1 question × 4 rollouts in passes of 1 (≤ 3-hop training questions, ≤ 1,024 completion tokens), 73.5 s/step; then the held-out evaluation of notebook 05: 0.000 → 0.000 → 0.000, training reward +0.10 — 11 of 24 training rollouts right (3 of them at step 6), every group mixed (2 redraws), KL ≤ 0.035, held-out answer rate 0.39 → 0.42: verdict "none"; 12 questions cannot show a change | ~13 min (12.9 min in the committed run; peak 8.4 GiB) |
# | `cpu_long` | SmolLM2-135M + the cpu_long SFT adapter (LoRA, fp32; 384 trajectories of 2–3 hops) | probe 64 questions × 4 at temperature 0.3, then 10 steps × 1 question × 8 rollouts in passes of 1, `LEARNING_RATE` 3e-5, up to 3 redraws per group; held-out checkpoint after step 5 (1 rollout); all 176 held-out questions × 4 | 45.8 min in the committed reference run (`results/cpu_long/`, the whole `make pipeline`, uncontended, Intel Xeon with AMX; peak 9.8 GiB): probe 6 min → 20 learnable questions (10 of them 3-hop); 125.0 s/step; 2 redraws, 0 of 10 groups still all right or all wrong; KL to the SFT adapter ≤ 0.0073 per token; training accuracy 0.275 → 0.625 (steps 1–5, 6–10; each step draws another question); held-out pass@1 0.271 (95% CI 0.214–0.334) vs SFT 0.237, paired 0.034 (0.003 … 0.065), answer rate 0.881 → 0.936: verdict "none" — no hacking, and a held-out gain whose interval is above 0, short of +0.05 (2-hop 0.343 → 0.407, 3-hop 0.228 → 0.239; earlier runs: 20 steps from the same SFT settings on an EPYC +0.014; from the 256-row adapter, 24 steps +0.009; from the 128-row adapter, 8 steps at 3e-4 without redraws made it worse, verdict "hacking"; 24 steps at 1e-4 and 30 at 3e-5 with redraws: +0.013 and +0.010) |
# | `gpu` | Qwen2.5-7B-Instruct + its SFT adapter (4-bit, unsloth if installed) | 250 steps × 4 questions × 8 rollouts | several hours on one 24 GB GPU |
#
# On `cpu` expect a noisy, short run: 24 rollouts in all is far too few for RL to move a 135M model
# much. In `cpu_long`'s first run (8 steps at 3e-4) only 2 of 8 groups drew an accuracy signal and the
# policy it left answered more and less well; `bench/grpo_group_diversity.py` showed the updates, not the
# sampling, made the groups alike. With redraws at 1e-4, 11 of 24 groups still came back all right or all
# wrong; at 3e-5 29 of 30 groups differed in accuracy with the KL below 0.01, but 30 groups on 22 two-hop
# questions moved held-out pass@1 by only +0.010. The committed run starts from the 256-row adapter: all 24
# groups differ, training accuracy rises 0.44 → 0.55, held-out pass@1 moves +0.009, within noise. What the curves show is the
# mechanics — per-term rewards, tool-call and tool-failure
# frequency, KL to the SFT adapter — and the last table says honestly whether held-out pass@1 moved.

# %% [markdown]
# ## 0 Parameters
#
# `None` means *use the profile's default* (see `medkit/profiles.py`, stage `grpo`). The held-out
# evaluation uses notebook 05's `EVAL_*` settings of the same profile, so SFT and SFT+GRPO are scored
# on the same questions with the same harness.

# %% tags=["parameters"]
PROFILE = "cpu"               # smoke | cpu | gpu; selects every default below
SEED = None                   # seed of question order, rollouts and the trainer (default 13)
START = None                  # sft: continue the adapter of notebook 05, the paper recipe; base: a fresh adapter on the base model
N_QUESTIONS = None            # training questions in the GRPO pool (cpu 64)
POOL_CANDIDATES = None        # training questions probed with the starting policy to build the pool (cpu 32, cpu_long 64, default 64)
POOL_PROBE_K = None           # probe rollouts per candidate (4); the pool keeps questions answered sometimes; 0 skips the probe
MAX_HOPS = None               # only training questions with at most this many hops (cpu 3: the SFT model answers some of them)
QUESTIONS_PER_STEP = None     # distinct questions per optimizer step (cpu 1, default 2)
NUM_GENERATIONS = None        # rollouts per question, the GRPO group (cpu 4; at least 2)
REDRAWS = None                # dynamic sampling: a group all right or all wrong is rolled out again on another pool question, at most this often (cpu 2, cpu_long 3; 0 off: each redraw costs a group's rollouts)
MICRO_BATCH = None            # rollouts per forward/backward pass (None: the whole group); lower it if memory is short, the step is the same
MAX_STEPS = None              # optimizer steps (cpu 6, each a few minutes on 2 cores; default 8)
LEARNING_RATE = None          # adapter learning rate (cpu 3e-4 for so few steps, default 1e-4; lower it if the KL explodes)
BETA = None                   # KL coefficient against the starting adapter (0.04; 0 skips the reference pass and the KL)
LOSS_TYPE = None              # TRL loss: dapo (default) | grpo | dr_grpo | bnpo
SCALE_REWARDS = None          # advantage scaling: group (default) | batch | none
TEMPERATURE = None            # sampling temperature of the rollouts (cpu_long 0.3, as notebook 05 evaluates; default 0.7; small models break the format when hotter)
MAX_COMPLETION_LENGTH = None  # completion tokens per rollout incl. tool responses (cpu 1024, default 1536); longer rollouts stop and are kept
TURN_MAX_NEW_TOKENS = None    # tokens per assistant turn (cpu 160)
MAX_CALLS = None              # model calls per rollout (cpu 6, cpu_long 10 as notebook 05 evaluates; default 8)
W_ACCURACY = None             # reward weight of task accuracy (1.0)
W_PREFERENCE = None           # reward weight of expert preference: well-formed, grounded, verified (0.3)
W_EFFICIENCY = None           # weight of the efficiency penalty, subtracted (0.2)
CALL_BUDGET = None            # tool calls above this are penalised (8)
TOKEN_BUDGET = None           # rollout tokens above this are penalised (3072)
GATE_PROCESS = None           # True (default): preference (grounded, verified) and efficiency pay only alongside a right answer; False: the plain sum (rewarded early wrong answers)
BF16 = None                   # bf16 autocast, True or False; None uses it where the hardware computes bf16
GRADIENT_CHECKPOINTING = None # recompute activations in the backward pass: less memory, slower steps (None on a GPU only)
QUANTIZE = None               # base precision of a fresh adapter when START is base: nf4 or none; an SFT adapter keeps its own
LORA_R = None                 # rank of a fresh adapter, when START is base
LORA_ALPHA = None             # scaling of a fresh adapter
LORA_DROPOUT = None           # dropout of a fresh adapter
SAVE_STEPS = None             # checkpoint interval; a rerun resumes from the last checkpoint (a finished run is loaded)
CURVE = None                  # shares of MAX_STEPS after which the adapter is scored on the held-out questions (default [0.5]; [] skips)
CURVE_K = None                # rollouts per held-out question at those checkpoints (None: notebook 05's EVAL_K)
ENGINE = None                 # rollout engine: auto (default: an OpenVINO copy of the policy on CPU), openvino, ctranslate2 or transformers (the policy itself)
ENGINE_PRECISION = None       # auto (default: bf16 on OpenVINO where the CPU has it, 1.5x faster), float32 (closest to the policy's own tokens) or int8 (CTranslate2 only: off-policy samples)
ENGINE_BATCH = None           # conversations the engine schedules at once (default 64; lower it if memory is short)
ENGINE_SYNC_STEPS = None      # export the policy to the engine every N optimizer steps (default 1: always on-policy; higher saves export time)

# %% [markdown]
# ## 0 Global settings

# %%
import json, time
import pandas as pd
from IPython.display import Markdown, display
from medkit import (agent as A, evaluation as E, grpo as G, model as M, paths, plots, profiles, questions as Q,
                    records, rewards as RW, tools as T, io as mio)
from medkit import notebook_output
notebook_output.configure()  # one-line portable warnings, no library progress bars (medkit/notebook_output.py)

P = profiles.resolve_cell("grpo", globals())  # the parameters above on the profile's defaults; a misspelt or mistyped -p is refused
EVAL = profiles.resolve(PROFILE, "sft")          # notebook 05's evaluation settings, unchanged
DATA = paths.profile_data_dir(PROFILE)
SFT_ADAPTER = DATA / "sft" / "adapter"
RUN = DATA / "grpo"                              # checkpoints, adapter, training rollouts
RES = paths.results_dir(PROFILE); FIG = RES / "figures"; FIG.mkdir(parents=True, exist_ok=True)
import torch
ON_CUDA = torch.cuda.is_available()
SCHEMAS = None if EVAL["TOOLS_IN_PROMPT"] else []   # the prompt the SFT model was trained on
print("training backend:", M.select_backend(PROFILE), "| start:", P["START"],
      "| bf16 autocast" if M.use_bf16(P["BF16"], on_cuda=ON_CUDA) else "| fp32")
P

# %% [markdown]
# ## 1 The composite reward, term by term
#
# Each term is a function of one finished rollout (`medkit.rewards`), and each is its own TRL reward
# function, so TRL logs `rewards/accuracy`, `rewards/preference` and `rewards/efficiency` separately
# and sums them with the weights `W_ACCURACY`, `W_PREFERENCE`, `−W_EFFICIENCY`:
#
# | term | what it checks | range |
# |---|---|---|
# | accuracy | the final answer is the question's answer (the evaluation harness's KG-aware judge) | 0 / 1 |
# | preference | mean of *well-formed* (share of turns that parse), *grounded* (the answer appeared in a tool response before it was given), *verified* (a further tool call after the first observation that showed the answer: search → verify → synthesise) | 0 … 1 |
# | efficiency | penalty for tool calls above `CALL_BUDGET` and tokens above `TOKEN_BUDGET`, each capped | 0 … 1 |
#
# **Gating** (`GATE_PROCESS = True`, the default). Summed as they are, the process terms pay a wrong
# answer: a rollout that answers early with any entity a tool showed earns *grounded*, and by
# stopping early it also avoids the efficiency penalty. In the first cpu reference run nothing was
# ever right, so this was the only signal GRPO had — the answer rate rose while accuracy fell (reward
# hacking). Gated, *grounded* and *verified* count only when the answer is right and the efficiency
# penalty applies only to right answers (it ranks them by cost); a wrong rollout earns at most
# `W_PREFERENCE / 3` for well-formed turns, the same whether it answers early, late or never. The
# table shows the paid terms, the raw preference parts and the raw penalty (`efficiency_raw`).
#
# Below, the terms on three real cases: a KG-guided trajectory of notebook 04 (the behaviour the
# reward is meant to favour), the same trajectory answering right after its first observation (no
# verification), and one answering with a guess that no tool ever showed.

# %%
index, toolbox = T.open_tools(DATA)
good = mio.read_jsonl(DATA / "trajectories.jsonl")[0]   # an accepted trajectory, as SFT trained on it
train_all = records.load_questions(DATA / "questions_train.jsonl", records.KitQuestion)  # validated on reading
rec = next(q for q in train_all if Q.question_id(q) == good["question_id"])
msgs, n_tokens = good["messages"], good.get("n_tokens") or 0
first_obs = next(i for i, m in enumerate(msgs) if m["role"] == "tool")
guess = {"role": "assistant", "content": "<think>I guess.</think>\n<answer>Marfan syndrome</answer>"}
cases = {"KG-guided trajectory (04)": RW.as_rollout(msgs, n_tokens=n_tokens),
         "answers after the first observation": RW.as_rollout(msgs[:first_obs + 1] + [msgs[-1]], n_tokens=n_tokens),
         "a guess no tool showed": RW.as_rollout(msgs[:first_obs + 1] + [guess], n_tokens=n_tokens)}
RW.breakdown(cases, rec, P, resolve=toolbox.resolve_ids)

# %% [markdown]
# ## 2 Training questions and the policy
#
# GRPO learns only from groups whose rollouts score differently: if all `NUM_GENERATIONS` rollouts of
# a question are wrong (or all right), every advantage of the accuracy term is zero and the step
# learns nothing about being right. So the pool is *measured*: `POOL_CANDIDATES` training questions
# (never the held-out split) of at most `MAX_HOPS` hops are probed with the starting policy,
# `POOL_PROBE_K` rollouts each sampled like GRPO's, and the pool keeps the questions it answers
# sometimes (success rate strictly between 0 and 1). If none qualifies the candidates are kept, and
# the run is marked: its accuracy term can then give no signal. The policy is the base model with notebook 05's adapter loaded *trainable* — on
# the same 4-bit nf4 weights it was trained on — and, with `BETA > 0`, TRL keeps a frozen copy of
# that adapter as the reference for the KL term.

# %%
start = SFT_ADAPTER if P["START"] == "sft" else None
candidates = G.select_training_questions(train_all, P["POOL_CANDIDATES"],
                                         max_hops=P["MAX_HOPS"], seed=P["SEED"])
pool = {"candidates": len(candidates), "probe_k": P["POOL_PROBE_K"], "learnable": None, "rates": {}}
train_q = candidates[:P["N_QUESTIONS"]]
if P["POOL_PROBE_K"]:
    probe = E.evaluate_adapter(PROFILE, start, candidates, toolbox, G.probe_settings(EVAL, P), name="probe",
                               schemas=SCHEMAS)
    learnable, pool["rates"] = G.learnable_questions(candidates, probe["rows"], n=P["N_QUESTIONS"])
    pool["learnable"] = len(learnable)
    pool["probe_pass@1"] = probe["metrics"]["pass@1"]  # the starting policy on the candidates (vs held-out in 05)
    rates = pd.Series(pool["rates"])
    print(f"probe: {len(candidates)} candidates x {P['POOL_PROBE_K']} rollouts in {probe['metrics']['seconds']} s; "
          f"never right {int((rates == 0).sum())}, always right {int((rates == 1).sum())}, sometimes {len(learnable)}")
    if learnable:
        train_q = learnable
    else:
        print("no candidate is answered sometimes: the pool keeps the candidates, and the accuracy term will give "
              "no learning signal (every group's rollouts score the same)")
mio.write_json(RUN / "pool.json", {**mio.provenance(**P), **pool, "question_ids": [Q.question_id(q) for q in train_q]})
print(f"{len(train_q)} training questions; hops:", dict(sorted(pd.Series([q['hops'] for q in train_q]).value_counts().items())),
      f"| {P['MAX_STEPS']} steps x {P['QUESTIONS_PER_STEP']} questions x {P['NUM_GENERATIONS']} rollouts "
      f"= {P['MAX_STEPS'] * P['QUESTIONS_PER_STEP'] * P['NUM_GENERATIONS']} rollouts")
print("policy starts from:", start or "the base model with a fresh adapter")
pd.DataFrame([{k: q[k] for k in ("question", "answer", "hops", "specialty")} for q in train_q[:5]])

# %% [markdown]
# ## 3 Train
#
# Each optimizer step: `QUESTIONS_PER_STEP` questions × `NUM_GENERATIONS` rollouts generated by the
# current policy (batched, multi-turn, real tool calls), scored term by term, group-normalised
# advantages, one update on the policy's own tokens. A reward term that raises on a rollout becomes a
# missing value for it (counted in `reward_errors/*`), a rollout that reaches
# `MAX_COMPLETION_LENGTH` stops and is kept, and a NaN loss stops the run with a clear message.
# Checkpoints every `SAVE_STEPS`: rerunning resumes, and a finished run is loaded, not retrained.
#
# **Dynamic sampling** (`REDRAWS`, DAPO's recipe). The probe measured each question under the
# *starting* policy, but the policy moves with every step, and a group that comes back all right or
# all wrong has zero advantage: the step would learn only from the KL term while the optimizer's
# momentum keeps moving the weights. So such a group is rolled out again on another pool question
# (a seeded walk through the pool, never a question already in the step), at most `REDRAWS` times;
# the counts are printed below (`redrawn`: groups replaced, `uniform_kept`: groups still uniform
# after every redraw). Each redraw costs one group's rollouts.
#
# The rollouts are generated by the engine `ENGINE` picks. On CPU that is an OpenVINO GenAI copy of
# the policy (continuous batching; the KV cache of earlier turns is reused, so a turn computes only
# what a tool added): after every `ENGINE_SYNC_STEPS` optimizer steps the frozen base plus the
# current LoRA deltas are exported and checked against the exported weights (the `engine_syncs` below
# time each export); the token ids it samples are what TRL trains on, exactly as when the policy
# generates itself.

# %%
print("memory before:", M.memory_report())
t0 = time.time()
run = G.run_grpo(PROFILE, P, adapter_dir=start, questions=train_q, toolbox=toolbox, out_dir=RUN,
                 schemas=SCHEMAS, use_cpu=not ON_CUDA)
train_out, hist = run["train"], G.history_frame(run["history"], RW.RewardWeights.from_params(P))
print("memory after:", M.memory_report())
print(f"{train_out['steps']} steps ({train_out['steps_this_run']} this run) in {train_out['seconds']} s; "
      f"{train_out['seconds_per_step']} s/step; {len(hist)} training rollouts; rollouts by {train_out['engine']}, "
      f"{train_out['engine_sync_seconds']} s in {len(train_out['engine_syncs'])} policy exports")
print("dynamic sampling:", train_out["dynamic_sampling"])
mem = train_out["memory_by_step"]  # RSS as each step's rollouts started: does memory grow with the steps?
if mem:
    print(f"RSS at the first / last step's rollouts: {mem[0]['rss_mb']:.0f} / {mem[-1]['rss_mb']:.0f} MB; "
          f"peak so far at the last: {mem[-1]['peak_rss_mb']:.0f} MB")
{k: v for k, v in train_out.items() if k not in ("loss_curve", "log", "memory_by_step")}

# %% [markdown]
# ## 4 Training curves
#
# Per step: the mean of each reward term over that step's rollouts (TRL's `rewards/*` logs), tool
# calls per rollout and the share of tool calls that returned an error, the KL to the starting
# adapter and the loss.

# %%
log = pd.DataFrame(train_out["log"])
plots.save(plots.grpo_curves(log), FIG / "06_grpo_curves.png")
log[[c for c in ("step", "reward", "rewards/accuracy/mean", "rewards/preference/mean", "rewards/efficiency/mean",
                 "tools/call_frequency", "tools/failure_frequency", "kl", "loss") if c in log]].round(4)

# %% [markdown]
# ## 5 Before and after: rollouts of the first and the last step
#
# Every training rollout is kept with its reward terms (`data/<profile>/grpo/rollouts.jsonl`). Below,
# stop reasons and mean terms at the first and the last step, then the best-scoring rollout of each.

# %%
if len(hist):
    first, last = hist["step"].min(), hist["step"].max()
    display(hist.groupby("step")[["reward_accuracy", "reward_preference", "reward_efficiency", "reward_total", "n_tool_calls",
                                  "n_tool_errors", "n_policy_tokens"]].mean().round(3))
    display(pd.crosstab(hist["step"], hist["stop_reason"]))
    for label, step in (("first step", first), ("last step", last)):
        i = hist[hist["step"] == step]["reward_total"].idxmax()
        h = run["history"][i]
        display(Markdown(f"**{label} ({step}), best rollout**: total reward {hist.loc[i, 'reward_total']:.3f}, "
                         f"answer {h['prediction']!r} (expected {hist.loc[i, 'answer']!r}), stop: {h['stop_reason']}"))
        display(Markdown(A.render_markdown(h["messages"], 300)))

# %% [markdown]
# ## 6 Held-out evaluation: SFT vs SFT+GRPO
#
# The GRPO adapter merged into the same nf4 base, through the same harness, questions, `k`,
# temperature and seeds as notebook 05 (its results are read back from `results/<profile>/05_sft.json`).

# %%
all_test = records.load_questions(DATA / "questions_test.jsonl")  # validated: file, line and field named on bad input
test_q = E.select_questions(all_test, EVAL["EVAL_QUESTIONS"], EVAL["EVAL_MAX_HOPS"])
grpo_eval = E.evaluate_adapter(PROFILE, run["adapter"], test_q, toolbox, EVAL, name="grpo", schemas=SCHEMAS)
mio.write_jsonl(RES / "06_eval_grpo.jsonl", [{k: v for k, v in r.items() if k != "messages"} for r in grpo_eval["rows"]])
before = json.loads((RES / "05_sft.json").read_text())["eval"]
stages = {"base": before["base"], "sft": before["sft"], "sft+grpo": grpo_eval["metrics"]}
table = E.stage_table(stages)
fig = plots.stage_panels(table, ("pass@1", "answer rate", "tool calls / rollout"))
plots.save(fig, FIG / "06_sft_vs_grpo.png")
delta = 100 * (stages["sft+grpo"]["pass@1"]["mean"] - stages["sft"]["pass@1"]["mean"])
print(f"SFT+GRPO - SFT: {delta:+.1f} points of held-out pass@1 ({len(test_q)} questions x {EVAL['EVAL_K']} rollouts)")
table

# %% [markdown]
# ## 7 Did the reward rise while held-out accuracy fell? (reward hacking)
#
# The first cpu run's failure mode, checked on every run: the training reward can rise for reasons
# that have nothing to do with being right (answering early, a format the reward likes), and the
# only honest test is accuracy on questions GRPO never trained on. The adapters kept after each share
# of training in `CURVE` (`RUN/curve/step-N`) are scored on the same held-out questions (`CURVE_K`
# rollouts each), next to the starting policy (step 0: notebook 05's rows of the same questions) and
# the final adapter. `medkit.grpo.reward_hacking_check` compares the change of the training reward
# (later half of the steps − earlier half) with the paired held-out change (final − start, bootstrap
# over questions): **hacking** if the reward rose while held-out pass@1 fell with its interval below
# 0, **suspect** if it fell within the noise, **none** otherwise.

# %%
curve_params = {**EVAL, "EVAL_K": P["CURVE_K"] or EVAL["EVAL_K"]}
start_rows = mio.read_jsonl(RES / ("05_eval_sft.jsonl" if P["START"] == "sft" else "05_eval_base.jsonl"))
heldout = [(0, start_rows)]
for step, folder in run["curve"]:
    ev = E.evaluate_adapter(PROFILE, folder, test_q, toolbox, curve_params, name=f"grpo@{step}", schemas=SCHEMAS)
    heldout.append((step, ev["rows"]))
    print(f"after step {step}: held-out pass@1", ev["metrics"]["pass@1"])
heldout.append((train_out["steps"], grpo_eval["rows"]))
check = G.reward_hacking_check(train_out["log"], heldout)
checkpoints = pd.DataFrame(check["checkpoints"])
fig = plots.reward_vs_heldout(log, checkpoints, f"training reward vs held-out pass@1 ({PROFILE})")
plots.save(fig, FIG / "06_reward_vs_heldout.png")
change = check["heldout_change"]
print(f"training reward change (later half - earlier half of the steps): {check['reward_change']}; "
      f"held-out pass@1 final - start: {change['mean']:+.3f} (95% CI {change['ci95']}, "
      f"{change['better']} questions better, {change['worse']} worse) -> verdict: {check['verdict']}")
checkpoints.set_index("step")

# %%
summary = {"profile": PROFILE, "parameters": P, "start": paths.portable(start) or "base", "pool": {k: v for k, v in pool.items() if k != "rates"},
           "train": {k: v for k, v in train_out.items() if k != "loss_curve"},
           "training_rollouts": len(hist), "stop_reasons": G.stop_reason_counts(run["history"]),
           "eval": {"grpo": grpo_eval["metrics"]}, "delta_pass@1_points": round(delta, 2),
           "paired_minus_start": check["heldout_change"], "reward_hacking": check,
           "questions": len(test_q), "k": EVAL["EVAL_K"], "adapter": paths.portable(run["adapter"])}
mio.write_json(RES / "06_grpo.json", summary)
{k: summary[k] for k in ("training_rollouts", "stop_reasons", "delta_pass@1_points", "paired_minus_start")}
