import json

import pandas as pd
import pytest

from medkit import io as mio
from medkit.errors import InputError, MedkitError


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "t.parquet"
    mio.write_parquet(target, pd.DataFrame({"a": [1, 2]}))

    class Boom(pd.DataFrame):
        def to_parquet(self, *a, **k):
            with open(a[0], "wb") as f:
                f.write(b"half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        mio.write_parquet(target, Boom({"a": [9]}))
    assert mio.read_parquet(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left behind


def test_jsonl_roundtrip_and_truncated_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    mio.append_jsonl(path, {"id": 1, "question": "q1"})
    mio.append_jsonl(path, {"id": 2, "question": "q2"})
    with open(path, "a") as f:
        f.write('{"id": 3, "quest')  # an interrupted append
    assert [r["id"] for r in mio.read_jsonl(path)] == [1, 2]
    with pytest.raises(InputError, match=r"line 3"):
        mio.read_jsonl(path, allow_truncated_tail=False)


def test_jsonl_bad_line_and_missing_field_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(InputError, match=r"bad.jsonl, line 2: not valid JSON"):
        mio.read_jsonl(path)
    path.write_text('{"id": 1, "answer": "x"}\n{"id": 2}\n')
    with pytest.raises(InputError, match=r"line 2, field 'answer'"):
        mio.read_jsonl(path, required=["answer"])


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.parquet: file not found"):
        mio.read_parquet(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="bad.parquet: cannot read as Parquet"):
        mio.read_parquet(bad)
    j = tmp_path / "x.json"
    j.write_text('{"a": 1,\n}')
    with pytest.raises(InputError, match="x.json, line 2"):
        mio.read_json(j)


def test_write_json_is_sorted_and_stable(tmp_path):
    a = mio.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert json.loads(a.read_text()) == {"a": [1, 2], "b": 1}
    assert a.read_text().index('"a"') < a.read_text().index('"b"')


def test_repair_jsonl_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert mio.repair_jsonl_tail(path) == 4
    mio.append_jsonl(path, {"a": 3})
    assert [r["a"] for r in mio.read_jsonl(path, allow_truncated_tail=False)] == [1, 2, 3]
    assert mio.repair_jsonl_tail(path) == 0 and mio.repair_jsonl_tail(tmp_path / "none.jsonl") == 0


def test_everything_written_is_strict_json(tmp_path):
    obj = {"sd": float("nan"), "hi": float("inf"), "rows": [1.5, float("-inf"), {"x": (float("nan"),)}], "n": 3}
    mio.write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"sd": None, "hi": None, "rows": [1.5, None, {"x": [None]}], "n": 3}
    mio.write_jsonl(tmp_path / "r.jsonl", [obj])
    mio.append_jsonl(tmp_path / "r.jsonl", {"v": float("nan")})
    assert [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()][1] == {"v": None}
    assert mio.dumps({"a": 1}) == json.dumps({"a": 1})


def test_recorded_paths_are_portable(tmp_path, monkeypatch):
    from medkit import paths

    monkeypatch.setenv("MEDKIT_DATA", str(tmp_path / "elsewhere" / "d"))
    assert paths.portable(tmp_path / "elsewhere" / "d" / "cpu" / "sft" / "adapter") == "data/cpu/sft/adapter"
    assert paths.portable(paths.REPO_ROOT / "notebooks" / "05_sft.ipynb") == "notebooks/05_sft.ipynb"
    assert paths.portable(paths.results_dir("cpu") / "05_sft.json") == "results/cpu/05_sft.json"
    assert paths.portable(None) is None and paths.portable("/opt/x") == "/opt/x"


def test_portable_text_names_no_machine_path():
    from medkit.paths import REPO_ROOT, cache_dir, data_dir, portable_text

    text = (f"{REPO_ROOT}/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning\n"
            f"policy starts from: {data_dir()}/cpu/sft/adapter\n"
            f"model in {cache_dir()}/models/x and {REPO_ROOT}/notebooks/05_sft.ipynb\n"
            "/usr/lib/python3/dist-packages/foo.py:1: Warning")
    assert portable_text(text) == ("<site-packages>/tqdm/auto.py:21: TqdmWarning\n"
                                   "policy starts from: data/cpu/sft/adapter\n"
                                   "model in <cache>/models/x and notebooks/05_sft.ipynb\n"
                                   "<site-packages>/foo.py:1: Warning")


def test_exclusive_refuses_a_second_holder_and_names_the_first(tmp_path):
    lock = tmp_path / "data" / ".cpu.lock"
    with mio.exclusive(lock, "data/cpu"):
        with pytest.raises(MedkitError, match=r"^data/cpu is in use by another run \(pid \d+, since .*\); wait"):
            with mio.exclusive(lock, "data/cpu"):
                pass
    with mio.exclusive(lock, "data/cpu"):  # released at the end of the block
        pass


def test_settings_key_is_canonical():
    a = mio.settings_key({"strategy": "mixed", "k_range": (8, 12), "seed": 13})
    assert a == mio.settings_key({"seed": 13, "k_range": [8, 12], "strategy": "mixed"}) and len(a) == 12
    assert a != mio.settings_key({"strategy": "max_chain", "k_range": (8, 12), "seed": 13})


def test_relative_folder_overrides_mean_one_place_for_every_process(tmp_path, monkeypatch):
    """A relative MEDKIT_DATA once split outputs between the CLI's folder and the kernels' notebooks/."""
    import os

    from medkit import paths

    monkeypatch.setenv("MEDKIT_DATA", "scratch/data")
    monkeypatch.delenv("MEDKIT_RESULTS", raising=False)
    assert paths.data_dir() == paths.REPO_ROOT / "scratch" / "data"  # a kernel with the value as given
    assert paths.results_dir("cpu") == paths.REPO_ROOT / "results" / "cpu"
    monkeypatch.chdir(tmp_path)
    paths.absolute_env()  # what the command line does first, from the folder it was started in
    assert os.environ["MEDKIT_DATA"] == str(tmp_path / "scratch" / "data") == str(paths.data_dir())
    monkeypatch.chdir(paths.REPO_ROOT / "notebooks")
    assert paths.data_dir() == tmp_path / "scratch" / "data"  # and every kernel started from there agrees


def test_an_invalid_utf8_byte_names_its_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"q.jsonl, line 2: not valid UTF-8 \(byte 0xe9 at column 11\)"):
        mio.read_jsonl(path)


