# %% [markdown]
# # 04 · Tools, the ReAct agent and knowledge-informed trajectories (with Masked Trajectory Guidance)
#
# The model learns from trajectories: *think → call a tool → read the result → … → answer*. This
# notebook builds them offline over the kit's own medical data. It introduces the agent's tools (a
# private BM25 medical retriever, entity read, relation lookups and a Bayesian clinical reasoning
# engine over HPO annotation frequencies), the upstream text protocol (`<think>`, `<tool_call>`,
# `<tool_response>`, `<answer>`) which is exactly what the Qwen2.5 chat template renders for TRL, and
# a defensive parser. Then, for every training question of notebook 03, it **walks the question's
# knowledge-graph chain with real tool calls** — a hop counts only if the entity shows up in the
# observation — and writes terse thoughts: what is needed next, and the evidence that decides each
# pick (the call itself shows the action). A teacher model can also roll out
# freely with the **masked reasoning path as guidance** (MTG): the guidance is in its prompt, never in
# the saved sample. Every trajectory goes through the paper's filters; the accepted ones are saved
# as chat messages with tool calls, ready for TRL SFT (notebook 05).
#
# **Expected results**
#
# | profile | questions | KG-guided trajectories | accepted | mean tool calls | free rollouts (teacher) | wall time (2 CPU cores) |
# |---|---|---|---|---|---|---|
# | `smoke` | ~24 train | 1 per question | ~100% | ~6 | 2, small model | ~1 min |
# | `cpu` | 914 train | 2 per question (1,828) | 1,828 (100%) over 914 questions, 18 specialties | ~4.4 (paper: 4.2) | 8 with SmolLM2-135M: 0 accepted | ~2 min (1.7 min in the committed run) |
# | `gpu` | all train | 2 per question | as `cpu` | as `cpu` | 300 with the 7B teacher | ~20 min |
#
# The `cpu` row is the committed run (synthesis v9, questions of generator v7 — every stated hop needed — with half
# the seeds' chains capped at 2-3 hops, knowledge base v2): 100% of 7,134 picks grounded, 1,066 tokens per trajectory as SFT sees
# them (1,910 with the JSON tool schemas the filter counts), the longest 2,356; 1.7 min on an Intel
# Xeon with AVX512-BF16 (expect up to twice that on a CPU with AVX2 only).
#
# The base 135M model does not follow the tool protocol (it writes prose): its free rollouts end
# with format errors. That is the point of notebook 05, which fine-tunes it on these trajectories.

# %% [markdown]
# ## 0 Parameters
#
# `None` means *use the profile's default* (see `medkit/profiles.py`).

# %% tags=["parameters"]
PROFILE = "cpu"               # smoke | cpu | gpu; selects every default below
SEED = None                   # base random seed (default 13); the same seed gives the same trajectories
N_QUESTIONS = None            # training questions to synthesise for, None takes the whole train split of notebook 03
VARIANTS = None               # KG-guided trajectories per question (cpu 2; variant 1 finds the start entity another way)
RECOVERY_SHARE = None         # share of trajectories given one recovery turn: a slip (no loss), its real error, the corrected call (default 0: off, it taught the cpu model to repeat calls; try 0.5 with a larger model)
MIN_TOOL_CALLS = None         # fewer tool calls than this rejects a trajectory as too few turns (default 2)
MAX_TOKENS = None             # longer trajectories (tokens as the model sees them) are rejected (cpu 4096)
FREE_QUESTIONS = None         # questions for free MTG rollouts by the teacher (cpu 8, smoke 2, 0 skips)
TEACHER = None                # local for the profile model, or an endpoint spec dict (type openai, base_url, model)
AGENT_MAX_CALLS = None        # model calls per free rollout (cpu 10; upstream uses 30)
AGENT_MAX_NEW_TOKENS = None   # tokens per assistant turn in free rollouts
AGENT_BATCH = None            # conversations per local generate batch
REWRITE_ENDPOINT = None       # optional endpoint spec dict whose model rewrites the KG-guided thoughts
RERANK = None                 # True re-ranks search hits with the offline MiniLM embedder (default False, slower)
ENGINE = None                 # local teacher's engine: auto (default: OpenVINO on CPU where it runs), openvino, ctranslate2 or transformers (the reference)
ENGINE_PRECISION = None       # auto (default: bf16 on OpenVINO where the CPU has it, 1.5x faster, like transformers' bf16), float32 (the exact model) or int8 (CTranslate2 only: approximate)
ENGINE_BATCH = None           # conversations the engine schedules at once (default 64; lower it if memory is short)

