"""Where the tokens of a trajectory go: per-segment breakdown of KG-guided trajectories (issue 13).

On a sample of a profile's training questions (default: 150 cpu questions, seed 13, variants 0-1)
this synthesises, filters (grounding on, MAX_TOKENS of the profile) and counts the tokens of every
accepted trajectory as SFT sees it (the profile's tokenizer and chat template, the text protocol,
tool schemas in the prompt only when ``TOOLS_IN_PROMPT``) and per segment: system prompt (+ tool
block), question, thoughts, calls, observations, answer, and the template's own tokens.
Also: share of trajectories <= 1,200 and <= 2,048 tokens, 6-hop trajectories over the limit,
grounded rates and acceptance. ``python bench/bench_compact.py [profile] [n] [out.json]`` (without
``out.json``: the ``after`` entry of ``results/bench/compact_trajectories.json``, whose ``before`` is the
same bench over commit bfe75d4).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter

from medkit import agent as A
from medkit import grounding as G
from medkit import io as mio
from medkit import paths, profiles
from medkit import synthesis as S
from medkit import questions as Q
from medkit import tools as T
from medkit import trajectories as TR
from medkit.model import load_tokenizer

def main(profile: str = "cpu", n: int = 150, out: str | None = None) -> dict:
    data = paths.profile_data_dir(profile)
    index, toolbox = T.open_tools(data)
    tok = load_tokenizer(profile)
    full = A.tool_schemas(toolbox.tools())
    # the filter counts as notebook 04 does (every tool's JSON schema in the prompt); SFT drops the
    # JSON schema block unless TOOLS_IN_PROMPT, so its view is the same text without that block
    schemas = full if profiles.defaults(profile, "sft")["TOOLS_IN_PROMPT"] else []
    count = TR.token_counter(tok, full)
    max_tokens = profiles.defaults(profile, "trajectories")["MAX_TOKENS"]
    questions = mio.read_jsonl(data / "questions_train.jsonl")
    sample = random.Random(13).sample(questions, min(n, len(questions)))

    rows = []
    for rec in sample:
        for variant in (0, 1):
            traj = S.synthesise(rec, index, toolbox, variant=variant).to_record()
            traj.update({"question_id": Q.question_id(rec), "variant": variant, "source": "kg_guided",
                         "hops": rec.get("hops")})
            traj["filter"] = TR.filter_trajectory(traj, rec, max_tokens=max_tokens, count_tokens=count,
                                                  resolve=toolbox.resolve_ids)
            rows.append((traj, rec))
    acc = [t for t, _ in rows if t["filter"]["accepted"]]
    report = TR.token_report(tok, acc, schemas)  # the SFT view
    by_variant = {str(v): TR.token_report(tok, [t for t in acc if t["variant"] == v], schemas)["mean_tokens"]
                  for v in (0, 1)}
    reasons = Counter(t["filter"]["reasons"][0] for t, _ in rows if not t["filter"]["accepted"])
    six_over = sum(1 for t, _ in rows if t.get("hops") == 6 and "over_token_limit" in t["filter"]["reasons"])
    over = sum(1 for t, _ in rows if "over_token_limit" in t["filter"]["reasons"])
    summary = G.summarise(G.check_rows(acc, [r for _, r in rows]))
    by_hops = report["by_hops"]
    result = {
        "profile": profile, "questions": len(sample), "trajectories": len(rows), "accepted": len(acc),
        "acceptance_rate": round(len(acc) / len(rows), 4),
        "questions_covered": len({t["question_id"] for t in acc}),
        "tools_in_prompt": bool(schemas), "max_tokens": max_tokens, "json_schema_block_tokens": TR.text_tokens(tok, A.tools_block(full)),
        "mean_tokens_filter": round(sum(t["filter"]["n_tokens"] for t in acc) / max(len(acc), 1), 1),
        "mean_tokens": report["mean_tokens"], "max_tokens_seen": report["max_tokens"],
        "share_le_1200": report["share_within"]["1200"], "share_le_2048": report["share_within"]["2048"],
        "segments_mean": report["segments_mean"], "segments_share": report["segments_share"],
        "mean_tokens_by_hops": {h: v["mean_tokens"] for h, v in by_hops.items()},
        "share_le_2048_by_hops": {h: v["share_within"]["2048"] for h, v in by_hops.items()},
        "accepted_by_hops": {h: v["trajectories"] for h, v in by_hops.items()},
        "mean_tokens_by_variant": by_variant,
        "over_token_limit": over, "six_hop_over_limit": six_over,
        "first_reject_reason": dict(reasons.most_common()),
        "grounded_commit_rate": summary.get("grounded_commit_rate"),
        "grounded_trajectory_rate": summary.get("grounded_trajectory_rate"),
    }
    if out:
        mio.write_json(out, result)
    else:  # results/bench/compact_trajectories.json: this run is "after"; the recorded "before" is kept
        path = paths.results_dir() / "bench" / "compact_trajectories.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        mio.write_json(path, {**old, "after": result})
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    res = main(args[0] if args else "cpu", int(args[1]) if len(args) > 1 else 150, args[2] if len(args) > 2 else None)
    print(json.dumps(res, indent=1))
