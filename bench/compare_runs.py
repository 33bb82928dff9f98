"""Two evaluations of the same held-out questions compared, paired: e.g. this reference run against the last.

Each side is a file of per-rollout rows (``05_eval_sft.jsonl`` and the like), given as a path or as
``COMMIT:path`` to read it from the repository's history (``git show``), so a committed earlier run can be
compared with the current one without keeping a copy. Reports each side's metrics
(:func:`medkit.evaluation.metrics`: pass@1 with its interval, per hop, answer rate, stop reasons) and the
paired difference b − a over the same questions (:func:`medkit.evaluation.compare`), overall and on the
questions of at most 3 hops, and how many rollouts the two drew alike (:func:`medkit.evaluation.agreement`);
different question sets are refused. ``--max-hops N`` first keeps the questions of at most N hops on both
sides (e.g. to compare a run scored on those alone with a full one). Not a speed benchmark; no model runs.

``python bench/compare_runs.py <profile> <name> <a> <b> [--max-hops N]`` -> ``results/<profile>/experiments/<name>.json``.
"""

from __future__ import annotations

import argparse
import subprocess
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


def main(profile: str, name: str, a: str, b: str, max_hops: int | None = None) -> dict:
    rows = {side: E.select_questions(read_rows(spec), max_hops=max_hops) for side, spec in (("a", a), ("b", b))}
    short = {side: E.select_questions(rs, max_hops=E.SHORT_CHAIN_HOPS) for side, rs in rows.items()}
    out = {"a": {"rows": a, **{k: v for k, v in E.metrics(rows["a"]).items() if k in METRICS}},
           "b": {"rows": b, **{k: v for k, v in E.metrics(rows["b"]).items() if k in METRICS}},
           "paired_b_minus_a": E.compare(rows, {"d": ("a", "b")})["d"],
           f"paired_b_minus_a_max{E.SHORT_CHAIN_HOPS}_hops": E.compare(short, {"d": ("a", "b")})["d"],
           "agreement": E.agreement(rows["a"], rows["b"]),
           "max_hops": max_hops,
           "command": f"python bench/compare_runs.py {profile} {name} {a} {b}"
                      + (f" --max-hops {max_hops}" if max_hops is not None else ""),
           "provenance": mio.provenance(a=a, b=b, max_hops=max_hops)}
    mio.write_json(paths.results_dir(profile) / "experiments" / f"{name}.json", out)
    print({k: out[k] for k in out if k.startswith("paired") or k == "agreement"})
    return out


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    for arg in ("profile", "name", "a", "b"):
        cli.add_argument(arg)
    cli.add_argument("--max-hops", type=int, default=None)
    args = cli.parse_args()
    main(args.profile, args.name, args.a, args.b, args.max_hops)
