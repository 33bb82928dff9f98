"""Local generation throughput: batched vs unbatched greedy decoding with SmolLM2-135M-Instruct.

The real converted SmolLM2-135M-Instruct (fp32, 2 torch threads) answers 16 short medical
prompts through :class:`medkit.llm.LocalTransformersBackend`, 64 new tokens each
(``min_new_tokens=64`` suppresses an early end of turn, and the generated tokens are counted,
not assumed). Baseline: unbatched (``batch_size=1``, one conversation at a time); compared with
``batch_size`` 8 and 16. Reports generated tokens/s of each and the ratio to the baseline, and
how many greedy replies are identical to the unbatched ones. Writes ``results/bench/generation.json``.

Any competing CPU load slows 2-thread torch badly: run on a quiet machine and quote ratios
from one run. ``--repeats N`` keeps the fastest of N runs per configuration.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from medkit import io as mio
from medkit.llm import Completion, LocalTransformersBackend
from medkit.model import load_model
from medkit.paths import results_dir

NEW_TOKENS = 64
THREADS = 2
BATCH_SIZES = (1, 8, 16)  # 1 = the unbatched baseline
PROMPTS = [
    "What is the first-line treatment for uncomplicated hypertension?",
    "Explain what a BRCA1 mutation means for cancer risk.",
    "What are the typical symptoms of Addison's disease?",
    "How does metformin lower blood glucose?",
    "Name two complications of untreated celiac disease.",
    "What is the difference between type 1 and type 2 diabetes?",
    "Which enzyme is deficient in phenylketonuria?",
    "Describe the mechanism of action of beta blockers.",
    "What causes sickle cell anemia?",
    "How is Wilson disease diagnosed?",
    "What is the role of the CFTR protein?",
    "List common side effects of statins.",
    "What is Marfan syndrome?",
    "How do ACE inhibitors cause a dry cough?",
    "What is the inheritance pattern of Huntington disease?",
    "Which vaccine prevents cervical cancer?",
]


def conversations() -> list[list[dict]]:
    return [[{"role": "user", "content": p}] for p in PROMPTS]


def timed_run(backend: LocalTransformersBackend, convs: list[list[dict]],
              repeats: int) -> tuple[float, list[Completion]]:
    """Fastest wall time of ``repeats`` greedy runs, and the completions of the last run."""
    best, out = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = backend.generate(convs, max_new_tokens=NEW_TOKENS)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="keep the fastest of N runs per batch size")
    repeats = max(1, parser.parse_args(argv).repeats)
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    model, tokenizer = load_model("cpu")
    convs = conversations()
    warm = LocalTransformersBackend(model, tokenizer, batch_size=4, progress=False)
    warm.generate(convs[:4], max_new_tokens=8)  # first-call allocations and kernel selection

    runs: list[dict] = []
    baseline: list[Completion] = []
    for batch_size in BATCH_SIZES:
        backend = LocalTransformersBackend(model, tokenizer, batch_size=batch_size, progress=False,
                                           generation_kwargs={"min_new_tokens": NEW_TOKENS})
        seconds, out = timed_run(backend, convs, repeats)
        if batch_size == 1:
            baseline = out
        tokens = sum(c.n_completion_tokens for c in out)
        runs.append({
            "batch_size": batch_size,
            "seconds": round(seconds, 2),
            "completion_tokens": tokens,
            "prompt_tokens": sum(c.n_prompt_tokens for c in out),
            "every_reply_has_64_tokens": all(c.n_completion_tokens == NEW_TOKENS for c in out),
            "tokens_per_s": round(tokens / seconds, 2),
            "replies_identical_to_unbatched": sum(a.text == b.text for a, b in zip(out, baseline)),
        })
        print(f"batch_size={batch_size:>2}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s",
              flush=True)
    base_tps = runs[0]["tokens_per_s"]
    for run in runs:
        run["speedup_vs_unbatched"] = round(run["tokens_per_s"] / base_tps, 2)

    result = {
        "benchmark": "local greedy generation throughput, batched vs unbatched (generated tokens/s)",
        "model": "SmolLM2-135M-Instruct (converted fp32 checkpoint, medkit.model.load_model('cpu'))",
        "baseline": "unbatched: batch_size=1, one conversation per generate step",
        "prompts": len(convs),
        "new_tokens_per_prompt": NEW_TOKENS,
        "generation": {"decoding": "greedy", "min_new_tokens": NEW_TOKENS, "padding": "left",
                       "repeats_best_of": repeats},
        "runs": runs,
        "sample_reply": baseline[0].text if baseline else "",
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1_5_15min_before": [round(x, 2) for x in load_before],
                    "load_average_1_5_15min_after": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    out_path = results_dir() / "bench" / "generation.json"
    mio.write_json(out_path, result)
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