# %% [markdown]
# ## 0 Global settings

# %%
import json, time
import pandas as pd
from IPython.display import Markdown, display
from medkit import (agent as A, judge as J, kb, plots, profiles, paths, synthesis as SY, trajectories as TR,
                    tools as T, questions as Q, grounding as GR, io as mio, model as M, records, recovery as RC)
from medkit import notebook_output
notebook_output.configure()  # one-line portable warnings, no library progress bars (medkit/notebook_output.py)

P = profiles.resolve_cell("trajectories", globals())  # the parameters above on the profile's defaults; a misspelt or mistyped -p is refused
OUT = paths.profile_data_dir(PROFILE)
FIG = paths.results_dir(PROFILE) / "figures"; FIG.mkdir(parents=True, exist_ok=True)
P

# %% [markdown]
# ## 1 The tools
#
# Six typed Python functions over the kit's knowledge base and the profile's drug–disease
# definition links; their docstrings become the JSON schemas the model sees. They never raise:
# bad input comes back as a one-line `Error: …` observation, and outputs are capped at 4,000
# characters.

# %%
t0 = time.time()
index, toolbox = T.open_tools(OUT, rerank=P["RERANK"])
schemas = A.tool_schemas(toolbox.tools())
train = records.load_questions(OUT / "questions_train.jsonl", records.KitQuestion)  # validated: file, line and field named on bad input
print(f"tools loaded in {time.time() - t0:.1f} s; {len(train):,} training questions")
pd.DataFrame([{"tool": s["function"]["name"], "description": s["function"]["description"],
               "arguments": ", ".join(s["function"]["parameters"]["properties"])} for s in schemas])

# %%
fabry = "MONDO:0010526"
print(toolbox.call("lookup", {"name": "Fabry disease"}), end="\n\n")
print(toolbox.call("diagnose", {"phenotypes": ["Angiokeratoma", "Hypohidrosis", "Acroparesthesia", "Corneal opacity"], "k": 3}), end="\n\n")
print(toolbox.call("related", {"entity_id": fabry, "relation": "associated_with"}), end="\n\n")
print(toolbox.call("search", {"query": "alpha-galactosidase deficiency angiokeratoma", "k": 3}), end="\n\n")
for bad in [("read", {"entity_id": "MONDO:9999999"}), ("search", {"query": ""}), ("diagnose", {"phenotypes": "fever"}),
            ("teleport", {}), ("related", {"entity_id": fabry})]:
    print(bad[0], "->", toolbox.call(*bad))

# %% [markdown]
# The private retriever is BM25 (bm25s); dense re-ranking of a wider BM25 candidate set with the
# offline MiniLM embedder is optional (`RERANK`). Below, one paraphrased query both ways.

# %%
from medkit import retriever as R
query = "inherited enzyme deficiency with angiokeratomas, burning pain in the hands and kidney failure"
t0 = time.time(); bm25_hits = toolbox.retriever.search(query, k=5); bm25_ms = (time.time() - t0) * 1000
embed = R.minilm_embedder()
t0 = time.time(); dense_hits = R.rerank(query, toolbox.retriever.search(query, k=30), embed)[:5]; dense_ms = (time.time() - t0) * 1000
print(f"BM25 {bm25_ms:.1f} ms; BM25 top 30 + MiniLM re-rank {dense_ms:.0f} ms")
pd.DataFrame({"BM25": [f"{h.title} ({h.entity_id})" for h in bm25_hits],
              "BM25 + MiniLM re-rank": [f"{h.title} ({h.entity_id})" for h in dense_hits]}, index=range(1, 6))

