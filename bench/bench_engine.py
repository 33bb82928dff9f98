"""Generation engines on 2 cores: which one, and how much faster the agent's rollouts get.

Four parts, each mode in its own process (``medkit.pipeline.run_modes``), one run:

1. ``candidates`` — the engines that install as wheels, on the same 16 agent-sized prompts
   (system prompt + a held-out question, SFT policy), 64 greedy new tokens (end of turn
   suppressed), batch 1 and batch 16: transformers fp32 and bf16 (the reference), OpenVINO GenAI
   float32 and bf16 (float16 weights, prefix cache off), CTranslate2 float32 and int8, onnxruntime-genai
   fp32 and int4 (its model builder). Generated tokens/s and how many greedy continuations equal
   transformers fp32's.
2. ``agent_*`` — the real rollout path: the same 64 held-out questions, one greedy agent rollout
   each (medkit.agent.run_agent) with the cpu profile's SFT policy and real tools, the cpu
   profile's harness settings. Baseline ``agent_transformers_bf16``: the transformers backend
   exactly as the cpu profile configures it (bf16 where the CPU has it, batch 16). Rollouts/s,
   generated tokens/s, and agreement of final answers with the baseline and with transformers
   fp32 (``agent_transformers_fp32``). The chosen path is ``agent_openvino_bf16_b64`` (OpenVINO
   GenAI, continuous batching with prefix caching, bf16 compute like the baseline);
   ``agent_openvino_fp32_b64`` is the same in float32; the others are ablations on 16 questions.
3. ``export`` — the cost of bringing a policy to the engine: merge the LoRA adapter, digest the
   weights, convert / export (fresh cache), load, parity check (full, and the re-export check GRPO
   runs after each optimizer step); then a cached reload.
4. ``mismatch`` — sampler vs trainer numerics on real rollouts: per-token log-prob gap between
   each engine precision and the GRPO trainer's own forward (nf4 base + LoRA, bf16 autocast).

Writes ``results/bench/engine.json``. Run on a quiet machine: 2-thread kernels slow down badly
under competing load. ``python bench/bench_engine.py [profile]``; one part: ``--mode NAME``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medkit import io as mio
from medkit import paths
from medkit.pipeline import bench_entry, machine_facts, run_modes

N_QUESTIONS = int(os.environ.get("MEDKIT_BENCH_QUESTIONS", 64))  # a smaller number only to try the script out
NEW_TOKENS = 64
N_PROMPTS = min(16, N_QUESTIONS)
# mode -> engine, precision, batch size; CTranslate2: static prefix, max prompt-length spread in a batch;
# OpenVINO: prefix caching (KV blocks of earlier turns and of the shared system turn reused)
AGENT_MODES: dict[str, dict[str, Any]] = {
    "agent_transformers_bf16": {"engine": "transformers", "precision": None, "batch": 16},  # the baseline: the cpu profile today
    "agent_transformers_fp32": {"engine": "transformers", "precision": "fp32", "batch": 16},
    "agent_openvino_bf16_b64": {"engine": "openvino", "precision": "bf16", "batch": 64, "prefix_caching": True},  # the default path
    "agent_openvino_fp32_b64": {"engine": "openvino", "precision": "float32", "batch": 64, "prefix_caching": True},
    "agent_openvino_fp32_b64_no_prefix_cache": {"engine": "openvino", "precision": "float32", "batch": 64,
                                                "prefix_caching": False},
    "agent_ct2_float32_b16_any_spread": {"engine": "ctranslate2", "precision": "float32", "batch": 16,
                                         "static_prefix": True, "max_spread": None},  # the engine swapped in alone
    "agent_ct2_float32_b64": {"engine": "ctranslate2", "precision": "float32", "batch": 64, "static_prefix": True,
                              "max_spread": 64},
    "agent_ct2_int8_b64": {"engine": "ctranslate2", "precision": "int8", "batch": 64, "static_prefix": False,
                           "max_spread": 64},
}
BASELINE = "agent_transformers_bf16"
CHOSEN = "agent_openvino_bf16_b64"  # the default path: ENGINE=auto, ENGINE_PRECISION=auto on a bf16 CPU (README)
# ablation modes run on the first 16 questions only (their agreement counts say "of 16"): time on 2 cores
ABLATION_QUESTIONS = {"agent_transformers_fp32": 16, "agent_openvino_fp32_b64_no_prefix_cache": 16,
                      "agent_ct2_float32_b16_any_spread": 16, "agent_ct2_float32_b64": 16, "agent_ct2_int8_b64": 16}
MODES = ["candidates", *AGENT_MODES, "export", "mismatch"]


# --------------------------------------------------------------------------- shared


def _sft(profile: str) -> tuple[dict[str, Any], Path, Path]:
    from medkit import profiles

    data = paths.profile_data_dir(profile)
    adapter = data / "sft" / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise SystemExit(f"{adapter}: no SFT adapter; run notebook 05 of the {profile} profile first")
    return profiles.resolve(profile, "sft"), data, adapter


def _questions(data: Path) -> list[dict[str, Any]]:
    from medkit import evaluation as E

    return E.select_questions(mio.read_jsonl(data / "questions_test.jsonl"), N_QUESTIONS)


class Counting:
    """A ChatBackend wrapper that counts generated tokens and generate() seconds."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.name = backend, backend.name
        self.tokens = self.calls = 0
        self.seconds = 0.0

    def generate(self, conversations: list, **kwargs: Any) -> list:
        t0 = time.perf_counter()
        out = self.backend.generate(conversations, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.tokens += sum(c.n_completion_tokens for c in out)
        return out


# --------------------------------------------------------------------------- 1 candidates


def _agent_prompts(profile: str, tokenizer: Any) -> list[list[int]]:
    from medkit import agent as A

    _, data, _ = _sft(profile)
    qs = _questions(data)[:N_PROMPTS]
    convs = [A.to_text_messages([{"role": "system", "content": A.SYSTEM_PROMPT},
                                 {"role": "user", "content": q["question"]}], []) for q in qs]
    return [list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
            for c in convs]


def _torch_generate(model: Any, prompts: list[list[int]], batch: int, pad: int) -> list[list[int]]:
    import torch

    out: list[list[int]] = []
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo:lo + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, pad_token_id=pad)
        out += gen[:, width:].tolist()
    return out