def test_stage_reports_name_the_cpu_and_its_bf16_support(tmp_path):
    from medkit import pipeline

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert pipeline.cpu_facts(info) == {"cpu_model": "Intel(R) Xeon(R) Processor",
                                        "cpu_features": ["avx2", "avx512f", "avx512_bf16"]}
    assert pipeline.cpu_facts(tmp_path / "missing") == {"cpu_model": None, "cpu_features": None}


def test_all_or_nothing_puts_a_results_folder_back_after_a_failure(tmp_path):
    res = tmp_path / "cpu"
    mio.write_json(res / "05_sft.json", {"a": 1})
    mio.write_json(res / "figures" / "f.json", {"b": 1})
    (res / ".scratch").write_text("running")
    with pytest.raises(RuntimeError, match="cell 7"):
        with mio.all_or_nothing(res):
            mio.write_json(res / "05_sft.json", {"a": 2})   # rewritten
            (res / "figures" / "f.json").unlink()             # removed
            mio.write_json(res / "new.json", {"c": 3})       # added
            (res / ".scratch").write_text("changed")          # hidden scratch: left alone
            raise RuntimeError("cell 7 failed")
    assert mio.read_json(res / "05_sft.json") == {"a": 1} and mio.read_json(res / "figures" / "f.json") == {"b": 1}
    assert not (res / "new.json").exists() and (res / ".scratch").read_text() == "changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu"]  # no snapshot left behind
    with mio.all_or_nothing(res):
        mio.write_json(res / "05_sft.json", {"a": 3})
    assert mio.read_json(res / "05_sft.json") == {"a": 3}
    with mio.all_or_nothing(tmp_path / "fresh"):  # a folder that does not exist yet
        mio.write_json(tmp_path / "fresh" / "x.json", {})
    assert (tmp_path / "fresh" / "x.json").exists()