# %% [markdown]
# ## 2 The protocol, two views of one trajectory, and a parser that never raises
#
# Trajectories are stored as TRL chat messages (assistant `tool_calls`, `role: "tool"` results) plus
# the tool schemas. `to_text_messages` gives the upstream text protocol for any chat model or
# endpoint. For a ChatML model (SmolLM2, Qwen) the two views are **the same token stream** — checked
# below with TRL's Qwen2.5 training template — so what SFT trains on is exactly what the agent sees.

# %%
for text in ['<think>Rank diseases for the phenotypes.</think>\n<tool_call>\n{"name": "diagnose", "arguments": {"phenotypes": ["Angiokeratoma"]}}\n</tool_call>',
             '<think>Done.</think>\n<answer>Hepatitis B</answer>',
             '<tool_call>{"name": "search", "arguments": {"query": "x"</tool_call>',
             'The answer is probably a statin.',
             '<think><think>nested</think><tool_call>[1, 2]</tool_call><answer></answer>']:
    t = A.parse_turn(text)
    print(repr(text[:60]), "->", {"calls": t.tool_calls, "answer": t.answer, "errors": t.errors})

# %% [markdown]
# ## 3 One question, one knowledge-informed trajectory
#
# The synthesiser reads the question's verifiable constraints (notebook 03), picks for every hop the
# tool that exposes that relation (`diagnose` for a disease described by phenotypes, `related` /
# `common` for a typed relation, a keyword `search` otherwise), executes it, and keeps the step only
# if the next chain entity is in the observation. Thoughts use only the question and what has been
# observed so far; the last call verifies the answer from the other side.

# %%
example_record = next(r for r in train if r["hops"] >= 3 and r["answer_type"] == "disease")
example = SY.synthesise(example_record, index, toolbox, seed=P["SEED"])
print("masked path (never shown to the agent):", example_record["reasoning_path"])
print("chain:", " -> ".join(index.name[e] for e in example_record["chain"]), "| failure:", example.failure)
display(Markdown(A.render_markdown(example.messages)))

# %%
tok = M.load_tokenizer(PROFILE)
from trl.chat_template_utils import qwen2_5_training_chat_template
as_trl = tok.apply_chat_template(example.messages, tools=schemas, chat_template=qwen2_5_training_chat_template, tokenize=False)
as_text = tok.apply_chat_template(A.to_text_messages(example.messages, schemas), tokenize=False)
assert as_trl == as_text, "the TRL view and the text-protocol view differ"
count_tokens = TR.token_counter(tok, schemas)
print(f"identical renderings: {len(as_trl):,} characters, {count_tokens(example.messages):,} tokens")

# %% [markdown]
# ## 4 KG-guided synthesis for every training question
#
# Resumable: each (question, variant) is appended to `trajectories_all.jsonl` as soon as it is
# filtered; a rerun skips what is there (a torn last line is cut and redone). The filters are the
# paper's: synthesis failed (a hop never observed), unmatched call/response, format error, tool
# error, no answer, wrong answer (judge: exact / id / normalised / KG synonym — never a
# multiple-choice letter), too few turns, over the token limit, guidance leak — plus one of the
# kit's: **ungrounded**, a pick that nothing visible in the conversation narrows down (section 7).
#
# **Recovery turns.** A synthesised trajectory never errs, so a model trained only on them never sees
# an error followed by a fix — and evaluated, the cpu SFT policy re-issued a call that had just failed
# in 38 of its 74 tool errors (48 rollouts read in session 12), the rest being invented entity names
# and relation names. In a share `RECOVERY_SHARE` of the trajectories, one call is first made with a
# slip of those two kinds (`medkit.recovery`), executed for real so the error is the tool's own, then
# made right with a thought that reads the error. The slip turn carries `"weight": 0` and gets no
# loss in notebook 05: the model learns the recovery, not the slip. Its error is not a `tool_error`.
#
# **Measured, and off by default.** On the cpu profile (`bench/ablation_sft_data.py cpu 60 4 3`: the
# same 64 SFT rows with and without their recovery turns, 60 held-out questions × 4 rollouts, paired)
# half the trajectories carrying one took SFT pass@1 from 0.171 to 0.108 (−0.063, 95% CI −0.113 …
# −0.017), and rollouts stopped by a repeated call from 121 to 180 of 240. The 135M model copied the
# surface of the pattern — an error, a correction thought, almost the same call — re-issuing the
# failed call after 251 of 319 errors (158 of 298 without) and writing a correction thought after 83
# observations that were not errors. So `RECOVERY_SHARE` is 0 on every profile but `smoke` (which runs
# the path in CI); a larger model may use it well, which is not measured here.

