"""Two evaluations of the same held-out questions compared, paired: e.g. this reference run against the last.

Each side is a file of per-rollout rows (``05_eval_sft.jsonl`` and the like), given as a path or as
``COMMIT:path`` to read it from the repository's history (``git show``), so a committed earlier run can be
compared with the current one without keeping a copy. Reports each side's metrics
(:func:`medkit.evaluation.metrics`: pass@1 with its interval, per hop, answer rate, stop reasons) and the
paired difference b − a over the same questions (:func:`medkit.evaluation.compare`), overall and on the
questions of at most 3 hops; different question sets are refused. Not a speed benchmark; no model runs.

``python bench/compare_runs.py <profile> <name> <a> <b>`` -> ``results/<profile>/experiments/<name>.json``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from medkit import evaluation as E
from medkit import io as mio
from medkit import paths

METRICS = ("pass@1", "pass@k", "answer_rate", "format_error_rate", "tool_calls_per_question", "stop_reasons",
           "pass@1_max3_hops", "pass@1_by_hops")


def read_rows(spec: str) -> list[dict]:
    """The rows of a path, or of ``COMMIT:path`` as the repository holds it at that commit."""
    commit, sep, path = spec.partition(":")
    if not sep:
        return mio.read_jsonl(paths.REPO_ROOT / spec, allow_truncated_tail=False)
    text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=paths.REPO_ROOT, check=True,
                          capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / Path(path).name
        f.write_text(text, encoding="utf-8")
        return mio.read_jsonl(f, allow_truncated_tail=False)


def main(profile: str, name: str, a: str, b: str) -> dict:
    rows = {"a": read_rows(a), "b": read_rows(b)}
    short = {side: E.select_questions(rs, max_hops=E.SHORT_CHAIN_HOPS) for side, rs in rows.items()}
    out = {"a": {"rows": a, **{k: v for k, v in E.metrics(rows["a"]).items() if k in METRICS}},
           "b": {"rows": b, **{k: v for k, v in E.metrics(rows["b"]).items() if k in METRICS}},
           "paired_b_minus_a": E.compare(rows, {"d": ("a", "b")})["d"],
           f"paired_b_minus_a_max{E.SHORT_CHAIN_HOPS}_hops": E.compare(short, {"d": ("a", "b")})["d"],
           "command": f"python bench/compare_runs.py {profile} {name} {a} {b}",
           "provenance": mio.provenance(a=a, b=b)}
    mio.write_json(paths.results_dir(profile) / "experiments" / f"{name}.json", out)
    print({k: out[k] for k in out if k.startswith("paired")})
    return out


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(*sys.argv[1:5])
