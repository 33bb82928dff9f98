"""``diagnose(within=<a broad class>)`` against plain ``diagnose``: what restricting to a class costs.

``within`` ranks only a disease class and its subtypes; the subtypes are found by walking is_a
downwards. For MONDO's root ("disease", ~25k descendants) the walk once took ~5 s per call (a
table slice per node). This times, on the real KB, the same phenotype query (the first three of
Fabry disease's annotations) without ``within`` — the named baseline — and within classes from
narrow to the root; first call (the first within= builds the child lists once) and the best of ``REPEATS``
later calls. A ratio near 1 means the restriction costs little beyond the ranking itself.
Writes ``results/bench/tools.json``.
"""

from __future__ import annotations

import time

from medkit import io as mio
from medkit import kb
from medkit import tools as T
from medkit.paths import results_dir

REPEATS = 5
FABRY = "MONDO:0010526"
CLASSES = {"lysosomal storage disease": "MONDO:0002561", "inherited metabolic disorder": "MONDO:0019052",
           "disease (MONDO's root)": "MONDO:0000001"}


def timed(call) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    later = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        call()
        later.append(time.perf_counter() - t0)
    return first, later


def main() -> dict:
    _, relations, _ = kb.load_kb()
    ann = relations[(relations["head_id"] == FABRY) & (relations["relation"] == "has_phenotype")]
    phenotypes = sorted(ann["tail_id"].astype(str))[:3]
    tb = T.MedicalToolbox.from_kb()
    _, base = timed(lambda: tb.diagnose(phenotypes, k=10))
    rows = {}
    for name, cid in CLASSES.items():
        first, later = timed(lambda cid=cid: tb.diagnose(phenotypes, k=10, within=cid))
        out = tb.diagnose(phenotypes, k=10, within=cid)
        rows[name] = {"class_id": cid, "classes_in_scope": int(out.split(" classes)")[0].rsplit("(", 1)[1])
                      if " classes)" in out else None,
                      "first_call_seconds": round(first, 4), "best_seconds": round(min(later), 4),
                      "ratio_to_baseline": round(min(later) / min(base), 2)}
    result = {"phenotypes": phenotypes, "repeats": REPEATS, "baseline": "the same diagnose call without within",
              "baseline_best_seconds": round(min(base), 4), "within": rows}
    mio.write_json(results_dir() / "bench" / "tools.json", result)
    print(result)
    return result


if __name__ == "__main__":
    main()
