"""The numbers the README and the notebook headers quote agree with the committed reference metrics.

Each claim is a piece of text as it appears in a document, with ``{path}`` placeholders where a
number stands; a path walks the metrics JSON (``/``-separated keys, list indices as integers) and
may end in ``|min`` (seconds shown in minutes), ``|pct`` (a share shown in percent) or ``|gib`` (MiB
shown in GiB). The text around the numbers must match exactly (``−`` and ``-`` count as the same sign);
each number must equal the metric within the precision it is shown with (half a unit of its last
digit), so a rounded figure passes and a stale one fails. When a reference run is refreshed, the documents are
edited to its numbers and this test says which ones were missed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from medkit.paths import REPO_ROOT

PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
NUMBER = r"([+\-−]?\d[\d,]*(?:\.\d+)?)"

LONG = "results/cpu_long"
CPU = "results/cpu"

RULES = "results/bench/agent_rules.json"

# (document, metrics file, text with placeholders)
CLAIMS: list[tuple[str, str, str]] = [
    # README: the agent's forgiving rules, measured by bench/bench_agent_rules.py
    ("README.md", RULES,
     "pass@1 {arms/strict/pass@1/mean} → {arms/forgiving/pass@1/mean} (+{paired_forgiving_minus_strict/mean}, 95% CI\n"
     "{paired_forgiving_minus_strict/ci95/0} … +{paired_forgiving_minus_strict/ci95/1}: within noise), answer rate "
     "{arms/strict/answer_rate} → {arms/forgiving/answer_rate}, rollouts stopped by a repeat "
     "{arms/strict/stop_reasons/repeated_call} → {arms/forgiving/stop_reasons/repeated_call} of 240."),
    # README and notebook 04: the recovery-turn ablation, measured by bench/ablation_sft_data.py
    ("README.md", "results/cpu/experiments/sft_data_ablation.json",
     "SFT pass@1 {variants/no_recovery/pass@1/mean} → {variants/recovery/pass@1/mean} (paired "
     "{paired_minus_no_recovery/recovery/mean}, 95% CI\n{paired_minus_no_recovery/recovery/ci95/0} … "
     "{paired_minus_no_recovery/recovery/ci95/1}), repeated-call stops {variants/no_recovery/stop_reasons/repeated_call} → "
     "{variants/recovery/stop_reasons/repeated_call} of 240"),
    ("README.md", "results/cpu/experiments/sft_data_ablation.json",
     "the same call again ({variants/recovery/reading/same_call_after_error} of "
     "{variants/recovery/reading/errors_answered} errors vs {variants/no_recovery/reading/same_call_after_error} of "
     "{variants/no_recovery/reading/errors_answered})"),
    ("notebooks/04_trajectories.py", "results/cpu/experiments/sft_data_ablation.json",
     "re-issuing the\n# failed call after {variants/recovery/reading/same_call_after_error} of "
     "{variants/recovery/reading/errors_answered} errors ({variants/no_recovery/reading/same_call_after_error} of "
     "{variants/no_recovery/reading/errors_answered} without) and writing a correction thought after "
     "{variants/recovery/reading/correction_thought_after_a_result}\n# observations"),
    # README: GRPO's pool probe under two rollout settings, measured by bench/probe_settings.py
    ("README.md", "results/cpu/experiments/probe_settings.json",
     "(temperature 0.7, 6 calls) scored {arms/cpu/pass@1/mean} and the evaluation settings {arms/cpu_long/pass@1/mean} "
     "(paired +{paired_cpu_long_minus_cpu/mean}, 95% CI {paired_cpu_long_minus_cpu/ci95/0} … "
     "+{paired_cpu_long_minus_cpu/ci95/1}),\nwith {arms/cpu/learnable} and {arms/cpu_long/learnable} learnable questions"),
    # README: one GRPO training pass's memory, measured by bench/bench_grpo_pass_memory.py
    ("README.md", "results/bench/grpo_pass_memory.json",
     "{runs/micro2/pass_peak_gib} GiB over 2 rollouts, {runs/micro1/pass_peak_gib} GiB over 1 at "
     "{over_baseline/micro1/seconds_per_rollout}× the seconds\nper rollout, {runs/micro2_gc/pass_peak_gib} GiB over 2 with "
     "`GRADIENT_CHECKPOINTING` at {over_baseline/micro2_gc/seconds_per_rollout}×"),
    # README: the grounding ablation, measured by bench/ablation_sft_data.py (variant ungrounded)
    ("README.md", "results/cpu/experiments/sft_data_ablation_ungrounded.json",
     "That takes\nthe training picks from {variants/no_recovery/training/grounding/grounded_commit_rate|pct}% to "
     "{variants/ungrounded/training/grounding/grounded_commit_rate|pct}% grounded "
     "({variants/ungrounded/training/grounding/grounded_trajectory_rate|pct}% of the "
     "{variants/ungrounded/training/rows} trajectories fully grounded; {variants/no_recovery/training/tool_calls} vs "
     "{variants/ungrounded/training/tool_calls} tool\ncalls). Scored on all {questions} held-out questions"),
    ("README.md", "results/cpu/experiments/sft_data_ablation_ungrounded.json",
     "| grounded (notebook 04) | {variants/no_recovery/pass@1/mean} ({variants/no_recovery/pass@1/ci95/0}–"
     "{variants/no_recovery/pass@1/ci95/1}) | {variants/no_recovery/pass@1_by_hops/2/mean} / "
     "{variants/no_recovery/pass@1_by_hops/3/mean} | {variants/no_recovery/answer_rate} | "
     "{variants/no_recovery/stop_reasons/repeated_call} / 544 |"),
    ("README.md", "results/cpu/experiments/sft_data_ablation_ungrounded.json",
     "| ungrounded twins | {variants/ungrounded/pass@1/mean} ({variants/ungrounded/pass@1/ci95/0}–"
     "{variants/ungrounded/pass@1/ci95/1}) | {variants/ungrounded/pass@1_by_hops/2/mean} / "
     "{variants/ungrounded/pass@1_by_hops/3/mean} | {variants/ungrounded/answer_rate} | "
     "{variants/ungrounded/stop_reasons/repeated_call} / 544 |"),
    ("README.md", "results/cpu/experiments/sft_data_ablation_ungrounded.json",
     "Ungrounded minus grounded: {paired_minus_no_recovery/ungrounded/mean} (95% CI "
     "{paired_minus_no_recovery/ungrounded/ci95/0} … +{paired_minus_no_recovery/ungrounded/ci95/1}), "
     "{paired_minus_no_recovery/ungrounded/better} questions better, {paired_minus_no_recovery/ungrounded/worse} worse"),
    ("README.md", "results/cpu/experiments/sft_data_ablation_ungrounded.json",
     "{variants/ungrounded/answer_rate|pct}% of rollouts answer instead of {variants/no_recovery/answer_rate|pct}%"),
    ("notebooks/04_trajectories.py", "results/cpu/experiments/sft_data_ablation_ungrounded.json",
     "scored {variants/ungrounded/pass@1/mean} vs {variants/no_recovery/pass@1/mean} on {questions} held-out questions "
     "× 4 (paired {paired_minus_no_recovery/ungrounded/mean},\n# 95% CI {paired_minus_no_recovery/ungrounded/ci95/0} … "
     "+{paired_minus_no_recovery/ungrounded/ci95/1}) and answered more often ({variants/ungrounded/answer_rate} vs "
     "{variants/no_recovery/answer_rate})"),
    # README: the web tools' latency, measured by bench/bench_web_tools.py
    ("README.md", "results/bench/web_tools.json",
     "offline `web_search`\n{runs/offline_search/p50_ms} / {runs/offline_search/p95_ms} ms (the baseline); SearXNG over "
     "loopback HTTP {runs/searxng_search/p50_ms} / {runs/searxng_search/p95_ms} ms,\nfrom the cache "
     "{runs/searxng_search_cached/p50_ms} / {runs/searxng_search_cached/p95_ms} ms; `read_page` of an HTML article over "
     "loopback {runs/http_read/p50_ms} / {runs/http_read/p95_ms} ms"),
    # README: MedBrowseComp's published files, read by bench/bench_medbrowsecomp_files.py
    ("README.md", "results/bench/medbrowsecomp_files.json",
     "read with no error: {files/0/rows} and {files/1/rows} rows, 5 tasks each, every\ngold scored right"),
    # README: the OpenVINO pipeline in a child process, measured by bench/bench_engine_process.py
    ("README.md", "results/bench/engine_process.json",
     "the child generates the same tokens at {over_baseline/generated_tokens_per_second}× the tokens/s, builds in\n"
     "{over_baseline/build_seconds}× the time ({runs/process/build_seconds} s) and adds 141 MB to the peak RSS of the "
     "process tree ({over_baseline/peak_tree_rss}×"),
    ("README.md", "results/bench/engine_process.json",
     "batch rerun in {runs/process/hang/seconds_to_recover} s, and the tree's RSS fell from "
     "{runs/process/hang/tree_rss_mb_before} to {runs/process/hang/tree_rss_mb_after} MiB"),
    # README: the cpu_long reference result
    ("README.md", f"{LONG}/07_evaluation.json",
     "| base SmolLM2-135M-Instruct | {stages/base/pass@1/mean} ({stages/base/pass@1/ci95/0}–{stages/base/pass@1/ci95/1})"
     " | {stages/base/pass@k} | {stages/base/answer_rate} | {stages/base/format_error_rate|pct}% |"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "| **{stages/sft/pass@1/mean} ({stages/sft/pass@1/ci95/0}–{stages/sft/pass@1/ci95/1})** | {stages/sft/pass@k}"
     " | {stages/sft/answer_rate} | {stages/sft/format_error_rate|pct}% | {stages/sft/tool_calls_per_question} |"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "| SFT + GRPO (10 steps × 8 rollouts) | **{stages/sft+grpo/pass@1/mean} ({stages/sft+grpo/pass@1/ci95/0}–"
     "{stages/sft+grpo/pass@1/ci95/1})** | {stages/sft+grpo/pass@k} | {stages/sft+grpo/answer_rate} | "
     "{stages/sft+grpo/format_error_rate|pct}% | {stages/sft+grpo/tool_calls_per_question} |"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "same {questions} held-out questions (every question of the held-out split: "
     "{stages/sft/pass@1_by_hops/2/questions} two-hop,\n{stages/sft/pass@1_by_hops/3/questions} three-hop"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "**SFT − base: +{paired/sft_minus_base/mean} (paired CI +{paired/sft_minus_base/ci95/0} … "
     "+{paired/sft_minus_base/ci95/1})**, {paired/sft_minus_base/better} questions better, "
     "{paired/sft_minus_base/worse} worse"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "**SFT+GRPO − SFT: +{paired/grpo_minus_sft/mean} (paired CI {paired/grpo_minus_sft/ci95/0} … "
     "+{paired/grpo_minus_sft/ci95/1})**, {paired/grpo_minus_sft/better} better, {paired/grpo_minus_sft/worse} worse"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "count: 2-hop {stages/sft/pass@1_by_hops/2/mean} → {stages/sft+grpo/pass@1_by_hops/2/mean}, 3-hop "
     "{stages/sft/pass@1_by_hops/3/mean} → {stages/sft+grpo/pass@1_by_hops/3/mean}, ≤ 3 hops "
     "{sft_pass@1_max3_hops/mean} → {stages/sft+grpo/pass@1_max3_hops/mean}"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "By hop count: 2-hop {stages/sft/pass@1_by_hops/2/mean}\n  ({stages/sft/pass@1_by_hops/2/ci95/0}–"
     "{stages/sft/pass@1_by_hops/2/ci95/1}), 3-hop {stages/sft/pass@1_by_hops/3/mean} on "
     "{stages/sft/pass@1_by_hops/3/questions} questions"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "on the {sft_pass@1_max3_hops/questions} questions of ≤ 3 hops\n  {sft_pass@1_max3_hops/mean} "
     "({sft_pass@1_max3_hops/ci95/0}–{sft_pass@1_max3_hops/ci95/1})"),
    ("README.md", f"{LONG}/07_evaluation.json",
     "the answer rate went {stages/sft/answer_rate} → {stages/sft+grpo/answer_rate} and repeated-call\n  stops "
     "{stages/sft/stop_reasons/repeated_call} → {stages/sft+grpo/stop_reasons/repeated_call}"),
    ("README.md", f"{LONG}/06_grpo.json",
     "Dynamic sampling redrew {train/dynamic_sampling/redrawn} groups over the\n  {train/steps} steps, and "
     "{train/dynamic_sampling/uniform_kept} of the {train/steps} groups that trained"),
    ("README.md", f"{LONG}/06_grpo.json",
     "the training reward changed by {reward_hacking/reward_change} and\n  training accuracy "
     "{reward_hacking/checkpoints/1/train_accuracy} → {reward_hacking/checkpoints/2/train_accuracy}"),
    ("README.md", f"{LONG}/05_sft.json",
     "scored {learning_curve/0/pass@1/mean} ({learning_curve/0/pass@1/ci95/0}–{learning_curve/0/pass@1/ci95/1};"
     " {learning_curve/0/rollouts} rollout),\n  after 384 {eval/sft/pass@1/mean}"),
    ("README.md", f"{LONG}/05_sft.json",
     "SFT {train/seconds|min} min at {train/tokens_per_second} tokens/s, loss {train/train_loss}; base\n  evaluation "
     "{eval/base/seconds|min} min; SFT evaluation {eval/sft/seconds|min} min"),
    ("README.md", f"{LONG}/06_grpo.json",
     "The probe of {pool/candidates} training questions × {pool/probe_k} rollouts found {pool/learnable} that the SFT policy"),
    ("README.md", f"{LONG}/06_grpo.json",
     "held-out pass@1 went {reward_hacking/checkpoints/0/heldout_pass@1} → {reward_hacking/checkpoints/1/heldout_pass@1}"
     " → {reward_hacking/checkpoints/2/heldout_pass@1}"),
    ("README.md", "results/bench/pipeline_cpu_long.json",
     "05 {stages/6/seconds|min} min (SFT"),
    ("README.md", "results/bench/pipeline_cpu_long.json",
     "06 {stages/7/seconds|min} min (pool probe"),
    ("README.md", "results/bench/pipeline_cpu_long.json", "**{total_seconds|min} min for the whole pipeline**"),
    ("README.md", f"{LONG}/experiments/05_sft_256_mixed.json",
     "the same training, the same loss {train/train_loss}, scored with\n  k = 2 on the ≤ 3-hop questions) reported "
     "{experiment/pass@1/mean} ({experiment/pass@1/ci95/0}–{experiment/pass@1/ci95/1})"),
    ("README.md", f"{LONG}/experiments/sft_256_vs_128.json",
     "move pass@1 from {old/pass@1/mean} to {new/pass@1/mean}, paired +{paired_new_minus_old/mean} "
     "({paired_new_minus_old/ci95/0} … +{paired_new_minus_old/ci95/1}), {paired_new_minus_old/better} questions better, "
     "{paired_new_minus_old/worse} worse — not resolved (on the ≤ 3-hop questions +{paired_new_minus_old_max3_hops/mean}, "
     "{paired_new_minus_old_max3_hops/ci95/0} … +{paired_new_minus_old_max3_hops/ci95/1});\n  3-hop from "
     "{old/by_hops/3/mean} to {new/by_hops/3/mean}, 2-hop from {old/by_hops/2/mean} to {new/by_hops/2/mean}"),
    ("README.md", f"{LONG}/experiments/sft_256_vs_128.json",
     "score {same_adapter/k4_rollouts_pass@1_max3_hops/0}, {same_adapter/k4_rollouts_pass@1_max3_hops/1}, "
     "{same_adapter/k4_rollouts_pass@1_max3_hops/2} and {same_adapter/k4_rollouts_pass@1_max3_hops/3} rollout by rollout, "
     "the pilot's two {same_adapter/k2_rollouts_pass@1_max3_hops/0} and {same_adapter/k2_rollouts_pass@1_max3_hops/1}; "
     "paired, that\n  run's k = 4 minus the pilot's k = 2: {same_adapter/paired_k4_minus_k2/mean} "
     "({same_adapter/paired_k4_minus_k2/ci95/0} … {same_adapter/paired_k4_minus_k2/ci95/1})"),
    ("README.md", f"{LONG}/06_grpo.json", "probe pass@1 {pool/probe_pass@1/mean}). Dynamic sampling"),
    ("README.md", "results/bench/pipeline_cpu_long.json", "07 {stages/8/seconds} s: **"),
    # README: how the cpu_long policies fail, read from the reference run's rows by bench/failure_modes.py
    ("README.md", f"{LONG}/experiments/failure_modes.json",
     "{stages/sft/share_with_tool_error|pct}% of the SFT rollouts made at\n  least one tool call that failed"),
    ("README.md", f"{LONG}/experiments/failure_modes.json",
     "answered right {stages/sft/no_tool_error/correct_rate_when_answered|pct}% of the time when they answered; those "
     "with one, {stages/sft/with_tool_error/correct_rate_when_answered|pct}%."),
    ("README.md", f"{LONG}/experiments/failure_modes.json",
     "After GRPO the share with a failed call fell to {stages/sft+grpo/share_with_tool_error|pct}%, and those\n  without "
     "one were right {stages/sft+grpo/no_tool_error/correct_rate_when_answered|pct}% of the time"),
    ("README.md", f"{LONG}/experiments/failure_modes.json",
     "Split: {stages/sft/with_tool_rejection/rollouts} rollouts had a call the\n  tool rejected (right "
     "{stages/sft/with_tool_rejection/correct_rate_when_answered|pct}% when they answered), "
     "{stages/sft/repeats_only/rollouts} only repeated a call ({stages/sft/repeats_only/correct_rate_when_answered|pct}%)"),
    # README: the reference run against the previous one (another CPU), by bench/compare_runs.py
    ("README.md", f"{LONG}/experiments/sft_reference_vs_previous.json",
     "and scored {a/pass@1/mean}; here {b/pass@1/mean}, paired {paired_b_minus_a/mean} ({paired_b_minus_a/ci95/0} … "
     "+{paired_b_minus_a/ci95/1}); only {agreement/same_prediction} of {agreement/matched} predictions are the same and "
     "{agreement/same_rollout} of\n  {agreement/matched} whole rollouts"),
    ("README.md", f"{LONG}/experiments/grpo_reference_vs_previous.json",
     "its SFT+GRPO, {b/pass@1/mean}, is where that run's 20 steps ended ({a/pass@1/mean}; paired\n  "
     "+{paired_b_minus_a/mean}, {paired_b_minus_a/ci95/0} … +{paired_b_minus_a/ci95/1}"),
    # README: the cpu_long run's cost and memory, stage by stage
    ("README.md", "results/bench/pipeline_cpu_long.json",
     "the knowledge base {stages/0/seconds|min} min, the model {stages/1/seconds|min} min, 01 {stages/2/seconds|min} min, "
     "02 {stages/3/seconds|min} min, 03 {stages/4/seconds|min} min, 04 {stages/5/seconds|min} min"),
    ("README.md", "results/bench/pipeline_cpu_long.json",
     "peak {stages/6/peak_rss_mb} MiB in 05 ({stages/6/peak_rss_mb|gib} GiB, SFT\n  training), {stages/7/peak_rss_mb} MiB "
     "in 06 ({stages/7/peak_rss_mb|gib} GiB), {stages/4/peak_rss_mb} MiB in 03, {stages/8/peak_rss_mb} MiB in 07"),
    ("README.md", f"{LONG}/06_grpo.json", "GRPO {train/seconds|min} min at {train/seconds_per_step} s per step"),
    # notebook headers: the cpu_long rows
    ("notebooks/05_sft.py", f"{LONG}/05_sft.json",
     "1 epoch (384 steps) | {train/seconds|min} min ({train/tokens_per_second} tokens/s, loss {train/train_loss})"),
    ("notebooks/05_sft.py", f"{LONG}/05_sft.json",
     "base {eval/base/pass@1/mean}, SFT **{eval/sft/pass@1/mean}** (95% CI {eval/sft/pass@1/ci95/0}–"
     "{eval/sft/pass@1/ci95/1}; paired"),
    ("notebooks/05_sft.py", f"{LONG}/05_sft.json",
     "≤ 3 hops {eval/sft/pass@1_max3_hops/mean} ({eval/sft/pass@1_max3_hops/questions} questions), 2-hop "
     "{eval/sft/pass@1_by_hops/2/mean}, 3-hop {eval/sft/pass@1_by_hops/3/mean}"),
    ("notebooks/05_sft.py", f"{LONG}/05_sft.json", "after 192 trajectories {learning_curve/0/pass@1/mean}"),
    ("notebooks/06_grpo.py", f"{LONG}/06_grpo.json",
     "probe 6 min → {pool/learnable} learnable questions (10 of them 3-hop); {train/seconds_per_step} s/step; "
     "{train/dynamic_sampling/redrawn} redraws, {train/dynamic_sampling/uniform_kept} of {train/steps} groups"),
    ("notebooks/06_grpo.py", f"{LONG}/06_grpo.json",
     "training accuracy {reward_hacking/checkpoints/1/train_accuracy} → {reward_hacking/checkpoints/2/train_accuracy}"),
    ("notebooks/06_grpo.py", f"{LONG}/06_grpo.json",
     "held-out pass@1 {eval/grpo/pass@1/mean} (95% CI {eval/grpo/pass@1/ci95/0}–{eval/grpo/pass@1/ci95/1}) vs SFT "
     "{reward_hacking/checkpoints/0/heldout_pass@1}, paired {paired_minus_start/mean} ({paired_minus_start/ci95/0} … "
     "{paired_minus_start/ci95/1}), answer rate {reward_hacking/checkpoints/0/heldout_answer_rate} → "
     "{reward_hacking/checkpoints/2/heldout_answer_rate}: verdict \"none\""),
    # README: the cpu reference run's adapters on 60 held-out questions (results/cpu/experiments)
    ("README.md", f"{CPU}/experiments/eval60_needed_hops.json",
     "SFT {stages/sft/pass@1/mean} (95% CI {stages/sft/pass@1/ci95/0}–{stages/sft/pass@1/ci95/1}; 2-hop "
     "{stages/sft/pass@1_by_hops/2/mean} on {stages/sft/pass@1_by_hops/2/questions}\nquestions, 3-hop "
     "{stages/sft/pass@1_by_hops/3/mean} on {stages/sft/pass@1_by_hops/3/questions}), SFT+GRPO "
     "{stages/sft+grpo/pass@1/mean} ({stages/sft+grpo/pass@1/ci95/0}–{stages/sft+grpo/pass@1/ci95/1}), paired "
     "{paired_grpo_minus_sft/mean} ({paired_grpo_minus_sft/ci95/0} … {paired_grpo_minus_sft/ci95/1})"),
    # README: the 384-row pilot of the cpu_long reference run, and the reference against earlier runs (bench/compare_runs.py)
    ("README.md", f"{LONG}/experiments/05_sft_384_mixed.json",
     "trained to the same loss ({train/train_loss}) and scored {experiment/pass@1/mean}; that run scores the same\n  "
     "136 questions"),
    ("README.md", f"{LONG}/experiments/sft_384_reference_vs_pilot.json",
     "{agreement/same_prediction} of {agreement/matched}\n  predictions and {agreement/same_rollout} of {agreement/matched} "
     "whole rollouts are the same, paired {paired_b_minus_a/mean} ({paired_b_minus_a/ci95/0} … "
     "+{paired_b_minus_a/ci95/1})"),
    ("README.md", f"{LONG}/experiments/sft_384_vs_256.json",
     "256 of 2–3 hops {a/pass@1/mean}\n  (commit 5aa094d), 384 of 2–3 hops {b/pass@1/mean}. 384 − 256, paired: "
     "**+{paired_b_minus_a/mean} (+{paired_b_minus_a/ci95/0} … +{paired_b_minus_a/ci95/1})**, "
     "{paired_b_minus_a/better} questions\n  better, {paired_b_minus_a/worse} worse; on ≤ 3 hops "
     "+{paired_b_minus_a_max3_hops/mean} (+{paired_b_minus_a_max3_hops/ci95/0} … +{paired_b_minus_a_max3_hops/ci95/1})"),
    ("README.md", f"{LONG}/experiments/grpo_384_vs_256.json",
     "its SFT+GRPO was +{paired_b_minus_a/mean} (+{paired_b_minus_a/ci95/0} … +{paired_b_minus_a/ci95/1}) above "
     "that run's"),
    # README: notebook 05 rerun after the pipeline moved to a child process
    ("README.md", f"{LONG}/experiments/05_rerun_session20.json",
     "reached the same loss ({train/train_loss}); the SFT scored the same pass@1, {eval/sft/pass@1/mean}, with "
     "{vs_reference_sft/agreement/same_rollout} of {vs_reference_sft/agreement/matched} rollouts identical to"),
    ("README.md", f"{LONG}/experiments/05_rerun_session20.json",
     "{vs_reference_sft/agreement/same_prediction} of {vs_reference_sft/agreement/matched} predictions the same (paired "
     "{vs_reference_sft/paired_rerun_minus_reference/mean}, {vs_reference_sft/paired_rerun_minus_reference/ci95/0} … "
     "+{vs_reference_sft/paired_rerun_minus_reference/ci95/1}). Its process tree peaked at\n  {stage/peak_rss_mb} MiB"),
    ("README.md", f"{LONG}/experiments/05_rerun_session20.json",
     "{failure_modes_sft/with_tool_rejection/rollouts} of the 704 SFT rollouts\n  had a call the tool rejected (a name, "
     "id or relation that does not exist) and were right {failure_modes_sft/with_tool_rejection/correct_rate_when_answered|pct}% "
     "of the time when\n  they answered; {failure_modes_sft/repeats_only/rollouts} only repeated a call "
     "({failure_modes_sft/repeats_only/correct_rate_when_answered|pct}%); {failure_modes_sft/no_tool_error/rollouts} had "
     "no failed call ({failure_modes_sft/no_tool_error/correct_rate_when_answered|pct}%)"),
    # README: the 20-step cpu_long reference run (commit 0f4e337), kept whole in an experiment file
    ("README.md", f"{LONG}/experiments/reference_20steps.json",
     "SFT {evaluation/stages/sft/pass@1/mean} ({evaluation/stages/sft/pass@1/ci95/0}–{evaluation/stages/sft/pass@1/ci95/1}),"
     " ≤ 3 hops {evaluation/sft_pass@1_max3_hops/mean}; SFT+GRPO {evaluation/stages/sft+grpo/pass@1/mean} "
     "({evaluation/stages/sft+grpo/pass@1/ci95/0}–{evaluation/stages/sft+grpo/pass@1/ci95/1}), paired "
     "+{evaluation/paired/grpo_minus_sft/mean}\n  ({evaluation/paired/grpo_minus_sft/ci95/0} … "
     "+{evaluation/paired/grpo_minus_sft/ci95/1}), {evaluation/paired/grpo_minus_sft/better} questions better, "
     "{evaluation/paired/grpo_minus_sft/worse} worse"),
    ("README.md", f"{LONG}/experiments/reference_20steps.json",
     "the probe found {grpo/pool/learnable} learnable questions of {grpo/pool/candidates};\n  "
     "{grpo/train/dynamic_sampling/redrawn} redraws, {grpo/train/dynamic_sampling/uniform_kept} groups all right or all "
     "wrong; held-out pass@1 {grpo/reward_hacking/checkpoints/0/heldout_pass@1} → "
     "{grpo/reward_hacking/checkpoints/1/heldout_pass@1} → {grpo/reward_hacking/checkpoints/2/heldout_pass@1}"),
    ("README.md", f"{LONG}/experiments/reference_20steps.json",
     "{grpo/train/seconds_per_step} s per step; 05 {pipeline/stages/0/seconds|min} min, 06 "
     "{pipeline/stages/1/seconds|min} min: {pipeline/total_seconds|min} min for 05–07, over the budget; peak\n  "
     "{pipeline/stages/0/peak_rss_mb|gib} GiB in 05"),
    # README and notebook headers: the cpu reference run
    ("README.md", "results/bench/pipeline_cpu.json",
     "took **{total_seconds|min} min** on the 2 cores of this reference run"),
    ("README.md", "results/bench/pipeline_cpu.json",
     "01 {stages/2/seconds} s, 02 {stages/3/seconds} s, 03 {stages/4/seconds|min} min, 04 {stages/5/seconds|min} min, "
     "05 {stages/6/seconds|min} min,\n06 {stages/7/seconds|min} min, 07 {stages/8/seconds|min} min"),
    ("README.md", f"{CPU}/04_trajectories.json",
     "{kg_guided/accepted} of {kg_guided/trajectories} KG-guided trajectories accepted ({kg_guided/acceptance_rate|pct}%) "
     "over {kg_guided/questions_covered} questions, {kg_guided/specialties} specialties, {kg_guided/mean_tool_calls} tool "
     "calls each (paper 4.2); {grounding/grounded_commit_rate|pct}% of {grounding/commits} picks grounded; "
     "{tokens_sft/mean_tokens} tokens as SFT sees them (2-hop {tokens_sft/by_hops/2/mean_tokens} … 6-hop "
     "{tokens_sft/by_hops/6/mean_tokens}, longest {tokens_sft/max_tokens}: all fit"),
    ("notebooks/04_trajectories.py", f"{CPU}/04_trajectories.json",
     "{grounding/grounded_commit_rate|pct}% of {grounding/commits} picks grounded, {tokens_sft/mean_tokens} tokens per "
     "trajectory as SFT sees\n# them ({kg_guided/mean_tokens} with the JSON tool schemas the filter counts), the longest "
     "{tokens_sft/max_tokens}"),
    ("notebooks/04_trajectories.py", f"{CPU}/04_trajectories.json",
     "mean {tokens_sft/mean_tokens} tokens,\n# observations {tokens_sft/segments_share/observations|pct}%, calls "
     "{tokens_sft/segments_share/calls|pct}%, system prompt {tokens_sft/segments_share/system|pct}%, thoughts "
     "{tokens_sft/segments_share/thoughts|pct}%; 2-hop {tokens_sft/by_hops/2/mean_tokens} and 6-hop "
     "{tokens_sft/by_hops/6/mean_tokens}, {tokens_sft/share_within/2048|pct}%\n# within 2,048 and "
     "{tokens_sft/share_within/1200|pct}% within 1,200"),
    ("README.md", f"{CPU}/05_sft.json",
     "(mean {lengths/mean_tokens} tokens), {train/seconds|min} min at {train/tokens_per_second} tokens/s, loss "
     "{train/train_loss}"),
    ("README.md", f"{CPU}/05_sft.json",
     "{eval/base/seconds} s + {eval/sft/seconds} s: pass@1 {eval/base/pass@1/mean} vs {eval/sft/pass@1/mean} (95% CI "
     "{eval/sft/pass@1/ci95/0}–{eval/sft/pass@1/ci95/1}; pass@3 {eval/base/pass@k} vs {eval/sft/pass@k})"),
    ("README.md", f"{CPU}/05_sft.json",
     "{eval/sft/answer_rate|pct}% of SFT rollouts end with an answer, {eval/sft/stop_reasons/repeated_call} of 36 repeat"
     " a call twice; learning curve {learning_curve/0/pass@1/mean} after {learning_curve/0/trajectories} and "
     "{learning_curve/1/pass@1/mean} after {learning_curve/1/trajectories} trajectories"),
    ("README.md", f"{CPU}/06_grpo.json",
     "probe of {pool/candidates} training questions × {pool/probe_k} → {pool/learnable} learnable; "
     "{train/steps} GRPO steps × 1 question × 4 rollouts in passes of 1, {train/seconds_per_step} s/step"),
    ("README.md", f"{CPU}/06_grpo.json",
     "held-out pass@1 {reward_hacking/checkpoints/0/heldout_pass@1} → {reward_hacking/checkpoints/2/heldout_pass@1} "
     "(answer rate {reward_hacking/checkpoints/0/heldout_answer_rate} → {reward_hacking/checkpoints/2/heldout_answer_rate}),"
     " training reward {reward_hacking/reward_change}: `reward_hacking_check` says \"none\", paired "
     "{paired_minus_start/mean} ({paired_minus_start/ci95/0} … {paired_minus_start/ci95/1})"),
    ("README.md", f"{CPU}/06_grpo.json",
     "training accuracy {reward_hacking/checkpoints/1/train_accuracy} over steps 1–3, "
     "{reward_hacking/checkpoints/2/train_accuracy} over steps 4–6"),
    ("README.md", f"{CPU}/07_evaluation.json",
     "every rollout breaks the protocol, held-out pass@1 {stages/grpo_from_base/pass@1/mean} (as the base)"),
    ("notebooks/05_sft.py", f"{CPU}/05_sft.json",
     "(curriculum, mean {lengths/mean_tokens} tokens), no tool schemas, 1 epoch (64 steps) | {train/seconds|min} min "
     "({train/tokens_per_second} tokens/s, loss {train/train_loss}) | 12 held-out questions of ≤ 4 hops × 3 rollouts, "
     "base vs SFT, plus the learning curve: base {eval/base/pass@1/mean}, SFT {eval/sft/pass@1/mean} (95% CI "
     "{eval/sft/pass@1/ci95/0}–{eval/sft/pass@1/ci95/1})"),
    ("notebooks/06_grpo.py", f"{CPU}/06_grpo.json",
     "probe {pool/candidates} training questions × {pool/probe_k} → {pool/learnable} learnable; {train/steps} steps × 1 "
     "question × 4 rollouts in passes of 1 (≤ 3-hop training questions, ≤ 1,024 completion tokens), "
     "{train/seconds_per_step} s/step; then the held-out evaluation of notebook 05: "
     "{reward_hacking/checkpoints/0/heldout_pass@1} → {reward_hacking/checkpoints/1/heldout_pass@1} → "
     "{reward_hacking/checkpoints/2/heldout_pass@1}, training reward {reward_hacking/reward_change}"),
    ("notebooks/04_trajectories.py", f"{CPU}/04_trajectories.json",
     "| 2 per question ({kg_guided/trajectories}) | {kg_guided/accepted} "
     "({kg_guided/acceptance_rate|pct}%) over {kg_guided/questions_covered} questions, {kg_guided/specialties} "
     "specialties | ~{kg_guided/mean_tool_calls} (paper: 4.2)"),
    ("notebooks/07_evaluation.py", f"{CPU}/07_evaluation.json",
     "base {stages/base/pass@1/mean}, SFT {stages/sft/pass@1/mean}, SFT+GRPO {stages/sft+grpo/pass@1/mean}, "
     "GRPO from base {stages/grpo_from_base/pass@1/mean} on these 12 questions"),
    ("notebooks/07_evaluation.py", f"{LONG}/07_evaluation.json",
     "base {stages/base/pass@1/mean}, SFT {stages/sft/pass@1/mean} (95% CI {stages/sft/pass@1/ci95/0}–"
     "{stages/sft/pass@1/ci95/1}), SFT+GRPO {stages/sft+grpo/pass@1/mean} ({stages/sft+grpo/pass@1/ci95/0}–"
     "{stages/sft+grpo/pass@1/ci95/1}); paired SFT − base {paired/sft_minus_base/mean} ({paired/sft_minus_base/ci95/0}"
     " … {paired/sft_minus_base/ci95/1}), SFT+GRPO − SFT {paired/grpo_minus_sft/mean} ({paired/grpo_minus_sft/ci95/0}"
     " … {paired/grpo_minus_sft/ci95/1})"),
]


def lookup(data: Any, path: str) -> float:
    """The number at ``path`` in ``data`` (see the module docstring)."""
    path, _, unit = path.partition("|")
    value = data
    for key in path.split("/"):
        value = value[int(key)] if isinstance(value, list) else value[key]
    value = float(value)
    return {"": value, "min": value / 60, "pct": value * 100, "gib": value / 1024}[unit]


def shown_number(text: str) -> tuple[float, int]:
    """A number as a document shows it: its value and how many decimals it is given to."""
    text = text.replace("−", "-").replace(",", "")
    return float(text), len(text.partition(".")[2])


def claim_pattern(template: str) -> re.Pattern[str]:
    parts = PLACEHOLDER.split(template.replace("−", "-"))
    return re.compile("".join(re.escape(p) if i % 2 == 0 else NUMBER for i, p in enumerate(parts)))


def check_claim(document: str, data: Any, template: str) -> list[str]:
    """Every number of ``template`` that ``document`` shows wrongly (empty: the claim holds); an
    AssertionError when the document has no text of the claim's shape at all."""
    match = claim_pattern(template).search(document.replace("−", "-"))
    assert match, f"no text of the shape {template!r}"
    wrong = []
    for path, shown in zip(PLACEHOLDER.findall(template), match.groups()):
        number, decimals = shown_number(shown)
        value = lookup(data, path)
        if abs(number - value) > 0.5 * 10 ** -decimals + 1e-9:
            wrong.append(f"{path}: shows {shown}, the metrics say {value:.6g}")
    return wrong


