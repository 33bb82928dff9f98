"""The OpenVINO pipeline in a child process (medkit.openvino_engine.PipelineProcess) against the same pipeline in
the notebook's own process, where it ran before: what the process costs, and what a hang costs.

Two modes, each in its own process (``medkit.pipeline.run_modes``), one run, the profile's model (no adapter,
so no data is needed) exported once:

* ``in_process`` (the baseline): the pipeline built in this process and called directly
  (:func:`medkit.openvino_engine.build_pipeline`, :func:`medkit.openvino_engine.handle_request`), as every
  OpenVINO backend ran until 2026-12-06; a hung call there can only be abandoned with its thread.
* ``process``: :class:`medkit.openvino_engine.OpenVINOBackend` as the kit runs it now.

Each mode builds the pipeline (seconds to the first request), then generates ``ROUNDS`` rounds of
``PROMPTS`` agent-sized prompts (the agent's system prompt and a question) × ``NEW_TOKENS`` sampled tokens
(temperature 0.3, one seed per row, as the evaluation samples). Reported: build seconds, generation
seconds and tokens/s, the peak RSS of the process tree, and whether both modes generated the same tokens.
``process`` also measures a hang: a pipeline process that stops working is seen and killed
(``GENERATE_IDLE_S``), and the RSS of the tree before and after shows its memory returned.

``python bench/bench_engine_process.py [profile]`` -> ``results/bench/engine_process.json``.
Run on a quiet machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from medkit import io as mio
from medkit import paths
from medkit.pipeline import PeakMemory, bench_entry, machine_facts, run_modes, tree_rss_bytes

MODES = ("in_process", "process")
BASELINE = "in_process"
PROMPTS = 64
ROUNDS = 3
NEW_TOKENS = 160  # the agent's turn limit (TURN_MAX_NEW_TOKENS)
TEMPERATURE = 0.3
SEED = 13


def _setup(profile: str) -> tuple[Any, Path, list[list[int]]]:
    from medkit import agent as A
    from medkit import openvino_engine as OV
    from medkit.adapters import load_for_inference
    from medkit.llm import chat_prompt_ids

    model, tok = load_for_inference(profile, None, bf16=False)
    folder = OV.export(model, tok)
    prompts = [chat_prompt_ids(tok, [
        {"role": "system", "content": A.SYSTEM_PROMPT},
        {"role": "user", "content": f"Question {i}: which rare disease, described in the knowledge base, is "
                                    f"linked to gene number {i} and to the clinical feature numbered {3 * i}?"}])
        for i in range(PROMPTS)]
    return tok, folder, prompts


def _tree_rss_mb() -> float:
    return round(tree_rss_bytes() / 2**20, 1)


class _InProcess:
    """The baseline's pipeline: built and called in this process (in place of PipelineProcess)."""

    def __init__(self, model_path: str | Path, scheduler: dict[str, Any], properties: dict[str, Any]) -> None:
        from medkit import openvino_engine as OV

        self.pipe = OV.build_pipeline(str(model_path), scheduler, properties)
        self.alive = True

    def call(self, kind: str, *args: Any, **_: Any) -> Any:
        from medkit import openvino_engine as OV

        return OV.handle_request(self.pipe, kind, args)

    def close(self) -> None:
        self.pipe, self.alive = None, False


def run_mode(mode: str, profile: str = "cpu") -> dict[str, Any]:
    from medkit import engine as EN
    from medkit import openvino_engine as OV

    tok, folder, prompts = _setup(profile)
    precision = EN.resolve_precision("auto", "openvino")
    out: dict[str, Any] = {"mode": mode, "precision": precision, "prompts": len(prompts), "rounds": ROUNDS,
                           "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1)}
    if mode == "in_process":
        OV.PipelineProcess = _InProcess  # what OpenVINOBackend builds its pipeline with (this process only)
    elif mode != "process":
        raise SystemExit(f"unknown mode {mode!r}: {', '.join(MODES)}")
    with PeakMemory() as peak:
        t0 = time.perf_counter()
        backend = OV.OpenVINOBackend(folder, tok, precision=precision, batch_size=64, progress=False)
        out["build_seconds"] = round(time.perf_counter() - t0, 2)
        tokens: list[list[int]] = []
        t0 = time.perf_counter()
        for r in range(ROUNDS):
            tokens += backend.generate_ids(prompts, max_new_tokens=NEW_TOKENS, temperature=TEMPERATURE,
                                           seed=[SEED + 1000 * r + i for i in range(len(prompts))])
        seconds = time.perf_counter() - t0
    n = sum(map(len, tokens))
    out.update({"generate_seconds": round(seconds, 2), "generated_tokens": n,
                "generated_tokens_per_second": round(n / seconds, 1), "peak_tree_rss_mb": round(peak.peak_bytes / 2**20, 1),
                "tokens_digest": hashlib.sha256(json.dumps(tokens).encode()).hexdigest(), "tree_rss_mb_after_generation": _tree_rss_mb()})
    if mode == "process":
        out["hang"] = _measure_hang(backend)
    backend.close()
    return out


def _measure_hang(backend: Any) -> dict[str, Any]:
    """Make the pipeline process stop working (SIGSTOP: every thread idle, as the sampler's hang) during a call
    and time how long the backend takes to see it, kill the process and rerun the batch in a new one."""
    import signal
    import threading

    prompts = [[1, 2, 3, 4]] * 8
    before = _tree_rss_mb()
    hung_pid = backend.pipe.process.pid
    threading.Timer(0.5, lambda: os.kill(hung_pid, signal.SIGSTOP)).start()
    t0 = time.perf_counter()
    # long enough to be mid-call when stopped
    backend.generate_ids(prompts * 8, max_new_tokens=NEW_TOKENS, temperature=TEMPERATURE, seed=SEED)
    seconds = time.perf_counter() - t0
    return {"idle_s": backend.idle_s, "seconds_to_recover": round(seconds, 1), "restarts": backend.restarts,
            "hung_process_gone": not _exists(hung_pid), "tree_rss_mb_before": before,
            "tree_rss_mb_after": _tree_rss_mb()}


def _exists(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main(profile: str = "cpu") -> dict[str, Any]:
    load_before = os.getloadavg()
    runs = run_modes(__file__, MODES, profile)
    base, new = runs[BASELINE], runs["process"]
    result = {
        "benchmark": "the OpenVINO pipeline in a child process vs in the caller's process (medkit.openvino_engine)",
        "profile": profile, "baseline": f"{BASELINE}: the pipeline in the notebook's process, as before 2026-12-06",
        "runs": runs,
        "over_baseline": {"generated_tokens_per_second": round(new["generated_tokens_per_second"]
                                                               / base["generated_tokens_per_second"], 3),
                          "build_seconds": round(new["build_seconds"] / base["build_seconds"], 2),
                          "peak_tree_rss": round(new["peak_tree_rss_mb"] / base["peak_tree_rss_mb"], 3)},
        "same_tokens": base["tokens_digest"] == new["tokens_digest"],
        "settings": {"prompts": PROMPTS, "rounds": ROUNDS, "new_tokens": NEW_TOKENS, "temperature": TEMPERATURE},
        "machine": {**machine_facts(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "command": f"python bench/bench_engine_process.py {profile}",
        "provenance": mio.provenance(profile=profile),
    }
    mio.write_json(paths.results_dir() / "bench" / "engine_process.json", result)
    print(json.dumps({k: result[k] for k in ("over_baseline", "same_tokens")}))
    return result


if __name__ == "__main__":
    bench_entry(run_mode, main)