# %%
questions = train if P["N_QUESTIONS"] is None else train[: P["N_QUESTIONS"]]
by_id = {Q.question_id(r): r for r in questions}
log = OUT / "trajectories_all.jsonl"

judge_row = TR.stage_filter(P, count_tokens=count_tokens, resolve=toolbox.resolve_ids)

def make(record, variant):
    row = SY.synthesise(record, index, toolbox, variant=variant, seed=P["SEED"]).to_record()
    return RC.add_to_row(row, toolbox, share=P["RECOVERY_SHARE"], seed=P["SEED"])

jobs = [(r, v) for r in questions for v in range(P["VARIANTS"])]
t0 = time.time()
# what shapes a row (changed, rows are redone): these parameters and the knowledge base's version
kg_settings = {**{k: P[k] for k in ("SEED", "RECOVERY_SHARE", "MIN_TOOL_CALLS", "MAX_TOKENS", "RERANK")},
               "kb_version": kb.KB_VERSION}
counts = TR.collect(log, jobs, make, judge_row, source="kg_guided", version=SY.SYNTHESIS_VERSION, settings=kg_settings)
synth_seconds = time.time() - t0
made = sum(v for k, v in counts.items() if not k.startswith("skipped"))
print(dict(counts))
print(f"this run made {made:,} trajectories in {synth_seconds:.1f} s (the rest were already in the log)")

# %% [markdown]
# ## 5 Acceptance by filter reason, and the judge
#
# Bars show the *first* reason each rejected trajectory failed on (a trajectory whose hop was
# never observed also has no answer, and so on).

# %%
rows = [r for r in mio.read_jsonl(log) if r["source"] == "kg_guided" and r["question_id"] in by_id]
summary = TR.summarise(rows, TR.read_timings(log))
reasons = pd.Series({"accepted": summary["accepted"], **summary["first_reject_reason"]})
fig = plots.bar_counts(reasons, f"KG-guided trajectories by outcome ({PROFILE})", xlabel="trajectories")
plots.save(fig, FIG / "04_filter_reasons.png")
print(f"acceptance {summary['acceptance_rate']:.1%} ({summary['accepted']:,} of {summary['trajectories']:,}); "
      f"{summary['trajectories_per_second']} trajectories per second of synthesis + filtering (summed over runs)")

# %%
hep_b = {"answer": "Hepatitis B", "answer_id": "MONDO:0005344", "answer_aliases": ["Hepatitis B", "HBV infection"]}
for pred in ["Hepatitis B", "B", "The answer is **hepatitis b**.", "HBV infection", "Hepatitis B (MONDO:0005344)",
             "Hepatitis B or hepatitis C", "Hepatitis C"]:
    v = J.judge(pred, hep_b)
    print(f"{pred!r:40} -> correct={v.correct} ({v.method})")

# %% [markdown]
# ## 6 Tool use, length and coverage of the accepted trajectories

# %%
acc = [r for r in rows if r["filter"]["accepted"]]
tools_used = pd.Series(summary["tool_calls_by_tool"])
plots.save(plots.bar_counts(tools_used, "Tool calls in accepted trajectories", xlabel="calls"), FIG / "04_tool_calls.png")
calls = [r["filter"]["n_tool_calls"] for r in acc]
fig = plots.histogram(calls, "Tool calls per accepted trajectory", "tool calls", bins=range(0, max(calls) + 2),
                      reference=4.2, reference_label="paper mean 4.2")
