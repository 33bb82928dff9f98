# %% [markdown]
# # 05 · LoRA / QLoRA SFT on the trajectories, and the evaluation harness that shows whether it helps
#
# Stage one of the paper's training — the "knowledge-anchored" cold start — is supervised
# fine-tuning on the trajectories of notebook 04. The authors released no training code; here it is
# TRL's `SFTTrainer` with a peft LoRA adapter — on a 4-bit nf4 base (QLoRA, bitsandbytes; `smoke` and
# `gpu`) or on the full-precision base (plain LoRA: `cpu`, where a 135M model needs no 4-bit base and
# LoRA trains 1.5x faster on a CPU without bf16, `results/bench/sft.json`) — loss on the assistant's tokens only (thoughts, tool calls, answers — never the tool
# responses, the system prompt or the question), then the **evaluation harness**: the base model
# and the fine-tuned model run the same agent loop with the same real tools on held-out questions,
# `k` sampled rollouts each, scored by the KG-aware judge.
#
# **Expected results**
#
# | profile | model | trained on | training | held-out evaluation | wall time (2 CPU cores) |
# |---|---|---|---|---|---|
# | `smoke` | SmolLM2-135M, QLoRA | 8 trajectories, 2 steps | seconds | 2 questions × 1 rollout | ~2 min |
# | `cpu` | SmolLM2-135M, LoRA (fp32 base) | the 64 shortest-chain trajectories (curriculum, mean 884.1 tokens), no tool schemas, 1 epoch (64 steps) | 5.93 min (159 tokens/s, loss 0.34) | 12 held-out questions of ≤ 4 hops × 3 rollouts, base vs SFT, plus the learning curve: base 0.000, SFT 0.000 (95% CI 0.000–0.000) — the protocol is learned (malformed turns 100% → 5.5%, 39% of rollouts answer, 19 of 36 stop on a repeated call), none is right on these 12 questions, each of which needs every hop it states | ~10.5 min (10.6 min in the committed run; peak 7.7 GiB) |
# | `cpu_long` | SmolLM2-135M, LoRA (fp32 base) | 384 trajectories of ≤ 3 hops, 2- and 3-hop in turn (`CURRICULUM` mixed, mean 980.0 tokens), 1 epoch (384 steps) | 24.8 min (252.9 tokens/s, loss 0.1118) | all 176 held-out questions × 4 rollouts, base vs SFT, curve after 192 trajectories (1 rollout): base 0.000, SFT **0.237** (95% CI 0.188–0.291; paired +0.237, 66 questions better, 0 worse), ≤ 3 hops 0.305 (136 questions), 2-hop 0.343, 3-hop 0.228, 4-hop 0, 5-hop 0, 6-hop 0.014; after 192 trajectories 0.199 (mid-schedule, at a high learning rate) | 50.2 min in the committed reference run (`results/cpu_long/`, the whole `make pipeline`, uncontended, Intel Xeon with AMX; peak 9.4 GiB, in training; on the AVX512-BF16 EPYC of the previous run: SFT 40.8 min at 153.6 tokens/s, SFT 0.251) |
# | `gpu` | Qwen2.5-7B-Instruct, QLoRA (unsloth if installed) | all accepted, 2 epochs | ~1 h on one 24 GB GPU | all held-out, 3 rollouts | ~2 h |
#
# On `cpu`, expect the base model to score 0 (it never calls a tool: format errors), and the SFT
# model to follow the protocol and call the tools; how often a 135M model then reaches the right
# answer is what the table in section 6 measures. The committed `results/cpu/05_*` are the
# 2026-12-05 reference run (questions that need every hop they state), on a CPU with AVX512-BF16 (one
# without trained at ~90 tokens/s); with 12 questions × 3 rollouts its SFT score, 0.000, cannot be
# told from the previous run's 0.056 (two correct rollouts, on questions a third of which the last
# hops alone answered): `cpu_long` below is the profile that measures learning.
#
# **Measured on the grounded data** (2026-12-03, 2 cores without bf16, not the committed run):
# `-p N_TRAIN 128 -p QUANTIZE none -p EVAL_QUESTIONS 60 -p EVAL_MAX_HOPS 3 -p EVAL_K 2` trained on the
# 128 shortest-chain trajectories (all 2-hop) in 33 min (74.6 tokens/s, peak 7.5 GB, mean loss 0.23)
# and scored, on 60 held-out questions of ≤ 3 hops × 2 rollouts: base 0.00, SFT **0.18** (95% CI
# 0.10–0.28; paired SFT − base +0.18, CI 0.09–0.28, 13 questions better, 0 worse); 2-hop 0.26
# (0.14–0.39, 38 questions), 3-hop 0.05 (22 questions; it saw no 3-hop chain); 80% of rollouts end
# with an answer, 0.8% of turns malformed. The learning curve (snapshots after 32 and 64 trajectories):
# 0.05 (0.01–0.10) and 0.04 (0.01–0.09), then 0.18 — the snapshots are taken mid-schedule, at a high
# learning rate, so part of the last jump is the cosine decay's, not only more data's. Record:
# `results/cpu/experiments/05_sft_learning_curve.json` (and `.png`, per-rollout `.jsonl`).
#
# **Shortest chains only, or 2- and 3-hop chains in turn?** The same budget with `CURRICULUM="mixed"
# TRAIN_MAX_HOPS=3` (64 2-hop + 64 3-hop trajectories, LoRA dropout 0; 16.5 s per trajectory alone
# on the cores) scored 0.13 (0.06–0.21) on the same 60 questions × 4 rollouts: 2-hop 0.18, 3-hop
# 0.05 — the 3-hop chains did not lift the 3-hop questions, and the 2-hop questions lost with half
# the 2-hop data (paired mixed − 2-hop-only −0.05, 95% CI −0.13 to +0.01). At this scale more data on
# the shortest chains is the better use of training time; the record is
# `results/cpu/experiments/05_sft_mixed.json`.

