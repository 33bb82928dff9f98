import json

import pandas as pd
import pytest

from medkit import io as mio
from medkit.errors import InputError


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