plots.save(fig, FIG / "04_calls_per_trajectory.png")
tokens = [r["filter"]["n_tokens"] for r in acc]
plots.save(plots.histogram(tokens, "Tokens per accepted trajectory", "tokens", reference=P["MAX_TOKENS"],
                           reference_label="token limit"), FIG / "04_tokens.png")
spec = pd.Series([r["specialty"] for r in acc]).value_counts()
plots.save(plots.bar_counts(spec, "Accepted trajectories by specialty", xlabel="trajectories"), FIG / "04_specialties.png")
print(f"mean tool calls {summary['mean_tool_calls']} (paper 4.2); mean tokens {summary['mean_tokens']}; "
      f"{summary['specialties']} specialties; {summary['questions_covered']:,} questions covered")

# %% [markdown]
# ### A recovery turn
#
# One accepted trajectory with a recovery turn, around the slip: the slipped call (no loss), the
# tool's error, the corrected call. The counts are per slip kind.

# %%
recovered = [r for r in acc if r.get("recovery")]
print(f"{len(recovered):,} of {len(acc):,} accepted trajectories carry a recovery turn; by kind:",
      pd.Series([r["recovery"]["kind"] for r in recovered]).value_counts().to_dict())
if recovered:
    shown = recovered[0]; at = shown["recovery"]["turn"]
    display(Markdown(A.render_markdown(shown["messages"][at:at + 4])))

# %% [markdown]
# ### Where the tokens go, as SFT sees them
#
# The histogram counts tokens as the filter does: with every tool's JSON schema in the system prompt
# (~840 tokens). SFT on the `cpu` profile leaves that block out (`TOOLS_IN_PROMPT = False` in
# notebook 05): the system prompt keeps a one-line-per-tool list, so the model still sees every tool,
# and the agent is evaluated with the same prompt. Training time grows with tokens, and tokens that
# carry nothing the next step needs teach nothing, so this is the count that matters. Each
# trajectory is split into system prompt, question, thoughts, calls, observations, answer and the
# chat template's own tokens, by hop count. Expected on `cpu` (the committed run): mean 1,066 tokens,
# observations 28%, calls 21%, system prompt 19%, thoughts 15%; 2-hop 900 and 6-hop 1,661, 99.7%
# within 2,048 and 76% within 1,200. Synthesis v8 gave 1,519 tokens: compact tool outputs, terse
# thoughts and a second variant that enters by another call (not a keyword-search miss) removed 23%.

# %%
sft_schemas = schemas if profiles.defaults(PROFILE, "sft")["TOOLS_IN_PROMPT"] else []
tokens_sft = TR.token_report(tok, acc, sft_schemas)
seg = pd.DataFrame({h: v["segments_mean"] for h, v in tokens_sft["by_hops"].items()}).T
seg.index = [f"{h} hops (n={tokens_sft['by_hops'][h]['trajectories']})" for h in seg.index]
plots.save(plots.stacked_segments(seg, f"Tokens per accepted trajectory as SFT sees them ({PROFILE})"),
           FIG / "04_token_segments.png")
print(f"mean {tokens_sft['mean_tokens']:,} tokens as SFT sees them (max {tokens_sft['max_tokens']:,}); "
      f"within 1,200: {tokens_sft['share_within']['1200']:.0%}, within 2,048: {tokens_sft['share_within']['2048']:.0%}")
display(pd.Series(tokens_sft["segments_share"], name="share of tokens").to_frame().T)