# %% [markdown]
# ## 0 Parameters
#
# `None` means *use the profile's default* (see `medkit/profiles.py`).

# %% tags=["parameters"]
PROFILE = "cpu"               # smoke | cpu | gpu; selects every default below
SEED = None                   # random seed of data order, adapter init and rollouts (default 13)
N_TRAIN = None                # accepted trajectories to train on (cpu 64 to fit 2 cores, None for all)
CURRICULUM = None             # training order: "hops" (default) puts the shortest chains first, "mixed" takes hop counts in turn, "none" shuffles; with N_TRAIN below the data this also picks which chains
TRAIN_MAX_HOPS = None         # train only on chains of at most this many hops (None for all)
QUANTIZE = None               # nf4 for QLoRA (default), or "none" for plain LoRA on the full-precision base (cpu: 1.5x the tokens/s of QLoRA without bf16)
MAX_LENGTH = None             # tokens per trajectory (cpu 3072: every grounded cpu trajectory fits; default 4096); longer ones are truncated and counted
DROP_LONGER = None            # True skips trajectories over MAX_LENGTH instead of truncating them (cpu True)
TOOLS_IN_PROMPT = None        # False drops the tool-schema block from the prompt in training and evaluation (cpu False)
BF16 = None                   # bf16 autocast, True or False; None uses it where the hardware computes bf16
GRADIENT_CHECKPOINTING = None # recompute activations in the backward pass (None on a GPU only; on CPU 0.6-0.7x the peak memory for 0.77-0.9x the speed)
EPOCHS = None                 # passes over the data (default 1)
MAX_STEPS = None              # optimizer steps, overrides EPOCHS (smoke 2)
BATCH_SIZE = None             # trajectories per forward pass (default 1; raise on a GPU)
GRAD_ACCUM = None             # forward passes per optimizer step (cpu 1 for more updates, default 4)
LEARNING_RATE = None          # adapter learning rate (cpu 2e-3, default 5e-4; lower it if the loss spikes)
WARMUP_STEPS = None           # linear warm-up steps (cpu 4, default 2)
LORA_R = None                 # adapter rank (default 16); higher learns more, costs memory
LORA_ALPHA = None             # adapter scaling (default 32)
LORA_DROPOUT = None           # adapter dropout (default 0.05)
SAVE_STEPS = None             # checkpoint interval; a rerun resumes from the last checkpoint
CURVE = None                  # shares of training after which the adapter is saved and evaluated: the learning curve (default [0.25, 0.5]; [] skips it)
CURVE_K = None                # rollouts per question at those points (None uses EVAL_K)
EVAL_QUESTIONS = None         # held-out questions evaluated (cpu 12, None for all)
EVAL_MAX_HOPS = None          # evaluate only questions with at most this many hops (cpu 4, None for all)
EVAL_K = None                 # rollouts per question (default 3); pass@1 is mean and sd over them
EVAL_TEMPERATURE = None       # sampling temperature of the rollouts (cpu 0.3 as small models break format when hot, default 0.7)
EVAL_MAX_CALLS = None         # model calls per rollout (cpu 10, upstream 30)
EVAL_MAX_NEW_TOKENS = None    # tokens per assistant turn (cpu 160, default 192)
EVAL_BATCH = None             # conversations per generate batch (default 16)
ENGINE = None                 # generation engine: auto (default: OpenVINO on CPU where it runs), openvino, ctranslate2 or transformers (the reference)
ENGINE_PRECISION = None       # auto (default: bf16 on OpenVINO where the CPU has it, 1.5x faster, like transformers' bf16), float32 (the exact model) or int8 (CTranslate2 only: approximate)
ENGINE_BATCH = None           # conversations the engine schedules at once (default 64; lower it if memory is short)

