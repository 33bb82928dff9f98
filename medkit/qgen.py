"""Question generation runs: one seed -> one verified question, resumable, with attempt records.

Scope: the per-seed procedure (sample a subgraph with a strategy, find the longest valid
chain from the seed, orient it, build constraints, verify uniqueness over the whole KB,
render, check leaks) and the resumable driver that appends one JSONL line per seed
(a question or the reason there is none). A seed's randomness derives from
``(SEED, seed id, attempt)`` only, so an interrupted run resumed later produces exactly
the records an uninterrupted run would, without loss or duplicates.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import networkx as nx

from . import io as mio
from . import questions as Q
from . import subgraph as S

# Measured fields: they differ from run to run, so :func:`run` keeps them out of the records (which
# the same seed and settings reproduce byte for byte) and appends them to a ``*_timings.jsonl`` file.
TIMING_FIELDS = ("chain_search_ms",)

# Bump when generation logic changes: records of another version are regenerated on resume.
GENERATOR_VERSION = 7  # 7: every stated hop is needed (a chain whose tail pins the answer is cut to that tail; clues prefer the least specific); 6: a definition_mentions clue says whose definition (was "described in connection with"); 5: timings kept out of the records (byte-reproducible data); 4: SHORT_SHARE caps some seeds' chains at 2-3 hops; 3: a masked name inside a longer clue word is a leak


def orient(chain: list[str], types: dict[str, str]) -> list[str] | None:
    """Seed-first chains; a gene seed becomes the answer (genes have few describable facts)."""
    if len(chain) < 2:
        return None
    if types[chain[0]] == "gene":
        rev = chain[::-1]
        return rev if types[rev[0]] in ("disease", "drug") else None
    return chain


def hop_cap(base_seed: int, seed: str, *, max_hops: int, min_hops: int, short_share: float,
            short_max_hops: int) -> int:
    """The longest chain this seed's questions may use: ``max_hops``, or, for a ``short_share`` of the
    seeds, a cap drawn from ``min_hops``..``short_max_hops``.

    The longest-path search prefers the longest chain a subgraph holds, so without a cap the
    questions are mostly 4-6 hops; a small model needs short chains to learn single hops first
    (the SFT curriculum) and an evaluation needs enough of them to measure. The draw depends on
    ``(base_seed, seed)`` only, so every attempt of a seed (and a resumed run) keeps its cap.
    """
    if not 0.0 <= short_share <= 1.0:
        raise ValueError(f"short_share must be in [0, 1], got {short_share!r}")
    rng = random.Random(f"{base_seed}:{seed}:hop-cap")
    if rng.random() >= short_share:
        return max_hops
    return rng.randint(min(min_hops, short_max_hops), min(short_max_hops, max_hops))


def generate_for_seed(index: Q.QuestionIndex, view: nx.Graph, seed: str, *, base_seed: int, attempt: int,
                      strategy: str, k_range: tuple[int, int], max_hops: int, min_hops: int, level: int,
                      specialty: str | None = None, short_share: float = 0.0,
                      short_max_hops: int = 3) -> dict[str, Any]:
    """One attempt for one seed: a question record, or {'status': 'dropped', 'reason': ...}.

    The chain is the longest one up to :func:`hop_cap` hops (never below ``min_hops``, which a
    calibration retry raises), cut to the tail a solver cannot shorten (:func:`medkit.questions.needed_tail`):
    ``hops`` is the number of hops the question needs, ``chain_hops_before_cut`` the chain's length."""
    rng = random.Random(f"{base_seed}:{seed}:{attempt}")
    cap = max(hop_cap(base_seed, seed, max_hops=max_hops, min_hops=min_hops, short_share=short_share,
                      short_max_hops=short_max_hops), min_hops)
    base = {"source_entity_id": seed, "attempt": attempt, "obfuscation_level": level,
            "generator_version": GENERATOR_VERSION}
    if seed not in view:
        return {**base, "status": "dropped", "reason": "seed has no chain relations"}
    t0 = time.perf_counter()
    k = rng.randint(*k_range)
    sample = S.sample_subgraph(view, seed, strategy, k, rng)
    sub = view.subgraph(sample.nodes)
    types = index.type
    valid_end = (lambda n: types.get(n) in S.ANSWER_TYPES) if types.get(seed) != "gene" else \
        (lambda n: types.get(n) in ("disease", "drug"))
    chain, expansions, exact = S.longest_path(sub, seed, max_len=cap, valid_end=valid_end,
                                              prefer=S.type_diversity(sub))
    search_ms = (time.perf_counter() - t0) * 1000
    chain = orient(chain, types) if chain else None
    meta = {"sampling_algorithm": sample.strategy, "requested_algorithm": sample.requested, "subgraph_k": k, "hop_cap": cap,
            "subgraph_nodes": sample.nodes, "longest_path_exact": exact, "longest_path_expansions": expansions,
            "chain_search_ms": round(search_ms, 2)}
    if chain is None or len(chain) - 1 < min_hops:
        return {**base, **meta, "status": "dropped", "reason": f"chain shorter than {min_hops} hops"}
    variables, why = Q.build_constraints(index, chain, level, rng, S.CHAIN_RELATIONS)
    if why:
        return {**base, **meta, "status": "dropped", "reason": f"not unique: {why}"}
    solutions = Q.solve(index, variables)
    if solutions != {chain[-1]}:
        return {**base, **meta, "status": "dropped", "reason": f"not unique: {len(solutions)} solutions"}
    stated = len(variables) - 1
    variables, why = Q.needed_tail(index, variables, level, rng, keys=Q.masked_keys(index, chain))
    if why:
        return {**base, **meta, "status": "dropped", "reason": f"shortcut: {why}"}
    if len(variables) - 1 < min_hops:
        return {**base, **meta, "status": "dropped",
                "reason": f"shortcut: the last {len(variables) - 1} of {stated} hops name the answer"}
    solutions = Q.solve(index, variables)
    if solutions != {chain[-1]}:  # the tail's new clues single its first entity out: never reached
        return {**base, **meta, "status": "dropped", "reason": f"not unique: {len(solutions)} tail solutions"}
    extra = {**meta, "attempt": attempt, "obfuscation_level": level, "specialty": specialty,
             "generator_version": GENERATOR_VERSION, "chain_hops_before_cut": stated,
             "needed_hops": Q.sufficient_hops(index, variables),
             "uniqueness": {"verified": True, "solutions": 1}}
    record = Q.make_record(index, variables, rng, seed_entity=seed, extra=extra)
    found = Q.leaks(index, variables, [record["question"], record["reasoning_path"]])
    if found:
        return {**base, **meta, "status": "dropped", "reason": "leak: " + "; ".join(found[:3])}
    return {**record, "status": "ok"}