# %% [markdown]
# ## 7 Is every pick grounded in what the agent has seen?
#
# A model learns from a trajectory what the trajectory shows. If the agent lists seven drugs and
# then "picks" the right one, the sample teaches guessing: nothing visible singled it out. The
# grounding rule (`medkit.grounding`, stated in its docstring) checks every *commit* — the turn that
# first names a chain entity — and asks whether every other candidate of the same kind in the
# observation that introduced it was ruled out by something already visible: a complete list for
# another constraint of the hop, an intersection (`common`), a `diagnose` line lacking a clue, the
# competitor's own entry. Synthesis adds exactly those checks before committing and gives up
# (`ungrounded`) when none exists; the filter re-checks every trajectory. The tables show, for the
# accepted trajectories, the grounded share by the tool that introduced the pick and by hop count
# (expected: 1.0 everywhere; the pre-grounding synthesis scored 0.77 of commits and 0.27 of
# trajectories on the cpu profile, with `related` lists introducing 81% of the guesses).
# What grounding buys the trained model is measured by `bench/ablation_sft_data.py`'s `ungrounded`
# variant (README, "What grounding buys"): the cpu adapter's 64 rows re-synthesised without the checks
# (`synthesise(grounded=False)`) scored 0.094 vs 0.121 on 136 held-out questions × 4 (paired −0.028,
# 95% CI −0.064 … +0.007) and answered more often (0.69 vs 0.53): guesses in the data teach answering.

# %%
grounding = GR.summarise(GR.check_rows(acc, questions))
fig = plots.bar_counts(grounding["by_tool"]["commits"], "Which tool introduced each pick (accepted trajectories)",
                       xlabel="commits")
plots.save(fig, FIG / "04_commits_by_tool.png")
print(f"grounded commits {grounding['grounded_commit_rate']:.1%} of {grounding['commits']:,}; "
      f"grounded trajectories {grounding['grounded_trajectory_rate']:.1%} of {grounding['trajectories']:,}; "
      f"ids never shown before use: {grounding['never_shown_commits']}")
display(grounding["by_tool"]); display(grounding["by_hops"])

# %% [markdown]
# ## 8 Free rollouts with Masked Trajectory Guidance
#
# The teacher (the profile's local model, or any OpenAI-compatible endpoint in `TEACHER`) runs the
# same agent loop on questions, with the masked reasoning path in its system prompt. The saved
# messages never contain it; a sample whose thoughts still refer to it ("hint", `Entity_A`, …) is
# rejected. Stop rules: an answer, `AGENT_MAX_CALLS` model calls, the token budget, an identical
# repeated call, two format errors in a row, or a backend error.

# %%
free_rows, free_summary = [], None
if P["FREE_QUESTIONS"]:
    from medkit import llm
    picked = questions[: P["FREE_QUESTIONS"]]
    cfg = A.AgentConfig(max_calls=P["AGENT_MAX_CALLS"], max_new_tokens=P["AGENT_MAX_NEW_TOKENS"],
                        token_budget=P["MAX_TOKENS"], seed=P["SEED"])
    free_settings = {**{k: P[k] for k in ("SEED", "MIN_TOOL_CALLS", "MAX_TOKENS", "TEACHER", "AGENT_MAX_CALLS",
                                          "AGENT_MAX_NEW_TOKENS", "ENGINE", "ENGINE_PRECISION")},
                     "kb_version": kb.KB_VERSION}
    done = TR.done_keys(log, "free", A.PROTOCOL_VERSION, free_settings)
    pending = [r for r in picked if (Q.question_id(r), 0, "free") not in done]
    t0 = time.time()
    if pending:  # a resumed run with every rollout done does not even load the teacher
        teacher = llm.backend_from_config(
            {"type": "local", "profile": PROFILE, "batch_size": P["AGENT_BATCH"], "engine": P["ENGINE"],
             "precision": P["ENGINE_PRECISION"], "engine_batch": P["ENGINE_BATCH"]} if P["TEACHER"] == "local" else P["TEACHER"])
        rollouts = {t["question_id"]: t for t in A.run_agent(
            teacher, toolbox, pending, config=cfg, schemas=schemas,
            guidance={Q.question_id(r): TR.guidance_text(r) for r in pending})}
        for t in rollouts.values():  # batched: each rollout gets its share of the wall time
            t["seconds"] = round((time.time() - t0) / len(pending), 2)
        TR.collect(log, [(r, 0) for r in pending], lambda r, v: rollouts[Q.question_id(r)], judge_row,
                   source="free", version=A.PROTOCOL_VERSION, settings=free_settings, progress=False)
    free_rows = [r for r in mio.read_jsonl(log) if r["source"] == "free" and r["question_id"] in by_id]
    assert not any("Search guidance" in str(m.get("content")) for r in free_rows for m in r["messages"])
    free_summary = {**TR.summarise(free_rows, TR.read_timings(log)),
                    "stop_reasons": pd.Series([r["stop_reason"] for r in free_rows]).value_counts().to_dict(),
                    "mean_model_calls": float(pd.Series([r["n_model_calls"] for r in free_rows]).mean()),
                    "mean_format_errors": float(pd.Series([r["n_format_errors"] for r in free_rows]).mean())}
    display(Markdown(A.render_markdown(free_rows[0]["messages"], 400)))