# %% [markdown]
# ## 0 Global settings

# %%
import json, time
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from medkit import (adapters as AD, agent as A, evaluation as E, llm, model as M, paths, plots, profiles, records,
                    sft, tools as T, io as mio)
from medkit import notebook_output
notebook_output.configure()  # one-line portable warnings, no library progress bars (medkit/notebook_output.py)

P = profiles.resolve_cell("sft", globals())  # the parameters above on the profile's defaults; a misspelt or mistyped -p is refused
QLORA = str(P["QUANTIZE"]).lower() == "nf4"
DATA = paths.profile_data_dir(PROFILE)
RUN = DATA / "sft"                     # checkpoints, adapter, merged model, model card
RES = paths.results_dir(PROFILE); FIG = RES / "figures"; FIG.mkdir(parents=True, exist_ok=True)
backend_name = M.select_backend(PROFILE)
import torch
ON_CUDA = torch.cuda.is_available()
print("training backend:", backend_name, "| QLoRA" if QLORA else "| LoRA",
      "| bf16 autocast" if M.use_bf16(P["BF16"], on_cuda=ON_CUDA) else "| fp32")
P

# %% [markdown]
# ## 1 The training data
#
# The accepted trajectories of notebook 04, in the order TRL will see them: a seeded shuffle (so a
# subset mixes specialties and variants) and, with `CURRICULUM = "hops"`, sorted by hop count —
# a small model first learns the protocol and single hops on short chains, then composes them on
# long ones; the trainer keeps this order instead of reshuffling. With a budget below the data,
# `"hops"` trains on the shortest chains only; `"mixed"` takes the hop counts in turn (2, 3, 2, 3, …
# with `TRAIN_MAX_HOPS = 3`), so the budget teaches both the single step and its composition. Every row is rendered with TRL's Qwen2.5 *training* chat
# template — identical to the agent's prompt, plus `{% generation %}` markers around assistant
# output.
#
# Two settings make the `cpu` run fit 2 cores (SFT runs at ~95 tokens/s here, see
# `results/bench/sft.json`): `TOOLS_IN_PROMPT = False` leaves the ~880-token tool-schema block out
# of the system prompt (the model learns the tools' names and arguments from the calls themselves;
# the evaluation then runs without the block too, so the model sees the prompt it was trained on),
# and `DROP_LONGER = True` trains only on trajectories that fit `MAX_LENGTH` — truncating one would
# cut off its answer, the part that matters most. Both are reported below, not silent.

