"""MedBrowseComp's published files through ``medkit.medbrowsecomp``: rows read, failures, tasks, and read time.

The files cannot be shipped with the kit (no licence stated; the dataset hub is unreachable here), so this
reads copies the user points it at — e.g. ``data/final50_cell_combo_shift3_b64.csv`` and
``data/final121_cell_combo_shift3_b64.csv`` of ``github.com/shan23chen/MedBrowseComp`` — and reports for
each: its size and MD5, whether header and cells were encoded, the header, rows read, rows per task and hop,
and how many golds the judge-free rules score right when the gold itself is the answer (a scorer check:
every one should be). Baseline for the read time: decoding the cells alone (``decode_cell`` over the raw CSV)
in the same run, so the ratio is what validation and record building add.

``python bench/bench_medbrowsecomp_files.py FILE [FILE ...]`` -> ``results/bench/medbrowsecomp_files.json``.
"""

from __future__ import annotations

import csv
import hashlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from medkit import io as mio
from medkit import medbrowsecomp as M
from medkit import paths
from medkit.errors import InputError


def one(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    t0 = time.perf_counter()
    with open(path, newline="", encoding="utf-8") as f:
        cells = [M.decode_cell(c) for row in csv.reader(f) if any(x.strip() for x in row) for c in row]
    decode_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    recs = M.read_medbrowsecomp(path)
    read_ms = (time.perf_counter() - t0) * 1000
    header, _, encoded = M.read_rows(path)
    return {"file": path.name, "bytes": len(raw), "md5": hashlib.md5(raw).hexdigest(),
            "crlf": b"\r\n" in raw, "encoded": encoded, "header": header, "rows": len(recs), "error": None,
            "cells_decoded": len(cells),
            "tasks": dict(Counter(r["task_name"] for r in recs)), "hops": dict(Counter(str(r["hops"]) for r in recs)),
            "prompts_cleaned": sum("prompt_as_published" in r for r in recs),
            "gold_scored_right_as_its_own_answer": sum(M.score(r["answer"], r["answer"], r["task_name"]) for r in recs),
            "decode_only_ms": round(decode_ms, 2), "read_ms": round(read_ms, 2),
            "read_over_decode_only": round(read_ms / decode_ms, 2) if decode_ms else None}


def read_or_error(path: Path) -> dict[str, Any]:
    """:func:`one`, or the reader's error (file, line, column) when a row is bad: the first bad row stops a file."""
    try:
        return one(path)
    except InputError as e:
        return {"file": path.name, "rows": None, "error": str(e)}


def main(*files: str) -> dict[str, Any]:
    if not files:  # `make bench` runs every script without arguments: nothing to read, nothing written
        print("bench_medbrowsecomp_files: skipped (give the published CSV files as arguments)")
        return {}
    try:
        M.read_medbrowsecomp(files[0])  # warm: the first read imports the record schemas
    except (InputError, OSError):
        pass
    out = {"benchmark": "MedBrowseComp published files read by medkit.medbrowsecomp", "baseline": "decode_cell only",
           "files": [read_or_error(Path(f)) for f in files],
           "provenance": mio.provenance(builder="bench/bench_medbrowsecomp_files.py")}
    mio.write_json(paths.results_dir() / "bench" / "medbrowsecomp_files.json", out)
    for f in out["files"]:
        print(f["file"], f["rows"], "rows", f.get("tasks"), f.get("read_ms"), "ms", f["error"] or "")
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
