"""Command line: ``python -m medkit <command>`` (what the Makefile calls).

Commands: ``build-data`` (knowledge base), ``fetch-model`` (SmolLM2, converted once),
``run-notebooks`` (papermill, one profile), ``pipeline`` (all of it, with a stage
report), ``bench`` (benchmarks under ``bench/``). Errors medkit raises on purpose
print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from .errors import MedkitError
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