def _ortgenai_build(src: Path, digest: str, precision: str) -> Path | None:
    """onnxruntime-genai's model builder on a saved checkpoint (cached by weights digest); None if not installed."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is None:
        return None
    out = paths.cache_dir() / "engines" / f"ortgenai-{digest[:24]}-{precision}"
    if not (out / "genai_config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(tmp),
                        "-p", precision, "-e", "cpu", "-c", str(tmp / "hf_cache")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp / "hf_cache", ignore_errors=True)
        os.replace(tmp, out)
    # SmolLM2 pads with <|im_end|>, which also ends every chat turn inside a prompt: pad with an unused id
    cfg = json.loads((out / "genai_config.json").read_text())
    cfg["model"]["pad_token_id"] = 0
    (out / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def _ortgenai_generate(folder: Path, prompts: list[list[int]], batch: int, threads: int) -> list[list[int]]:
    import numpy as np
    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    cfg.clear_providers()
    model = og.Model(cfg)
    out: list[list[int]] = []
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo:lo + batch]
        width = max(len(p) for p in chunk)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=width + NEW_TOKENS, min_length=width + NEW_TOKENS, do_sample=False,
                                  batch_size=len(chunk))
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([[0] * (width - len(p)) + p for p in chunk], dtype=np.int32))
        rows: list[list[int]] = [[] for _ in chunk]
        while not gen.is_done():
            gen.generate_next_token()
            for r, t in enumerate(gen.get_next_tokens()):
                rows[r].append(int(t))
        out += [r[:NEW_TOKENS] for r in rows]
    return out


def run_candidates(profile: str) -> dict[str, Any]:
    import torch

    from medkit import engine as EN
    from medkit import openvino_engine as OV
    from medkit.adapters import load_for_inference

    _, _, adapter = _sft(profile)
    model, tok = load_for_inference(profile, adapter, bf16=False)
    prompts = _agent_prompts(profile, tok)
    threads = torch.get_num_threads()
    results: dict[str, Any] = {"prompts": len(prompts), "mean_prompt_tokens": round(statistics.fmean(map(len, prompts)), 1),
                               "new_tokens": NEW_TOKENS, "threads": threads, "runs": {}}
    reference: dict[int, list[list[int]]] = {}

    def record(name: str, batch: int, fn: Any) -> None:
        fn(prompts[:2])  # warm-up
        t0 = time.perf_counter()
        outs = fn(prompts)
        dt = time.perf_counter() - t0
        ref = reference.setdefault(batch, outs) if name == "transformers_fp32" else reference.get(batch)
        results["runs"][f"{name}_b{batch}"] = {
            "engine": name, "batch": batch, "seconds": round(dt, 2),
            "tokens_per_s": round(sum(len(o) for o in outs) / dt, 1),
            "greedy_identical_to_transformers_fp32": None if ref is None else sum(a == b for a, b in zip(outs, ref))}

    pad = tok.pad_token_id
    for batch in (1, 16):
        record("transformers_fp32", batch, lambda p, b=batch: _torch_generate(model, p, b, pad))
    bf16 = load_for_inference(profile, adapter, bf16=True)[0]
    for batch in (1, 16):
        record("transformers_bf16", batch, lambda p, b=batch: _torch_generate(bf16, p, b, pad))
    del bf16
    for precision in EN.ENGINE_PRECISIONS["ctranslate2"]:
        backend = EN.engine_backend(model, tok, compute_type=precision, progress=False)
        results[f"ctranslate2_{precision}_parity"] = backend.parity
        for batch in (1, 16):
            backend.batch_size = batch
            record(f"ctranslate2_{precision}", batch,
                   lambda p: backend.generate_ids(p, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS))
        del backend
    # OpenVINO GenAI without its prefix cache: every run here computes its prompts in full
    for precision in EN.ENGINE_PRECISIONS["openvino"]:
        ov_backend = OV.OpenVINOBackend(OV.export(model, tok), tok, precision=precision, batch_size=16,
                                        prefix_caching=False, progress=False)
        results[f"openvino_{precision}_parity"] = OV.check_parity(model, tok, ov_backend)
        record(f"openvino_{precision}", 1, lambda p, b=ov_backend: [
            b.generate_ids([x], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)[0] for x in p])
        record(f"openvino_{precision}", 16, lambda p, b=ov_backend: b.generate_ids(
            p, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS))
        del ov_backend
    digest = EN.weights_digest(model, tok)
    with tempfile.TemporaryDirectory() as hf:
        src = Path(hf) / "merged"
        model.save_pretrained(src)
        tok.save_pretrained(src)
        for precision in ("fp32", "int4"):
            t0 = time.perf_counter()
            try:
                folder = _ortgenai_build(src, digest, precision)
            except (subprocess.CalledProcessError, OSError) as e:
                results[f"onnxruntime_genai_{precision}"] = f"build failed: {e}"
                continue
            if folder is None:
                results["onnxruntime_genai"] = "not installed (pip install onnxruntime-genai onnx onnx-ir)"
                break
            results[f"onnxruntime_genai_{precision}_build_seconds"] = round(time.perf_counter() - t0, 1)
            for batch in (1, 16):
                record(f"onnxruntime_genai_{precision}", batch,
                       lambda p, f=folder, b=batch: _ortgenai_generate(f, p, b, threads))
    return results


# --------------------------------------------------------------------------- 2 agent rollouts


def run_agent_mode(mode: str, profile: str) -> dict[str, Any]:
    import torch

    from medkit import agent as A
    from medkit import engine as EN
    from medkit import evaluation as E
    from medkit import openvino_engine as OV
    from medkit import tools as T
    from medkit.llm import LocalTransformersBackend
    from medkit.adapters import load_for_inference

    spec = AGENT_MODES[mode]
    engine, precision, batch = spec["engine"], spec["precision"], spec["batch"]
    params, data, adapter = _sft(profile)
    questions = _questions(data)[:ABLATION_QUESTIONS.get(mode, N_QUESTIONS)]
    _, toolbox = T.open_tools(data)
    t0 = time.perf_counter()
    if engine == "transformers":
        model, tok = load_for_inference(profile, adapter, bf16=params["BF16"] if precision is None else False)
        backend = LocalTransformersBackend(model, tok, batch_size=batch, progress=False)
        dtype = str(model.dtype)
    elif engine == "openvino":
        model, tok = load_for_inference(profile, adapter, bf16=False)
        folder = OV.export(model, tok)
        backend = OV.OpenVINOBackend(folder, tok, precision=precision, batch_size=batch,
                                     prefix_caching=spec["prefix_caching"], progress=False)
        backend.parity = OV.check_parity(model, tok, backend)
        dtype = f"{precision} (weights {OV.WEIGHT_PRECISION})"
        del model
    else:
        model, tok = load_for_inference(profile, adapter, bf16=False)
        backend = EN.engine_backend(model, tok, compute_type=precision, batch_size=batch, progress=False)
        backend.static_prefix, backend.max_spread = spec["static_prefix"], spec["max_spread"]
        dtype = precision
        del model
    ready = time.perf_counter() - t0
    counting = Counting(backend)
    cfg = A.AgentConfig(max_calls=int(params["EVAL_MAX_CALLS"]), max_new_tokens=int(params["EVAL_MAX_NEW_TOKENS"]),
                        token_budget=int(params["MAX_LENGTH"]) + 2048, temperature=0.0)
    schemas = None if params["TOOLS_IN_PROMPT"] else []
    t0 = time.perf_counter()
    rollouts = A.run_agent(counting, toolbox, questions, config=cfg, schemas=schemas, progress=False)
    seconds = time.perf_counter() - t0
    rows = [{"question_id": r["question_id"], "prediction": r["prediction"], "stop_reason": r["stop_reason"],
             "n_tool_calls": r["n_tool_calls"], "n_model_calls": r["n_model_calls"],
             "correct": E.judge(r["prediction"], q, resolve=toolbox.resolve_ids).correct}
            for r, q in zip(rollouts, questions)]
    return {"mode": mode, **spec, "dtype": dtype, "batch_size": batch,
            "parity": getattr(backend, "parity", None),
            "rollouts": len(rows), "seconds": round(seconds, 1), "setup_seconds": round(ready, 1),
            "rollouts_per_second": round(len(rows) / seconds, 4), "generated_tokens": counting.tokens,
            "generated_tokens_per_second": round(counting.tokens / seconds, 1),
            "generate_seconds": round(counting.seconds, 1), "generate_calls": counting.calls,
            "tool_calls": sum(r["n_tool_calls"] for r in rows), "model_calls": sum(r["n_model_calls"] for r in rows),
            "correct": sum(r["correct"] for r in rows), "torch_threads": torch.get_num_threads(), "rows": rows}


# --------------------------------------------------------------------------- 3 export, 4 mismatch


def run_export(profile: str) -> dict[str, Any]:
    from medkit import engine as EN
    from medkit import openvino_engine as OV
    from medkit.adapters import load_for_inference

    _, _, adapter = _sft(profile)
    with tempfile.TemporaryDirectory() as cache:
        EN_cache = EN.cache_dir
        EN.cache_dir = lambda: Path(cache)  # a fresh conversion cache: the cost of a first export
        try:
            t0 = time.perf_counter()
            model, tok = load_for_inference(profile, adapter, bf16=False)
            merge = time.perf_counter() - t0
            t0 = time.perf_counter()
            digest = EN.weights_digest(model, tok)
            t_digest = time.perf_counter() - t0
            out = {"merge_seconds": round(merge, 2), "digest_seconds": round(t_digest, 2)}
            for precision in EN.ENGINE_PRECISIONS["ctranslate2"]:
                t0 = time.perf_counter()
                folder = EN.convert(model, tok, precision, digest=digest)
                t_conv = time.perf_counter() - t0
                t0 = time.perf_counter()
                parity = EN.check_parity(model, tok, folder, precision)
                t_par = time.perf_counter() - t0
                t0 = time.perf_counter()
                EN.engine_backend(model, tok, compute_type=precision, progress=False)
                cached = time.perf_counter() - t0
                out[precision] = {"convert_seconds": round(t_conv, 2), "parity_seconds": round(t_par, 2),
                                  "cached_reload_seconds": round(cached, 2), "parity": parity,
                                  "model_bin_mb": round((folder / "model.bin").stat().st_size / 2**20, 1)}
            t0 = time.perf_counter()
            folder = OV.export(model, tok, digest=digest, root=Path(cache))
            t_conv = time.perf_counter() - t0
            t0 = time.perf_counter()
            backend = OV.OpenVINOBackend(folder, tok, progress=False)
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            parity = OV.check_parity(model, tok, backend)
            t_par = time.perf_counter() - t0
            t0 = time.perf_counter()
            OV.check_parity(model, tok, backend, greedy=False)
            t_scored = time.perf_counter() - t0
            out["openvino"] = {"export_seconds": round(t_conv, 2), "load_seconds": round(t_load, 2),
                               "parity_seconds": round(t_par, 2), "reexport_parity_seconds": round(t_scored, 2),
                               "parity": parity, "weights": OV.WEIGHT_PRECISION,
                               "gguf_mb": round((folder / OV.GGUF_FILE).stat().st_size / 2**20, 1)}
            bf16 = OV.OpenVINOBackend(folder, tok, precision="bf16", progress=False)
            out["openvino_bf16"] = {"parity": OV.check_parity(model, tok, bf16)}
        finally:
            EN.cache_dir = EN_cache
    return out


def run_mismatch(profile: str) -> dict[str, Any]:
    """Per-token log-prob gap between each sampler and the GRPO trainer on real greedy rollouts."""
    import torch

    from medkit import agent as A
    from medkit import engine as EN
    from medkit import grpo as G
    from medkit import tools as T
    from medkit.adapters import load_for_inference

    params, data, adapter = _sft(profile)
    _, toolbox = T.open_tools(data)
    model, tok = load_for_inference(profile, adapter, bf16=False)
    engines = {p: EN.engine_backend(model, tok, compute_type=p, progress=False) for p in EN.ENGINE_PRECISIONS["ctranslate2"]}
    cfg = A.AgentConfig(max_calls=int(params["EVAL_MAX_CALLS"]), max_new_tokens=int(params["EVAL_MAX_NEW_TOKENS"]),
                        temperature=0.0)
    rollouts = A.run_agent(engines["float32"], toolbox, _questions(data)[:8], config=cfg, schemas=[], progress=False)
    seqs = []
    for r in rollouts:
        text = A.to_text_messages(r["messages"], [])
        prompt = list(tok.apply_chat_template(text[:2], add_generation_prompt=True, tokenize=True, return_dict=False))
        full = list(tok.apply_chat_template(text, tokenize=True, return_dict=False))
        seqs.append((full, len(prompt)))
    trainer, _, _ = G.load_policy(profile, adapter, {**params, "QUANTIZE": "nf4"})
    trainer.eval()

    def trainer_logps(ids: list[int], start: int, bf16: bool) -> list[float]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return EN.source_logprobs(trainer, ids, start)

    out: dict[str, Any] = {"rollouts": len(seqs), "tokens": sum(len(s) - p for s, p in seqs)}
    ref = {bf: [trainer_logps(s, p, bf) for s, p in seqs] for bf in (True, False)}
    samplers = {f"ctranslate2_{p}": [e.score(s)[p - 1:] for s, p in seqs] for p, e in engines.items()}
    samplers["transformers_merged_fp32"] = [EN.source_logprobs(model, s, p) for s, p in seqs]
    for name, logps in samplers.items():
        for bf in (True, False):
            gaps = [a - b for xs, ys in zip(logps, ref[bf]) for a, b in zip(xs, ys)]
            out[f"{name}_vs_trainer_{'bf16' if bf else 'fp32'}"] = {
                "mean_abs_logprob_gap": round(statistics.fmean(abs(g) for g in gaps), 4),
                "mean_signed_logprob_gap": round(statistics.fmean(gaps), 4)}
    return out


# --------------------------------------------------------------------------- driver


def run_mode(mode: str, profile: str = "cpu") -> dict[str, Any]:
    if mode == "candidates":
        return run_candidates(profile)
    if mode in AGENT_MODES:
        return run_agent_mode(mode, profile)
    if mode == "export":
        return run_export(profile)
    if mode == "mismatch":
        return run_mismatch(profile)
    raise SystemExit(f"unknown mode {mode!r}: {', '.join(MODES)}")


def agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    pairs = list(zip(a["rows"], b["rows"]))
    return {"same_final_answer": sum(x["prediction"] == y["prediction"] for x, y in pairs), "of": len(pairs),
            "same_verdict": sum(x["correct"] == y["correct"] for x, y in pairs)}


def main(profile: str = "cpu", modes: list[str] | None = None) -> dict[str, Any]:
    load_before = os.getloadavg()
    runs = run_modes(__file__, modes or MODES, profile)
    agents = {m: r for m, r in runs.items() if m in AGENT_MODES}
    base = agents[BASELINE]
    fp32 = agents.get("agent_transformers_fp32")
    fastest = max(agents, key=lambda m: agents[m]["rollouts_per_second"])
    chosen = CHOSEN
    summary = {m: {"rollouts_per_second": r["rollouts_per_second"],
                   "speedup_rollouts_per_second": round(r["rollouts_per_second"] / base["rollouts_per_second"], 2),
                   "generated_tokens_per_second": r["generated_tokens_per_second"],
                   "answers_vs_baseline": agreement(r, base),
                   "answers_vs_transformers_fp32": agreement(r, fp32) if fp32 else None,
                   "correct": r["correct"]}
               for m, r in agents.items()}
    result = {
        "benchmark": "generation engines for the agent's rollouts (medkit.engine)", "profile": profile,
        "baseline": f"{BASELINE}: the transformers backend as the cpu profile configures it today",
        "questions": N_QUESTIONS, "modes": list(runs), "chosen": chosen, "fastest": fastest,
        "speedup_rollouts_per_second": summary[chosen]["speedup_rollouts_per_second"] if chosen in summary else None,
        "summary": summary, "runs": {m: ({k: v for k, v in r.items() if k != "rows"} if m in AGENT_MODES else r)
                                     for m, r in runs.items()},
        "machine": {**machine_facts(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }
    mio.write_json(paths.results_dir() / "bench" / "engine.json", result)
    print(json.dumps({k: result[k] for k in ("chosen", "fastest", "speedup_rollouts_per_second")}))
    return result


if __name__ == "__main__":
    bench_entry(run_mode, main)