# %%
tok = sft.prepare_tokenizer(M.load_tokenizer(PROFILE))
rows, skipped = sft.training_rows(tok, sft.load_trajectories(DATA / "trajectories.jsonl"), P)
lengths = {**sft.length_report(tok, rows, P["MAX_LENGTH"]), "skipped_longer": skipped}
print(f"{len(rows)} trajectories ({skipped} longer than {P['MAX_LENGTH']} tokens skipped), "
      f"{pd.Series([r['specialty'] for r in rows]).nunique()} specialties, hops:",
      dict(sorted(pd.Series([r['hops'] for r in rows]).value_counts().items())))
lengths

# %% [markdown]
# ## 2 What carries loss
#
# Green: tokens the model is trained to produce (thoughts, tool calls, the answer, each turn's end
# token). Grey: masked — the system prompt (with the tool schemas when `TOOLS_IN_PROMPT`), the
# question, and every tool response. The slip of a recovery turn (notebook 04: an assistant message
# with `"weight": 0`) is masked too, so the model learns the corrected call that follows the error,
# never the slip itself; the second cell checks that on a training row that carries one.

# %%
import html
enc = sft.encode(tok, rows[0])
spans, cur, buf = [], None, []
for t, m in zip(enc["input_ids"], enc["assistant_masks"]):
    if m != cur and buf:
        spans.append((cur, tok.decode(buf))); buf = []
    cur = m; buf.append(t)