free_summary

# %% [markdown]
# ## 9 Optional: rewrite the thoughts with an LLM
#
# With `REWRITE_ENDPOINT` set, every `<think>` of the accepted KG-guided trajectories is rewritten
# by that model to justify its action in freer language. A rewrite is kept only if it leaks no
# guidance and names no id the conversation has not shown yet; the rewritten set is saved beside
# the original (`trajectories_rewritten.jsonl`).

# %%
rewrite_stats = None
if P["REWRITE_ENDPOINT"]:
    from medkit import llm
    rw = llm.backend_from_config(P["REWRITE_ENDPOINT"])
    ok_, msg = rw.check(); print(msg)
    if ok_:
        rewritten, kept = [], 0
        for r in acc:
            msgs, n = TR.rewrite_thoughts(r["messages"], rw)
            kept += n
            rewritten.append({**r, "messages": msgs})
        mio.write_jsonl(OUT / "trajectories_rewritten.jsonl", TR.accepted_records(rewritten, schemas))
        rewrite_stats = {"trajectories": len(rewritten), "thoughts_rewritten": kept}
rewrite_stats

# %% [markdown]
# ## 10 Save the TRL dataset and read it back
#
# `trajectories.jsonl` holds the accepted trajectories (KG-guided and free) as `messages` with tool
# calls plus `tools` (the schemas as a JSON string), which TRL's `SFTTrainer` takes directly; the
# provenance file records sources, versions, seed and parameters.

# %%
all_rows = [r for r in mio.read_jsonl(log) if r["question_id"] in by_id]
final = TR.accepted_records(all_rows, schemas)
mio.write_jsonl(OUT / "trajectories.jsonl", final)
metrics = {"kg_guided": summary, "grounding": GR.summary_record(grounding), "free": free_summary,
           "mean_tokens_sft": tokens_sft["mean_tokens"], "tokens_sft": tokens_sft,
           "rewrite": rewrite_stats,
           "synthesis_seconds_this_run": round(synth_seconds, 1), "accepted_total": len(final),
           "synthesis_version": SY.SYNTHESIS_VERSION}
mio.write_json(OUT / "trajectories.provenance.json",
               {**mio.provenance(**P), "questions": f"data/{PROFILE}/questions_train.jsonl", "kb": "data/kb",
                "corpus_relations": f"data/{PROFILE}/corpus_relations.parquet", "tools": schemas, "stats": metrics})
mio.write_json(paths.results_dir(PROFILE) / "04_trajectories.json", metrics)
import datasets
ds = TR.to_dataset(final)
back = tok.apply_chat_template(ds[0]["messages"], tools=json.loads(final[0]["tools"]),
                               chat_template=qwen2_5_training_chat_template, tokenize=False)
assert back == tok.apply_chat_template(final[0]["messages"], tools=json.loads(final[0]["tools"]),
                                       chat_template=qwen2_5_training_chat_template, tokenize=False)
print(ds); print(pd.read_json(OUT / "trajectories.jsonl", lines=True)[["question_id", "source", "specialty", "n_tool_calls", "n_tokens"]].head())
{k: metrics["kg_guided"][k] for k in ("accepted", "acceptance_rate", "mean_tool_calls", "specialties")}
