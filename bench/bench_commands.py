"""Wall time and peak memory of the README's two commands, stage by stage, on a fresh clone.

Clones the committed HEAD into a temporary folder with an empty model/wheel cache and
runs, as a new user would: ``make setup`` (venv + install), the main job
``make pipeline PROFILE=<profile>`` (default smoke; it builds the data and converts the
model from scratch, and its own stage report gives the per-stage split), then ``make test``. Peak memory is the sampled RSS of the
whole process tree. Writes ``results/bench/commands.json``.

    python bench/bench_commands.py [--profile smoke|cpu] [--skip-test]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from medkit import io as mio
from medkit.paths import REPO_ROOT, results_dir
from medkit.pipeline import PeakMemory


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(interval=0.25, root=proc) as mem:
        out_lines = list(proc.stdout)  # type: ignore[arg-type]  # read until the command closes its output
        proc.wait()
    return {"command": " ".join(cmd), "exit_code": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(mem.peak_bytes / 2**20, 1), "tail": "".join(out_lines[-5:])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--skip-test", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medkit-bench-") as tmp:
        clone = Path(tmp) / "medkit"
        subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
        env = {**os.environ, "MEDKIT_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
        for k in ("VIRTUAL_ENV", "MEDKIT_DATA", "MEDKIT_RESULTS"):
            env.pop(k, None)
        stages = [("make setup", ["make", "setup"]),
                  (f"make pipeline PROFILE={args.profile} (after setup)", ["make", "pipeline", f"PROFILE={args.profile}"])]
        if not args.skip_test:
            stages.append(("make test (after setup and pipeline)", ["make", "test"]))
        report = []
        for name, cmd in stages:
            print(f"== {name}", flush=True)
            r = run_measured(cmd, clone, env)
            r["stage"] = name
            report.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "tail"}), flush=True)
            if r["exit_code"] != 0:
                print(r["tail"], file=sys.stderr)
                break
        pipe = clone / "results" / "bench" / f"pipeline_{args.profile}.json"
        result = {"fresh_clone_of": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                                   text=True).stdout.strip(),
                  "commands": report,
                  "pipeline_stages": json.loads(pipe.read_text()) if pipe.exists() else None}
    mio.write_json(results_dir() / "bench" / "commands.json", result)


if __name__ == "__main__":
    main()
