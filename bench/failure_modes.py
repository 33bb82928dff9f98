"""How a profile's evaluated stages fail: rollouts with and without a failed tool call, from the committed rows.

Reads the per-rollout rows notebooks 05-07 wrote under ``results/<profile>/`` (``05_eval_base.jsonl``,
``05_eval_sft.jsonl``, ``06_eval_grpo.jsonl``, ``07_eval_*.jsonl``) and, for each stage, splits its rollouts
with :func:`medkit.evaluation.by_tool_errors`: the share with a failed tool call, and for each side how
the rollouts stopped and how often they were right (over all, and over those that answered), overall and
per hop count. Not a speed benchmark and no model runs: it reads JSONL, in seconds.

``python bench/failure_modes.py [profile]`` (default cpu_long) -> ``results/<profile>/experiments/failure_modes.json``.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from medkit import evaluation as E
from medkit import io as mio
from medkit import paths
from medkit.adapters import file_digest

ROW_FILES = {"base": "05_eval_base.jsonl", "sft": "05_eval_sft.jsonl", "sft+grpo": "06_eval_grpo.jsonl"}
REQUIRED = ("question_id", "rollout", "correct", "stop_reason", "n_tool_errors", "hops")


def row_files(profile: str) -> dict[str, str]:
    """Each stage's rows file present under the profile's results (07's ablations named from their file)."""
    root = paths.results_dir(profile)
    files = {**ROW_FILES, **{p.stem.removeprefix("07_eval_"): p.name for p in sorted(root.glob("07_eval_*.jsonl"))}}
    return {stage: name for stage, name in files.items() if (root / name).exists()}


def main(profile: str = "cpu_long") -> dict:
    root = paths.results_dir(profile)
    out: dict = {"profile": profile, "rows": {}, "stages": {}}
    for stage, name in row_files(profile).items():
        rows = mio.read_jsonl(root / name, required=REQUIRED, allow_truncated_tail=False)
        out["rows"][stage] = {"file": f"results/{profile}/{name}", "records": len(rows), "sha256": file_digest(root / name)}
        by_hops: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_hops[str(r["hops"])].append(r)
        out["stages"][stage] = {**E.by_tool_errors(rows),
                                "by_hops": {h: E.by_tool_errors(rs) for h, rs in sorted(by_hops.items())}}
        s = out["stages"][stage]
        print(f"{stage}: {s['share_with_tool_error']} of {s['rollouts']} rollouts with a tool error; right when "
              f"answered {s['no_tool_error']['correct_rate_when_answered']} without, "
              f"{s['with_tool_error']['correct_rate_when_answered']} with", flush=True)
    out["command"] = f"python bench/failure_modes.py {profile}"
    out["provenance"] = mio.provenance(profile=profile)
    mio.write_json(root / "experiments" / "failure_modes.json", out)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:2])
