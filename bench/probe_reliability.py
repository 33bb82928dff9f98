"""Careless-user probes (issue 15): does bad input give a clear message or the right result?

Each probe does what a careless user would: a real command (papermill with a mistyped parameter,
the CLI with a bad folder, a second run on a busy data folder) or a real file read the way the kit
reads it (a question file with a wrong type, a trajectory row that breaks the chat template). Each
outcome is classified:

* ``clear``         — it stopped with a message naming the problem (and no Python traceback on the CLI);
* ``right``         — it did the right thing (e.g. "off" skipped the solver, a rerun redid stale records);
* ``silent_wrong``  — it went on and produced a wrong result;
* ``traceback``     — it stopped with a raw traceback and no message naming the problem.

Goal: 0 silent wrong results and 0 raw tracebacks. The probes that need generated data run the smoke
profile's notebooks 01–03 once in a scratch folder (~1.5 min on 2 cores). Writes
``results/bench/reliability_probes.json`` (one row per probe). Probes that the test suite already
drives end to end are listed there with the test that covers them, not run twice.

    python bench/probe_reliability.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from medkit import io as mio
from medkit import records, sft
from medkit.errors import MedkitError
from medkit.paths import REPO_ROOT, kb_dir, results_dir

NOTEBOOKS = REPO_ROOT / "notebooks"
Outcome = tuple[str, str]  # (class, evidence)


def _cli(args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _classify(proc: subprocess.CompletedProcess, expected: str) -> Outcome:
    text = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "silent_wrong", "exit 0"
    line = next((x for x in text.splitlines() if expected in x), None)
    if line is not None:
        return "clear", line.strip()[:240]
    return "traceback", text.strip().splitlines()[-1][:240] if text.strip() else f"exit {proc.returncode}"


def _papermill(notebook: str, params: list[str], env: dict[str, str], out: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "papermill", str(NOTEBOOKS / notebook), str(out / f"probe_{notebook}"),
            "-p", "PROFILE", "smoke", "--cwd", str(NOTEBOOKS), "--no-progress-bar"]
    for p in params:
        name, _, value = p.partition("=")
        args += ["-p", name, value]
    return _cli(args, env)


def _raises(call: Callable[[], object], expected: str) -> Outcome:
    try:
        call()
    except MedkitError as e:
        return ("clear", str(e)[:240]) if expected in str(e) else ("traceback", f"unexpected message: {e}"[:240])
    except Exception as e:  # noqa: BLE001 - the point is to see what escapes
        return "traceback", f"{type(e).__name__}: {e}"[:240]
    return "silent_wrong", "accepted"


def main() -> dict:
    rows: list[dict] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medkit-probes-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        os.symlink(kb_dir(), root / "data" / "kb")
        env = {**os.environ, "MEDKIT_DATA": str(root / "data"), "MEDKIT_RESULTS": str(root / "results")}
        out = root / "out"
        out.mkdir()

        def probe(group: str, name: str, outcome: Outcome) -> None:
            evidence = outcome[1].replace(str(root), "<scratch>")  # no machine path in a committed result
            rows.append({"group": group, "probe": name, "outcome": outcome[0], "evidence": evidence})
            print(f"{outcome[0]:>13}  {group}: {name} — {outcome[1][:120]}", flush=True)

        # ---------------------------------------------------------------- parameters (papermill)
        for nb, param, expected in [
            ("02_kg_construction.ipynb", "N_SEED=5", "unknown parameter N_SEED=5"),
            ("02_kg_construction.ipynb", "N_SEEDS=abc", "N_SEEDS='abc' of stage 'kg' must be an integer"),
            ("02_kg_construction.ipynb", "N_SEEDS=-5", "N_SEEDS=-5 of stage 'kg' must be 0 or more"),
            ("02_kg_construction.ipynb", "HOPS=1.5", "HOPS=1.5 of stage 'kg' must be an integer"),
            ("01_entity_mining.ipynb", "RARE_TYPES=disease", "RARE_TYPES='disease' of stage 'entity_mining' must be a list"),
            ("02_kg_construction.ipynb", "SEED=off", "SEED cannot be off"),
        ]:
            probe("parameters", f"papermill {nb} -p {param.replace('=', ' ')}",
                  _classify(_papermill(nb, [param], env, out), expected))

        # ---------------------------------------------------------------- generated data for the rest
        proc = _cli([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "01", "02", "03"], env)
        if proc.returncode != 0:
            raise SystemExit(f"smoke 01-03 failed:\n{proc.stderr[-2000:]}")
        data = root / "data" / "smoke"
        keys_before = {json.loads(x)["id"]: json.loads(x).get("settings_key") for x in (data / "questions.jsonl").open()}

        proc = _papermill("03_question_generation.ipynb", ["STRATEGY=max_chain", "SOLVER_MODEL=off"], env, out)
        recs = [json.loads(x) for x in (data / "questions.jsonl").open()] if proc.returncode == 0 else []
        stale = [r["id"] for r in recs if keys_before.get(r["id"]) == r.get("settings_key")]
        prov = mio.read_json(data / "questions.provenance.json") if (data / "questions.provenance.json").exists() else {}
        strategy = prov.get("parameters", {}).get("STRATEGY")
        probe("resume", "rerun 03 over a finished folder with -p STRATEGY max_chain",
              ("right", f"{len(recs)} questions, 0 kept from the other strategy; provenance STRATEGY {strategy}")
              if recs and not stale and strategy == "max_chain" else
              ("silent_wrong", f"{len(stale)} of {len(recs)} records kept from the other settings; exit {proc.returncode}"))
        calib = [json.loads(x) for x in (data / "calibration.jsonl").open()]
        new_ids = {r["id"] for r in recs} - set(keys_before)  # questions this rerun made
        model_verdicts = [c for c in calib if c["id"] in new_ids and "model" in c["calibration"]]
        probe("parameters", "papermill 03 -p SOLVER_MODEL off (skip the model solver)",
              ("right", f"{len(new_ids)} questions calibrated by BM25 only") if recs and not model_verdicts
              else ("silent_wrong", f"{len(model_verdicts)} model verdicts"))

        with mio.exclusive(root / "data" / ".smoke.lock", "the first run"):
            probe("resume", "a second run on the same data folder at once",
                  _classify(_cli([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "02"], env),
                            "is in use by another run"))

        # ---------------------------------------------------------------- results of a failed run
        before = (root / "results" / "smoke" / "02_kg.json").read_bytes()
        figs = sorted(p.name for p in (root / "results" / "smoke" / "figures").iterdir())
        proc = _cli([sys.executable, "-c", "from medkit import pipeline; import pathlib, os;"
                     "pipeline.run_notebook(pathlib.Path('notebooks/02_kg_construction.ipynb'), 'smoke', "
                     "pathlib.Path(os.environ['MEDKIT_RESULTS']) / 'smoke', {'MAX_NEIGHBOURS': 'x'})"], env)
        after = (root / "results" / "smoke" / "02_kg.json").read_bytes()
        figs_after = sorted(p.name for p in (root / "results" / "smoke" / "figures").iterdir())
        probe("results", "a failed rerun of notebook 02 over its finished results (a bad parameter)",
              ("right", "02_kg.json, the figures and 02_kg_construction.ipynb untouched; 02_kg_construction.failed.ipynb kept")
              if proc.returncode != 0 and after == before and figs_after == figs
              and (root / "results" / "smoke" / "02_kg_construction.failed.ipynb").exists()
              else ("silent_wrong", f"exit {proc.returncode}; results changed: {after != before or figs_after != figs}"))
        bad_env = {**env, "MEDKIT_DATA": str(root / "data" / "kb" / "entities.parquet" / "x")}
        report = root / "results" / "bench"
        proc = _cli([sys.executable, "-m", "medkit", "pipeline", "--profile", "smoke"], bad_env)
        probe("results", "a failed pipeline run: its stage report",
              ("right", "pipeline_smoke.failed.json written, no pipeline_smoke.json replaced")
              if proc.returncode != 0 and (report / "pipeline_smoke.failed.json").exists()
              and not (report / "pipeline_smoke.json").exists() else
              ("silent_wrong", f"exit {proc.returncode}; files: {sorted(p.name for p in report.glob('*'))}"))

        # ---------------------------------------------------------------- folders and the knowledge base
        rel_root = root / "rel"
        (rel_root / "d").mkdir(parents=True)
        os.symlink(kb_dir(), rel_root / "d" / "kb")
        proc = _cli([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "01"],
                    {**env, "MEDKIT_DATA": "d", "MEDKIT_RESULTS": "r"}, cwd=rel_root)
        split = [str(p) for p in (NOTEBOOKS / "d", NOTEBOOKS / "r", REPO_ROOT / "d", REPO_ROOT / "r") if p.exists()]
        together = (rel_root / "d" / "smoke" / "rare_entities.parquet").exists() and \
            (rel_root / "r" / "smoke" / "01_entity_mining.ipynb").exists()
        probe("folders", "relative MEDKIT_DATA / MEDKIT_RESULTS (notebook 01 started from another folder)",
              ("right", "data and results both under the folder the command was started in")
              if proc.returncode == 0 and together and not split
              else ("silent_wrong", f"exit {proc.returncode}; outputs elsewhere: {split}"))
        t0 = time.perf_counter()
        proc = _cli([sys.executable, "-m", "medkit", "build-data", "--force", "--out",
                     str(root / "data" / "kb" / "entities.parquet" / "kb")], env)
        outcome = _classify(proc, "cannot write there")
        probe("folders", f"build-data --out to an impossible path (failed after {time.perf_counter() - t0:.1f} s)", outcome)

        # ---------------------------------------------------------------- input files, read the way the kit reads them
        good_q = json.loads((data / "questions_test.jsonl").open().readline())

        def qfile(name: str, lines: list[str]) -> Path:
            path = root / name
            path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
            return path

        for name, change, expected in [("missing answer", {"answer": None}, "field 'answer'"),
                                       ("answer=5", {"answer": 5}, "field 'answer'"),
                                       ("question a list", {"question": ["a"]}, "field 'question'"),
                                       ("id null", {"id": None}, "field 'id'"),
                                       ('hops="three"', {"hops": "three"}, "field 'hops'")]:
            rec = {**good_q, **change}
            if change.get("answer", 0) is None:
                rec.pop("answer")
            path = qfile("q.jsonl", [json.dumps(rec)])
            probe("input files", f"a training question with {name}",
                  _raises(lambda path=path: records.load_questions(path, records.KitQuestion), expected))
        authors = [{"question": f"Which disorder {i}?", "answer": "x"} for i in range(4)]
        loaded = records.load_questions(qfile("authors.jsonl", [json.dumps(r) for r in authors]))
        probe("input files", "4 evaluation records without ids (the authors' format)",
              ("right", f"{len({q['id'] for q in loaded})} questions, stable ids from the text")
              if len({q["id"] for q in loaded}) == 4 else ("silent_wrong", f"{len({q['id'] for q in loaded})} questions"))
        bad_utf8 = root / "utf8.jsonl"
        bad_utf8.write_bytes(json.dumps(good_q).encode() + b"\n" + b'{"id": "caf\xe9"}\n')
        probe("input files", "one invalid UTF-8 byte", _raises(lambda: records.load_questions(bad_utf8), "not valid UTF-8"))
        torn = qfile("torn.jsonl", [json.dumps(good_q)])
        torn.write_text(torn.read_text() + json.dumps(good_q)[:40], encoding="utf-8")
        probe("input files", "a torn last line in a file written whole",
              _raises(lambda: records.load_questions(torn), "line 2: not valid JSON"))

        cpu_rows = REPO_ROOT / "data" / "cpu" / "trajectories.jsonl"  # a real accepted row, else a minimal one
        row = json.loads(cpu_rows.open().readline()) if cpu_rows.exists() else {
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "<think>t</think>", "tool_calls": [
                             {"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]},
                         {"role": "tool", "name": "search", "content": "o"},
                         {"role": "assistant", "content": "<answer>a</answer>"}], "tools": "[]"}
        call_i = next(i for i, m in enumerate(row["messages"]) if m.get("tool_calls"))
        tool_i = next(i for i, m in enumerate(row["messages"]) if m["role"] == "tool")
        for name, bad, expected in [
            ("tool_calls with string arguments", (call_i, "tool_calls", [{"type": "function", "function": {"name": "search", "arguments": "x"}}]), "arguments"),
            ("a tool message without content", (tool_i, "content", None), "a tool message needs a string content"),
            ("tools that are not JSON", None, "tools is not valid JSON")]:
            r = json.loads(json.dumps(row))
            if bad is None:
                r["tools"] = "[{not json"
            else:
                r["messages"][bad[0]][bad[1]] = bad[2]
            path = qfile("traj.jsonl", [json.dumps(r)])
            probe("input files", f"a trajectory row with {name}", _raises(lambda path=path: sft.load_trajectories(path), expected))

    covered = [
        ("resume", "a dead endpoint's calibration verdicts are redone", "tests/test_questions.py::test_a_failed_solver_verdict_is_not_a_finished_calibration"),
        ("resume", "a dead teacher's rollouts are redone", "tests/test_synthesis.py::test_rows_made_under_other_settings_or_by_a_dead_backend_are_redone"),
        ("resume", "kill and resume loses and duplicates nothing", "tests/test_questions.py::test_generation_resumes_without_loss_or_duplicates"),
        ("reproducibility", "same seed, 01-04 twice: the same bytes", "tests/test_notebooks.py::test_data_stages_are_byte_reproducible"),
        ("results", "a killed kernel is named with the peak memory", "tests/test_notebooks.py::test_a_dead_kernel_is_named_with_the_memory_seen"),
        ("folders", "build-data calls a corrupt KB built", "tests/test_kb.py::test_a_corrupt_kb_is_not_called_built_and_an_unwritable_folder_fails_first"),
        ("endpoints", "a slow endpoint waits without a word", "tests/test_llm.py::test_a_slow_endpoint_is_said_to_be_slow_once"),
        ("tools", "diagnose(within=<a broad class>) takes seconds", "bench/bench_tools.py (results/bench/tools.json)"),
        ("parser", "nested unclosed tags take quadratic time", "bench/bench_parser.py (results/bench/parser.json)"),
        ("parser", "a tool name breaks the rendered call", "tests/test_agent.py::test_a_tool_name_cannot_break_the_rendered_call"),
    ]
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("clear", "right", "silent_wrong", "traceback")}
    result = {"probes_run": len(rows), "outcomes": counts, "seconds": round(time.perf_counter() - t_all, 1),
              "rows": rows, "covered_by_tests": [{"group": g, "probe": p, "where": w} for g, p, w in covered]}
    mio.write_json(results_dir() / "bench" / "reliability_probes.json", result)
    print(json.dumps(counts))
    return result


if __name__ == "__main__":
    main()