spans.append((cur, tok.decode(buf)))
def short(text, n=500):
    return text if len(text) <= n else text[:n // 2] + " … " + text[-n // 2:]
display(Markdown("<pre style='white-space:pre-wrap;font-size:11px'>" + "".join(
    f"<span style='background:{'#c8f7c5' if m else '#eeeeee'}'>{html.escape(short(s))}</span>" for m, s in spans)
    + "</pre>"))
trained, masked = sft.label_view(tok, rows[0])
assert all(m["content"] not in trained for m in rows[0]["messages"] if m["role"] == "tool")
print(f"trained tokens {sum(enc['assistant_masks'])} of {len(enc['input_ids'])}")

# %%
with_slip = [r for r in rows if r.get("recovery")]
print(f"{len(with_slip)} of {len(rows)} training trajectories carry a recovery turn")
if with_slip:
    at = with_slip[0]["recovery"]["turn"]
    slip, fix = (A.assistant_text(with_slip[0]["messages"][i]) for i in (at, at + 2))
    trained_slip, _ = sft.label_view(tok, with_slip[0])
    assert slip not in trained_slip and fix in trained_slip, "the slip must be masked and the correction trained"
    print("masked (no loss):", slip, "\ntrained:         ", fix, sep="\n")

# %% [markdown]
# ## 3 Train
#
# With `QUANTIZE = "nf4"` (QLoRA) the base is loaded in 4-bit nf4 (double quantisation, fp32
# compute on CPU); with `QUANTIZE = None` it stays full precision. Either way an r=16 LoRA adapter
# on every linear projection is trained in fp32. Memory before and after, the loss curve,
# and a checkpoint every `SAVE_STEPS` — rerunning the notebook resumes from the last checkpoint.
# The adapter is also saved after each share of training in `CURVE` (`RUN/curve/step-N`): section 5
# evaluates those snapshots too, so the learning curve shows what more data buys.

# %%
# A checkpoint in RUN resumes training only if it belongs to this run: same rows, same training parameters,
# same base model. Another run's checkpoints and snapshots (other data, another LEARNING_RATE...) are removed.
stale = AD.claim_run(RUN, AD.run_key(rows, P, base=M.model_spec(PROFILE).name_or_path, qlora=QLORA))
print("another run's", " and ".join(stale), "removed: training starts afresh" if stale else
      "no checkpoints of another run in " + paths.portable(RUN))
print("memory before loading:", M.memory_report())
model, _ = M.load_model(PROFILE, for_training=True, quantize_4bit=QLORA)
model, peft_config = sft.with_adapter(model, P, backend_name)
trainer = sft.build_trainer(model, tok, rows, P, RUN / "checkpoints", use_cpu=not ON_CUDA,
                            peft_config=peft_config)
TOTAL_STEPS = sft.target_steps(trainer)
CURVE_STEPS = AD.curve_steps(TOTAL_STEPS, P["CURVE"])
trainer.add_callback(AD.snapshot_callback(CURVE_STEPS, RUN / "curve",
                                          AD.adapter_meta(P, base_model=M.model_spec(PROFILE).name_or_path)))
print("learning-curve snapshots after steps", CURVE_STEPS, "of", TOTAL_STEPS)
trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
print(f"trainable parameters: {trainable:,}; memory before training:", M.memory_report())
train_out = sft.train(trainer)  # a finished run in RUN is loaded, not trained again
tokens_seen = (lengths["tokens"] - lengths["truncated_tokens"]) * (  # tokens per epoch, from section 1
    train_out["steps_this_run"] * P["BATCH_SIZE"] * P["GRAD_ACCUM"] / max(len(rows), 1))
train_out["tokens_per_second"] = round(tokens_seen / train_out["seconds"], 1) if train_out["steps_this_run"] else None
print("memory after training:", M.memory_report())
{k: v for k, v in train_out.items() if k != "loss_curve"}

# %%
curve = pd.DataFrame(train_out["loss_curve"])
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(curve["step"], curve["loss"], marker="o", ms=3)
ax.set(xlabel="optimizer step", ylabel="training loss (assistant tokens)", title=f"SFT loss ({PROFILE}, {'QLoRA' if QLORA else 'LoRA'})")
fig.tight_layout(); plots.save(fig, FIG / "05_sft_loss.png")

# %% [markdown]
# ## 4 Save: adapter, merged model and model card

# %%
card = {"name": f"medkit SFT adapter ({PROFILE})", "base_model": M.model_spec(PROFILE).name_or_path,
        "summary": "LoRA adapter trained by medkit notebook 05 with TRL SFT (assistant-only loss) on KG-guided "
                   "tool-use trajectories over the kit's medical knowledge base.",
        "data": f"{len(rows)} accepted trajectories from data/{PROFILE}/trajectories.jsonl (notebook 04)",
        "parameters": {k: v for k, v in P.items() if not k.startswith("EVAL")},
        "metrics": {**{k: v for k, v in train_out.items() if k != "loss_curve"}, "lengths": lengths}}
saved = sft.save_outputs(trainer, tok, RUN, card, profile=PROFILE)
# the trainer's memory goes back to the OS now, not under the evaluation's model and engine (section 5)
del trainer, model
print("memory released after training:", M.release_memory())
saved

# %% [markdown]
# ## 5 Evaluate base vs SFT on held-out questions
#
# The harness (`medkit.evaluation`) runs each model through the agent loop with the real tools on
# held-out questions (notebook 03's test split: no source entity or answer seen in training), `k`
# sampled rollouts each: pass@1 as mean ± sd over rollouts, pass@k, how often a rollout ends with an
# answer, format-error rate and tool calls per question. Both models run from the same base
# weights (the adapter merged in for SFT), generated by the engine `ENGINE` picks: OpenVINO GenAI
# by default on CPU (float32 compute on float16 weights: the same greedy tokens as transformers, several
# times the rollouts per second: `results/bench/engine.json`), or transformers in bf16 where the
# CPU computes it natively (`ENGINE="transformers"`). Each model gets the prompt that suits it best: the base model the
# full tool schemas (it has never seen the tools otherwise), the SFT model the prompt it was trained
# on.

# %%
all_test = records.load_questions(DATA / "questions_test.jsonl")  # validated: file, line and field named on bad input
test_q = E.select_questions(all_test, P["EVAL_QUESTIONS"], P["EVAL_MAX_HOPS"])
print(f"{len(test_q)} of {len(all_test)} held-out questions; hops:",
      dict(sorted(pd.Series([q['hops'] for q in test_q]).value_counts().items())))
index, toolbox = T.open_tools(DATA)
evals = {}
SFT_SCHEMAS = None if P["TOOLS_IN_PROMPT"] else []   # None = every tool's schema in the prompt
for name, adapter, schemas in (("base", None, None), ("sft", saved["adapter"], SFT_SCHEMAS)):
    evals[name] = E.evaluate_adapter(PROFILE, adapter, test_q, toolbox, P, name=name, schemas=schemas)
    mio.write_jsonl(RES / f"05_eval_{name}.jsonl", [{k: v for k, v in r.items() if k != "messages"}
                                                    for r in evals[name]["rows"]])
    print(name, {k: evals[name]["metrics"][k] for k in ("pass@1", "pass@k", "answer_rate", "format_error_rate",
                                                      "tool_calls_per_question", "seconds", "engine")})

# %% [markdown]
# ### The learning curve
#
# The snapshots saved during training (section 3), evaluated on the same held-out questions with
# the same harness (`CURVE_K` rollouts each). With the curriculum, the early snapshots have seen only
# the shortest chains.

# %%
PER_STEP = P["BATCH_SIZE"] * P["GRAD_ACCUM"]      # trajectories per optimizer step
curve_params = {**P, "EVAL_K": P["CURVE_K"] or P["EVAL_K"]}
curve = {}
for step, folder in AD.snapshots(RUN / "curve"):
    if step < TOTAL_STEPS:                          # the last step is the SFT model evaluated above
        curve[step * PER_STEP] = E.evaluate_adapter(PROFILE, folder, test_q, toolbox, curve_params,
                                                    name=f"sft@{step}", schemas=SFT_SCHEMAS)["metrics"]
        print(f"after {step * PER_STEP} trajectories:", curve[step * PER_STEP]["pass@1"])

# %% [markdown]
# ## 6 Results

# %%
table = E.stage_table({name: e["metrics"] for name, e in evals.items()})
fig = plots.stage_panels(table, ("pass@1", "answer rate", "tool calls / rollout"))
plots.save(fig, FIG / "05_base_vs_sft.png")
table

# %%
curve_table = E.stage_table({0: evals["base"]["metrics"], **curve,
                             TOTAL_STEPS * PER_STEP: evals["sft"]["metrics"]})
fig = plots.learning_curve(curve_table, f"learning curve ({PROFILE}; 0 = the base model)")
plots.save(fig, FIG / "05_learning_curve.png")
curve_table[["pass@1", "ci95 low", "ci95 high", "answer rate", "format-error rate", "rollouts"]].rename_axis("trajectories seen")

# %%
stage_metrics = {n: e["metrics"] for n, e in evals.items()}
display(E.by_group(stage_metrics, "hops")); display(E.by_group(stage_metrics, "specialty"))
best = max(evals["sft"]["rows"], key=lambda r: (r["correct"], r["n_tool_calls"] > 0, -r["n_format_errors"]))
print(f"one SFT rollout (correct={best['correct']}, answer {best['answer']!r}):")
display(Markdown(A.render_markdown(best["messages"], 400)))

# %%
summary = {"profile": PROFILE, "qlora": QLORA, "train": {k: v for k, v in train_out.items() if k != "loss_curve"},
           "lengths": lengths, "eval": {n: e["metrics"] for n, e in evals.items()},
           "saved": {k: paths.portable(v) if k in ("adapter", "merged") else v for k, v in saved.items()},
           "questions": len(test_q), "k": P["EVAL_K"],
           "learning_curve": [{"trajectories": int(n), "pass@1": m["pass@1"], "answer_rate": m["answer_rate"],
                               "rollouts": m["rollouts"]} for n, m in sorted(curve.items())]}
mio.write_json(RES / "05_sft.json", summary)
{n: (e["metrics"]["pass@1"], e["metrics"]["answer_rate"]) for n, e in evals.items()}
