"""Notebook hygiene, and the smoke profile executed headless with papermill (as CI and reviewers do)."""

import json
import os
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from medkit import kg, notebook_sources, pipeline
from medkit.errors import ConfigError, MedkitError
from medkit.paths import REPO_ROOT, kb_dir

NOTEBOOKS = pipeline.numbered_notebooks()


def test_notebooks_exist_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_entity_mining.ipynb", "02_kg_construction.ipynb", "03_question_generation.ipynb",
                     "04_trajectories.ipynb", "05_sft.ipynb", "06_grpo.ipynb", "07_evaluation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ") and "Expected results" in first.source
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = tagged[0].source.splitlines()
    assert params[0].startswith('PROFILE = "cpu"')
    for line in params:
        name, _, rest = line.partition("=")
        assert name.strip().isupper() and "#" in rest, f"parameter without an UPPER_CASE name or comment: {line}"
    # papermill reads names, defaults and help from this cell (--help-notebook); a second '=' on a line,
    # even in the comment, makes it skip the line with a warning
    import papermill

    assert list(papermill.inspect_notebook(str(path))) == [line.partition("=")[0].strip() for line in params]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    headings = [c.source.split("\n")[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    numbers = [int(h.split()[1]) for h in headings]
    assert numbers == sorted(numbers) and numbers[-1] >= 5, "numbered sections in order"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_twin_hold_the_same_cells(path):
    assert notebook_sources.pair_problems(path) == [], f"run `{notebook_sources.SYNC_COMMAND}`"


def test_an_edit_on_one_side_only_is_caught(tmp_path):
    import shutil

    nb = tmp_path / NOTEBOOKS[4].name
    shutil.copy(NOTEBOOKS[4], nb)
    shutil.copy(notebook_sources.paired_script(NOTEBOOKS[4]), notebook_sources.paired_script(nb))
    notebook_sources.check_pair(nb)
    twin = notebook_sources.paired_script(nb)
    twin.write_text(twin.read_text().replace("EVAL_K", "EVAL_KK", 1))
    with pytest.raises(ConfigError, match=r"out of sync: cell \d+ \(source\) differs.*make sync-notebooks"):
        notebook_sources.check_pair(nb)
    twin.unlink()
    assert notebook_sources.pair_problems(nb) == [f"{twin.name} is missing (every notebook has a py:percent twin)"]
    with pytest.raises(ConfigError):
        pipeline.run_notebook(nb, "smoke", tmp_path / "out")  # refused before any kernel starts
    assert not (tmp_path / "out").exists()


def test_a_failed_run_keeps_the_finished_copy(tmp_path):
    import nbformat

    book = tmp_path / "nb" / "09_fail.ipynb"
    book.parent.mkdir()
    cells = [nbformat.v4.new_code_cell('PROFILE = "cpu"  # profile', metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("from medkit.paths import REPO_ROOT\nprint(f'{REPO_ROOT}/data/x')\n"
                                         "assert PROFILE == 'smoke', PROFILE")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), book)
    import jupytext

    jupytext.write(nbformat.read(book, as_version=4), notebook_sources.paired_script(book), fmt="py:percent")
    out = tmp_path / "results"
    finished = pipeline.run_notebook(book, "smoke", out)
    text = finished.read_text()
    assert "data/x" in text and str(REPO_ROOT) not in text, "executed copies name no machine path"
    assert nbformat.read(finished, as_version=4).metadata.papermill.output_path.endswith("09_fail.ipynb")
    with pytest.raises(MedkitError, match=r"09_fail.ipynb failed in cell \d+ \(AssertionError: cpu\).*09_fail.failed.ipynb"):
        pipeline.run_notebook(book, "cpu", out)
    assert finished.read_text() == text, "a failed rerun leaves the finished copy untouched"
    assert (out / "09_fail.failed.ipynb").exists() and not list(out.glob(".*running*"))


def test_a_dead_kernel_is_named_with_the_memory_seen(tmp_path):
    """What an out-of-memory kill looks like: one line naming the notebook, the likely cause and the peak."""
    import nbformat
    import jupytext

    book = tmp_path / "nb" / "09_dies.ipynb"
    book.parent.mkdir()
    cells = [nbformat.v4.new_code_cell('PROFILE = "cpu"  # profile', metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), book)
    jupytext.write(nbformat.read(book, as_version=4), notebook_sources.paired_script(book), fmt="py:percent")
    with pytest.raises(MedkitError, match=r"^09_dies.ipynb did not finish \(its kernel died — out of memory\? the run "
                                          r"peaked at \d+\.\d of \d+\.\d GiB\); partial copy: .*09_dies.failed.ipynb$"):
        pipeline.run_notebook(book, "smoke", tmp_path / "results")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, kb_tables):
    """Run 01-07 with the smoke profile into a scratch data/results folder."""
    root = tmp_path_factory.mktemp("smoke")
    (root / "data").mkdir()
    os.symlink(kb_dir(), root / "data" / "kb")
    env = {**os.environ, "MEDKIT_DATA": str(root / "data"), "MEDKIT_RESULTS": str(root / "results")}
    proc = subprocess.run([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "01", "02", "03", "04",
                           "05", "06", "07"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.notebook
def test_smoke_entity_mining_outputs(smoke_run):
    data, results = smoke_run / "data" / "smoke", smoke_run / "results" / "smoke"
    summary = json.loads((results / "01_entity_mining.json").read_text())
    rare = pd.read_parquet(data / "rare_entities.parquet")
    mentions = pd.read_parquet(data / "mentions.parquet")
    assert summary["passages"] == 4000 and summary["rare_entities"] == len(rare) == 300
    assert summary["mentions"] == len(mentions) > 3000
    assert rare["df"].le(3).all() and set(rare["type"]) <= {"disease", "gene", "drug"}
    prov = json.loads((data / "entity_mining.provenance.json").read_text())
    assert prov["parameters"]["PROFILE"] == "smoke" and prov["parameters"]["SEED"] == 13 and "HPO" in prov["kb"]
    for fig in ("01_df_distribution.png", "01_rare_by_type.png"):
        assert (results / "figures" / fig).stat().st_size > 10_000
    nb = nbformat.read(results / "01_entity_mining.ipynb", as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 2


@pytest.mark.notebook
def test_smoke_kg_outputs(smoke_run):
    data, results = smoke_run / "data" / "smoke", smoke_run / "results" / "smoke"
    g = kg.load_graph(data / "kg.json.gz")
    summary = json.loads((results / "02_kg.json").read_text())
    assert summary["nodes"] == g.number_of_nodes() > 300 and summary["edges"] == g.number_of_edges()
    assert summary["seeds"] == 60
    assert {"disease", "phenotype"} <= set(summary["node_types"])
    assert {"has_phenotype", "co_mentioned"} <= set(summary["edge_types"])
    for fig in ("02_degree_distribution.png", "02_neighbourhood.png"):
        assert (results / "figures" / fig).stat().st_size > 10_000


@pytest.mark.notebook
def test_smoke_question_outputs(smoke_run, entities, relations):
    import datasets

    from medkit import questions as Q

    data, results = smoke_run / "data" / "smoke", smoke_run / "results" / "smoke"
    allq = pd.read_json(data / "questions.jsonl", lines=True)
    train = pd.read_json(data / "questions_train.jsonl", lines=True)
    test = pd.read_json(data / "questions_test.jsonl", lines=True)
    summary = json.loads((results / "03_questions.json").read_text())
    assert len(allq) == summary["questions"] >= 15 and summary["mean_hops"] >= 3
    assert len(test) >= 2 and len(train) + len(test) <= len(allq)
    assert not (set(test["source_entity_id"]) | set(test["answer_id"])) & (set(train["source_entity_id"]) | set(train["answer_id"]))
    for col in ("question", "answer", "reasoning_path", "entity_mapping", "sampling_algorithm", "source_entity",
                "hops", "specialty", "calibration"):
        assert col in allq.columns
    ds = datasets.load_dataset("json", data_files=str(data / "questions_test.jsonl"))["train"]
    assert ds.num_rows == len(test)
    # verification and leak checks hold on what was written (uniqueness over the KB, corpus links included)
    corpus = pd.read_parquet(data / "corpus_relations.parquet")
    index = Q.QuestionIndex(entities, Q.question_relations(entities, relations, corpus))
    for rec in allq.to_dict("records"):
        variables = Q.variables_from_record(rec)
        assert Q.solve(index, variables) == {rec["answer_id"]}
        assert Q.leaks(index, variables, [rec["question"], rec["reasoning_path"]]) == []
        assert not any(rec["calibration"][s]["solved"] for s in rec["calibration"])
    for fig in ("03_distributions.png", "03_calibration.png", "03_example_chain.png"):
        assert (results / "figures" / fig).stat().st_size > 10_000


@pytest.mark.notebook
def test_smoke_trajectory_outputs(smoke_run, small_tokenizer):
    from trl.chat_template_utils import qwen2_5_training_chat_template

    from medkit import agent as A
    from medkit import trajectories as TR

    data, results = smoke_run / "data" / "smoke", smoke_run / "results" / "smoke"
    summary = json.loads((results / "04_trajectories.json").read_text())
    rows = [json.loads(line) for line in (data / "trajectories_all.jsonl").read_text().splitlines()]
    final = pd.read_json(data / "trajectories.jsonl", lines=True)
    train = pd.read_json(data / "questions_train.jsonl", lines=True)
    kg_rows = [r for r in rows if r["source"] == "kg_guided"]
    assert len(kg_rows) == len(train) == summary["kg_guided"]["trajectories"]  # one variant per question in smoke
    assert summary["kg_guided"]["accepted"] >= 0.4 * len(train) and summary["kg_guided"]["mean_tool_calls"] >= 3
    assert len(final) == summary["accepted_total"] == sum(r["filter"]["accepted"] for r in rows)
    # smoke gives half of them a recovery turn (RECOVERY_SHARE 0.5): a no-loss slip, the tool's error, the fix
    recovered = [r for r in kg_rows if r["filter"]["accepted"] and r.get("recovery")]
    assert summary["kg_guided"]["with_recovery_turn"] == len(recovered) >= 1
    assert all(r["messages"][r["recovery"]["turn"]]["weight"] == 0 for r in recovered)
    # the small model ran the same loop against the real tools (it writes prose: format errors, recorded)
    free = [r for r in rows if r["source"] == "free"]
    assert len(free) == 2 and all(r["n_model_calls"] >= 1 and r["stop_reason"] in A.STOP_REASONS for r in free)
    prov = json.loads((data / "trajectories.provenance.json").read_text())
    assert prov["parameters"]["PROFILE"] == "smoke" and prov["tools"] and "trl" in json.dumps(prov)
    for row in final.head(3).to_dict("records"):
        tools = json.loads(row["tools"])
        rendered = small_tokenizer.apply_chat_template(row["messages"], tools=tools,
                                                       chat_template=qwen2_5_training_chat_template, tokenize=False)
        assert "<tool_call>" in rendered and "<tool_response>" in rendered and "<answer>" in rendered
        assert not TR.guidance_leaks(row["messages"])
    for fig in ("04_filter_reasons.png", "04_tool_calls.png", "04_calls_per_trajectory.png", "04_tokens.png"):
        assert (results / "figures" / fig).stat().st_size > 10_000
    # resumable: a rerun adds nothing and duplicates nothing
    env = {**os.environ, "MEDKIT_DATA": str(smoke_run / "data"), "MEDKIT_RESULTS": str(smoke_run / "results")}
    subprocess.run([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "04"],
                   cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=900)
    again = [json.loads(line) for line in (data / "trajectories_all.jsonl").read_text().splitlines()]
    assert again == rows


@pytest.mark.notebook
def test_smoke_sft_outputs(smoke_run):
    data, results = smoke_run / "data" / "smoke", smoke_run / "results" / "smoke"
    summary = json.loads((results / "05_sft.json").read_text())
    assert summary["train"]["steps"] == 2 and summary["train"]["train_loss"] > 0
    assert summary["lengths"]["rows"] <= 8 and summary["lengths"]["truncated_rows"] == 0  # DROP_LONGER in smoke
    for name in ("base", "sft"):
        m = summary["eval"][name]
        assert m["rollouts"] == summary["k"] and m["questions"] == summary["questions"] and 0 <= m["pass@1"]["mean"] <= 1
        rows = pd.read_json(results / f"05_eval_{name}.jsonl", lines=True)
        assert len(rows) == m["questions"] * m["rollouts"] and set(rows["stop_reason"]) == set(m["stop_reasons"])
    run = data / "sft"
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "merged" / "config.json").exists()
    card = json.loads((run / "card.json").read_text())
    assert card["parameters"]["PROFILE"] == "smoke" and card["metrics"]["steps"] == 2
    assert "## Metrics" in (run / "README.md").read_text()
    # the learning curve: smoke's 2 steps snapshot after step 1 (CURVE 25% / 50%), evaluated like the final adapter
    assert [p["trajectories"] for p in summary["learning_curve"]] == [1]
    assert summary["learning_curve"][0]["rollouts"] == summary["k"] and (run / "curve" / "step-1").is_dir()
    for fig in ("05_sft_loss.png", "05_base_vs_sft.png", "05_learning_curve.png"):
        assert (results / "figures" / fig).stat().st_size > 10_000


@pytest.mark.notebook
def test_smoke_grpo_outputs(smoke_run):
    data, results = smoke_run / "data" / "smoke", smoke_run / "results" / "smoke"
    summary = json.loads((results / "06_grpo.json").read_text())
    p = summary["parameters"]
    assert summary["train"]["steps"] == p["MAX_STEPS"] == 2
    assert summary["training_rollouts"] == p["MAX_STEPS"] * p["QUESTIONS_PER_STEP"] * p["NUM_GENERATIONS"]
    logged = summary["train"]["log"][-1]
    for key in ("rewards/accuracy/mean", "rewards/preference/mean", "rewards/efficiency/mean", "kl", "loss",
                "tools/call_frequency", "tools/failure_frequency"):
        assert key in logged, key
    history = [json.loads(line) for line in (data / "grpo" / "rollouts.jsonl").read_text().splitlines()]
    assert len(history) == summary["training_rollouts"]
    assert all(set(h["rewards"]) == {"accuracy", "preference", "efficiency"} for h in history)
    assert all(h["n_completion_tokens"] <= p["MAX_COMPLETION_LENGTH"] for h in history)
    m = summary["eval"]["grpo"]
    rows = pd.read_json(results / "06_eval_grpo.jsonl", lines=True)
    assert len(rows) == m["questions"] * m["rollouts"] == summary["questions"] * summary["k"]
    assert (data / "grpo" / "adapter" / "adapter_config.json").exists()
    meta = json.loads((data / "grpo" / "adapter" / "medkit_adapter.json").read_text())
    assert meta["started_from"] == "data/smoke/sft/adapter" and meta["step"] == 2 and meta["base_model"]
    # the held-out checkpoint after half the steps, the start (SFT) and the end, on the same questions
    check = summary["reward_hacking"]
    assert [c["step"] for c in check["checkpoints"]] == [0, 1, 2]
    assert check["verdict"] in ("none", "suspect", "hacking")
    assert summary["paired_minus_start"]["questions"] == summary["questions"]
    for fig in ("06_grpo_curves.png", "06_sft_vs_grpo.png", "06_reward_vs_heldout.png"):
        assert (results / "figures" / fig).stat().st_size > 10_000


@pytest.mark.notebook
def test_smoke_evaluation_outputs(smoke_run):
    results = smoke_run / "results" / "smoke"
    text = (results / "07_evaluation.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"07_evaluation.json holds a bare {c}"))
    assert set(summary["stages"]) == {"base", "sft", "sft+grpo", "grpo_from_base", "grpo_accuracy_only"}
    for name, m in summary["stages"].items():
        low, high = m["pass@1"]["ci95"]
        assert low <= m["pass@1"]["mean"] <= high, name
    assert set(summary["paired"]) == {"sft_minus_base", "grpo_minus_sft"}
    assert all(d["questions"] == summary["questions"] and len(d["ci95"]) == 2 for d in summary["paired"].values())
    assert all(m["questions"] == summary["questions"] for m in summary["stages"].values())
    assert summary["ablations"]["grpo_accuracy_only"]["train"]["steps"] == 1
    assert any(r["pass@1"] == 27.5 for r in summary["reported"])
    for fig in ("07_stages.png", "07_by_hops_specialty.png", "07_ablations.png", "07_reported_vs_measured.png",
                "07_benchmarks.png"):
        assert (results / "figures" / fig).stat().st_size > 10_000


def _measured(path) -> bool:
    """Files that exist to differ between runs: provenance (times, versions) and timings."""
    return path.name.endswith(".provenance.json") or path.name.endswith("_timings.jsonl")


@pytest.mark.notebook
def test_data_stages_are_byte_reproducible(smoke_run, tmp_path):
    """Same seed and settings, in another folder under another hash seed: notebooks 01-04 write the
    same bytes under data/<profile>/ (provenance and timing files aside)."""
    import hashlib

    root = tmp_path / "again"
    (root / "data").mkdir(parents=True)
    os.symlink(kb_dir(), root / "data" / "kb")
    env = {**os.environ, "MEDKIT_DATA": str(root / "data"), "MEDKIT_RESULTS": str(root / "results"),
           "PYTHONHASHSEED": "7"}
    proc = subprocess.run([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "01", "02",
                           "03", "04"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again = smoke_run / "data" / "smoke", root / "data" / "smoke"
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file() and not _measured(p))
    assert {"kg.json.gz", "questions.jsonl", "trajectories.jsonl", "trajectories_all.jsonl"} <= {str(f) for f in files}

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert [str(f) for f in files if not (first / f).exists() or digest(first / f) != digest(again / f)] == []


def test_a_second_run_on_one_data_folder_is_refused(tmp_path):
    """Two runs of one profile's notebooks at once would duplicate and interleave their appends."""
    from medkit import io as mio

    env = {**os.environ, "MEDKIT_DATA": str(tmp_path / "data"), "MEDKIT_RESULTS": str(tmp_path / "results")}
    with mio.exclusive(tmp_path / "data" / ".smoke.lock", "the first run"):
        proc = subprocess.run([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "01"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is in use by another run (pid" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_cli_reports_bad_input_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "medkit", "run-notebooks", "--profile", "smoke", "--only", "99"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "medkit: error: no notebook matches ['99']"
    proc = subprocess.run([sys.executable, "-m", "medkit", "pipeline", "--profile", "tpu"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'tpu'" in proc.stderr


@pytest.mark.notebook
def test_smoke_executed_copies_are_quiet_and_name_no_machine(smoke_run):
    """What a reviewer opens: no progress-bar floods, library warnings or absolute paths in the outputs."""
    for path in sorted((smoke_run / "results" / "smoke").glob("0*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        stderr = [line for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"
                  for line in "".join(o.get("text", "")).splitlines()]
        assert len(stderr) <= 20, f"{path.name}: {len(stderr)} stderr lines, e.g. {stderr[:3]}"
        text = path.read_text()
        assert str(REPO_ROOT) not in text and str(smoke_run) not in text, f"{path.name} names a machine path"
        assert not any("application/vnd.jupyter.widget" in json.dumps(o.get("data", {}))
                       for c in nb.cells for o in c.get("outputs", [])), f"{path.name} holds widget state"