def processed(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Records already written by this generator version (key: source entity, attempt; the last line of a
    key wins): what a resumed run may skip — :func:`run` also checks their ``settings_key``."""
    if not path.exists():
        return {}
    return {(r["source_entity_id"], int(r["attempt"])): r for r in mio.read_jsonl(path)
            if r.get("generator_version") == GENERATOR_VERSION}


def read_timings(path: Path) -> list[dict[str, Any]]:
    """The timings :func:`run` kept beside ``path`` (one per seed and attempt)."""
    return mio.read_timings(path, ("source_entity_id", "attempt"))


def run(path: Path, jobs: Iterable[tuple[str, int, dict[str, Any]]],
        make: Callable[[str, int, dict[str, Any]], dict[str, Any]], *, progress: bool = True,
        desc: str = "questions") -> dict[tuple[str, int], dict[str, Any]]:
    """Append one record per (seed, attempt) job not yet in ``path`` under the same settings; return the
    jobs' records.

    A job's settings (its ``kwargs``, which hold everything that shapes the record) are stored in each
    record as ``settings_key``: a record made under other settings — say a rerun with another
    ``STRATEGY`` — is made again, never reused. The :data:`TIMING_FIELDS` of each new record go beside
    it (:func:`medkit.io.append_with_timings`)."""
    from .notebook_output import progress as tqdm  # tqdm.auto, off in headless runs

    mio.repair_jsonl_tail(path)
    mio.repair_jsonl_tail(mio.timings_path(path))
    done = processed(path)
    jobs = [(s, a, kw, mio.settings_key(kw)) for s, a, kw in jobs]
    todo = [job for job in jobs if done.get(job[:2], {}).get("settings_key") != job[3]]
    for seed, attempt, kwargs, key in tqdm(todo, desc=desc, disable=not progress or not todo):
        rec = {**make(seed, attempt, kwargs), "settings_key": key}
        mio.append_with_timings(path, rec, {"source_entity_id": seed, "attempt": attempt}, TIMING_FIELDS)
        done[(seed, attempt)] = rec
    return {(s, a): done[(s, a)] for s, a, _, _ in jobs}


def calibrate_pending(path: Path, records: list[dict[str, Any]],
                      solvers: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]], *,
                      batch_size: int = 64, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run every solver on records not yet calibrated (resumable, one JSONL line per record; the last
    line of an id wins). A verdict a solver could not give (``solved`` None: its endpoint failed) is not
    a finished result: the record is calibrated again on the next run."""
    from .notebook_output import progress as tqdm  # tqdm.auto, off in headless runs

    mio.repair_jsonl_tail(path)
    done = {r["id"]: r["calibration"] for r in mio.read_jsonl(path)} if path.exists() else {}
    todo = [r for r in records if r["id"] not in done
            or any((done[r["id"]].get(name) or {}).get("solved") is None for name in solvers)]
    bar = tqdm(total=len(todo), desc="calibration", disable=not progress or not todo)
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        results = {name: solve(batch) for name, solve in solvers.items()}
        for j, rec in enumerate(batch):
            calib = {name: results[name][j] for name in solvers}
            mio.append_jsonl(path, {"id": rec["id"], "calibration": calib})
            done[rec["id"]] = calib
        bar.update(len(batch))
    bar.close()
    return done


def calibrated_questions(index: Q.QuestionIndex, view: nx.Graph, seeds: list[str], out_dir: Path, *,
                         settings: dict[str, Any], max_attempts: int,
                         solvers: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]],
                         specialty_of: dict[str, str], progress: bool = True) -> dict[str, Any]:
    """Generate, pre-test and regenerate until no solver answers (or attempts run out).

    Returns {"final": [...], "attempts": [...], "timings": [...], "before": {...}, "after": {...},
    "dropped": {...}}.
    """
    from . import calibration as C

    attempts_path, calib_path = out_dir / "questions_attempts.jsonl", out_dir / "calibration.jsonl"
    base_seed = settings["seed"]
    gen_keys = ("strategy", "k_range", "max_hops", "min_hops", "level", "short_share", "short_max_hops")
    all_recs: dict[tuple[str, int], dict[str, Any]] = {}
    calib: dict[str, dict[str, Any]] = {}
    active = list(seeds)
    for attempt in range(max_attempts):
        def make(seed: str, att: int, kw: dict[str, Any]) -> dict[str, Any]:
            return generate_for_seed(index, view, seed, base_seed=base_seed, attempt=att,
                                     specialty=specialty_of.get(seed), **{k: kw[k] for k in gen_keys if k in kw})
        jobs = []
        for seed in active:
            prev = all_recs.get((seed, attempt - 1))
            kw = C.retry_settings(attempt, prev.get("hops", 0) if prev else 0, settings)
            jobs.append((seed, attempt, kw))
        all_recs.update(run(attempts_path, jobs, make, progress=progress, desc=f"questions (attempt {attempt})"))
        ok = [all_recs[(s, attempt)] for s in active if all_recs[(s, attempt)]["status"] == "ok"]
        calib.update(calibrate_pending(calib_path, ok, solvers, progress=progress))
        active = [r["source_entity_id"] for r in ok if C.solved_by(calib[r["id"]])]
        if not active:
            break

    def latest_ok(seed: str) -> dict[str, Any] | None:
        recs = [all_recs[(seed, a)] for a in range(max_attempts) if (seed, a) in all_recs]
        oks = [r for r in recs if r["status"] == "ok"]
        return oks[-1] if oks else None

    first = [dict(r, calibration=calib[r["id"]]) for (s, a), r in sorted(all_recs.items())
             if a == 0 and r["status"] == "ok"]
    latest = [dict(r, calibration=calib[r["id"]]) for s in seeds if (r := latest_ok(s)) is not None]
    final = [r for r in latest if not C.solved_by(r["calibration"])]
    dropped: dict[str, int] = {}
    for s in seeds:
        r0 = all_recs.get((s, 0))
        if r0 is not None and r0["status"] != "ok":
            key = r0["reason"].split(":")[0]
            dropped[key] = dropped.get(key, 0) + 1
    dropped["still solved after all attempts"] = len(latest) - len(final)
    return {"final": final, "attempts": list(all_recs.values()), "timings": read_timings(attempts_path),
            "before": C.summarise(first), "after": C.summarise(latest), "dropped": dropped}