@pytest.mark.parametrize("document, metrics, template", CLAIMS,
                         ids=[f"{d}:{i}" for i, (d, _, _) in enumerate(CLAIMS)])
def test_quoted_numbers_match_the_committed_metrics(document: str, metrics: str, template: str) -> None:
    text = (REPO_ROOT / document).read_text(encoding="utf-8")
    data = json.loads((REPO_ROOT / metrics).read_text(encoding="utf-8"))
    wrong = check_claim(text, data, template)
    assert not wrong, f"{document} quotes {metrics} wrongly: " + "; ".join(wrong)


def test_a_stale_or_missing_number_is_caught() -> None:
    data = {"eval": {"pass@1": {"mean": 0.1583, "ci95": [0.0833, 0.2417]}}, "train": {"seconds": 1538.2}}
    template = "pass@1 {eval/pass@1/mean} ({eval/pass@1/ci95/0}–{eval/pass@1/ci95/1}) in {train/seconds|min} min"
    assert check_claim("pass@1 0.158 (0.083–0.242) in 25.6 min", data, template) == []
    assert check_claim("pass@1 0.16 (0.08–0.24) in 26 min", data, template) == []          # coarser rounding
    wrong = check_claim("pass@1 0.175 (0.083–0.242) in 25.6 min", data, template)
    assert wrong == ["eval/pass@1/mean: shows 0.175, the metrics say 0.1583"]
    assert check_claim("pass@1 0.158 (0.083–0.242) in 27.0 min", data, template) != []
    with pytest.raises(AssertionError, match="no text of the shape"):
        check_claim("pass@1 was 0.158", data, template)
    assert lookup({"a": [{"b": 0.5}]}, "a/0/b|pct") == 50.0
    assert lookup({"m": 19326.0}, "m|gib") == pytest.approx(18.873, abs=1e-3)
