"""Dictionary named-entity recognition over medical text.

Scope: turn the knowledge base's names and synonyms into a surface dictionary, and
find entity mentions in text with an Aho-Corasick automaton (``pyahocorasick``):
case- and punctuation-normalised, whole words only, leftmost-longest, no overlaps.
Short all-caps / alphanumeric symbols (gene symbols such as ``FBN1``, abbreviations
such as ``ALS``) must match with their exact case. :class:`BaselineMatcher` is the
straightforward n-gram hash-lookup matcher the benchmark compares against.

Normalisation lower-cases and turns every non-alphanumeric character into a space;
runs of spaces are collapsed with an offset map, so ``Ehlers-Danlos``, ``Ehlers–Danlos``
and ``4-(dimethylamino)benzoic`` all match and offsets index the original text.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick
import pandas as pd

# Surfaces too generic to be an entity mention on their own.
STOP_SURFACES = frozenset("""
disease diseases disorder disorders condition conditions syndrome syndromes medical condition
other disease disease or disorder diseases and disorders abnormality abnormalities anomaly
anomalies finding findings phenotype phenotypes sign signs symptom symptoms deficiency
defect defects malformation malformations lesion lesions tumor tumour tumors tumours neoplasm
cancer carcinoma infection infections injury injuries drug drugs agent agents compound
normal abnormal other unknown none all mild severe acute chronic early late onset type
childhood adult infantile juvenile congenital hereditary familial acquired progressive
increased decreased reduced absent present high low large small long short
""".split()) | frozenset({"medical condition", "other disease", "disease or disorder",
                          "diseases and disorders", "disease or disorder non neoplastic"})

_NON_ALNUM = re.compile(r"[^0-9a-z]")
_SPACES = re.compile(r" +")
_MULTI_SPACES = re.compile(r"  +")
_SYMBOL = re.compile(r"^[A-Z0-9][A-Za-z0-9-]{0,6}$")

MIN_SURFACE_CHARS = 3
MAX_ENTITIES_PER_SURFACE = 3


def normalise(text: str) -> str:
    """Lower-case and map every non-alphanumeric character to a space, keeping length."""
    low = text.lower()
    if len(low) != len(text):  # rare Unicode whose lower-case form is longer (e.g. 'İ')
        low = "".join(c.lower()[0] for c in text)
    return _NON_ALNUM.sub(" ", low)


def surface_key(surface: str) -> str:
    """Dictionary key of a surface: normalised, single-spaced, stripped."""
    return _SPACES.sub(" ", normalise(surface)).strip()


def is_symbol(surface: str) -> bool:
    """Short symbols that must match case-sensitively: 'FBN1', 'ALS', 'CF', 'HbA1c'."""
    s = surface.strip()
    return bool(_SYMBOL.match(s)) and any(c.isupper() for c in s[1:] + s[0]) and s != s.capitalize()


@dataclass(frozen=True)
class Mention:
    start: int
    end: int  # exclusive
    entity_ids: tuple[str, ...]

    def text(self, source: str) -> str:
        return source[self.start:self.end]


def build_surfaces(entities: pd.DataFrame) -> pd.DataFrame:
    """All usable surfaces: columns key, surface, entity_id, case_sensitive.

    Drops surfaces shorter than 3 characters, purely numeric ones, generic words
    (``STOP_SURFACES``), the lower-cased twin of an entity's own symbol, non-gene
    entities listed under a gene's symbol, and surfaces shared by more than 3 entities.
    ``abbreviation`` marks short symbols that are synonyms of a non-gene entity ('FCD'
    for fleck corneal dystrophy): such a mention only counts when the same passage
    also names the entity in full, because abbreviations are reused across diseases.
    """
    rows = []
    types = entities["type"] if "type" in entities.columns else pd.Series("", index=entities.index)
    for eid, etype, name, syns in zip(entities["entity_id"], types, entities["name"], entities["synonyms"]):
        seen = set()
        for surface in [name, *list(syns if syns is not None else [])]:
            if not isinstance(surface, str):
                continue
            key = surface_key(surface)
            case = is_symbol(surface)
            if (key, case) in seen or len(key) < MIN_SURFACE_CHARS or key.replace(" ", "").isdigit():
                continue
            if key in STOP_SURFACES:
                continue
            seen.add((key, case))
            abbreviation = case and etype != "gene" and surface != name
            rows.append((key, surface.strip() if case else key, eid, case, abbreviation))
    df = pd.DataFrame(rows, columns=["key", "surface", "entity_id", "case_sensitive", "abbreviation"])
    # An entity known by the symbol 'FACE' must not also match the word 'face' because a
    # source lists the symbol lower-cased too: the case-sensitive form wins.
    has_symbol = df.groupby(["key", "entity_id"])["case_sensitive"].transform("any")
    df = df[df["case_sensitive"] | ~has_symbol]
    # A symbol shared by a gene and something else ('PIK3CA' the gene and a drug listed
    # under that name) is the gene.
    gene_symbols = set(df[df["case_sensitive"] & ~df["abbreviation"] & df["entity_id"].str.startswith("NCBIGene:")]["surface"])
    df = df[~(df["case_sensitive"] & df["surface"].isin(gene_symbols) & ~df["entity_id"].str.startswith("NCBIGene:"))]
    n_ent = df.groupby("key")["entity_id"].transform("nunique")
    df = df[n_ent <= MAX_ENTITIES_PER_SURFACE]
    return df.sort_values(["key", "entity_id", "case_sensitive"]).reset_index(drop=True)


Entry = tuple[str, "str | None", bool]  # entity id, exact surface (case-sensitive) or None, abbreviation


def _group_surfaces(surfaces: pd.DataFrame) -> dict[str, tuple[Entry, ...]]:
    """key -> ((entity_id, exact surface or None, is_abbreviation), ...)"""
    abbr = surfaces["abbreviation"] if "abbreviation" in surfaces.columns else [False] * len(surfaces)
    out: dict[str, list[Entry]] = {}
    for key, surface, eid, case, ab in zip(surfaces["key"], surfaces["surface"], surfaces["entity_id"],
                                           surfaces["case_sensitive"], abbr):
        out.setdefault(key, []).append((eid, surface if case else None, bool(ab)))
    return {k: tuple(v) for k, v in out.items()}


Candidate = tuple[int, int, tuple[str, ...], tuple[str, ...]]  # start, end, full-name ids, abbreviation ids


def _resolve(entries: tuple[Entry, ...], original: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ok = [(eid, ab) for eid, exact, ab in entries if exact is None or exact == original]
    full = tuple(sorted({eid for eid, ab in ok if not ab}))
    return full, tuple(sorted({eid for eid, ab in ok if ab} - set(full)))


def _leftmost_longest(cands: list[Candidate]) -> list[Mention]:
    """Non-overlapping leftmost-longest mentions; abbreviations only where the entity is named in full."""
    cands.sort(key=lambda c: (c[0], -(c[1] - c[0])))
    chosen, last_end = [], -1
    for c in cands:
        if c[0] >= last_end:
            chosen.append(c)
            last_end = c[1]
    named = {eid for c in chosen for eid in c[2]}
    out = []
    for start, end, full, abbr in chosen:
        ids = tuple(sorted(set(full) | (set(abbr) & named)))
        if ids:
            out.append(Mention(start, end, ids))
    return out


class Matcher:
    """Aho-Corasick dictionary matcher (picklable: ships to worker processes and Dask)."""

    def __init__(self, surfaces: pd.DataFrame) -> None:
        self.n_surfaces = len(surfaces)
        self._automaton = ahocorasick.Automaton()
        for key, entries in _group_surfaces(surfaces).items():
            self._automaton.add_word(" " + key, (len(key), entries))
        self._automaton.make_automaton()

    def find(self, text: str) -> list[Mention]:
        if not text:
            return []
        norm = normalise(text)
        shifts = None
        if "  " in norm:  # collapse punctuation runs ("4-(dimethylamino)") and remember the offsets
            shifts = _collapse_shifts(norm)
            norm = _SPACES.sub(" ", norm)
        norm = " " + norm + " "
        cands = []
        for end_idx, (length, entries) in self._automaton.iter(norm):
            if norm[end_idx + 1] != " ":  # must end at a word boundary
                continue
            start, end = end_idx - length, end_idx  # indices in the (collapsed) text
            if shifts is not None:
                start, end = _original(start, shifts), _original(end - 1, shifts) + 1
            full, abbr = _resolve(entries, text[start:end])
            if full or abbr:
                cands.append((start, end, full, abbr))
        return _leftmost_longest(cands)


def _collapse_shifts(norm: str) -> tuple[list[int], list[int]]:
    """For each run of 2+ spaces: the first collapsed index after it, and the cumulative shift."""
    positions, totals, shift = [], [], 0
    for m in _MULTI_SPACES.finditer(norm):
        kept = m.start() - shift  # where the run's single space lands in the collapsed text
        shift += m.end() - m.start() - 1
        positions.append(kept + 1)
        totals.append(shift)
    return positions, totals


def _original(i: int, shifts: tuple[list[int], list[int]]) -> int:
    """Index in the uncollapsed text of collapsed index ``i``."""
    k = bisect_right(shifts[0], i)
    return i + (shifts[1][k - 1] if k else 0)


class BaselineMatcher:
    """The straightforward matcher: regex tokens, then a hash lookup of every n-gram (longest first)."""

    _TOKEN = re.compile(r"[0-9A-Za-z]+")

    def __init__(self, surfaces: pd.DataFrame) -> None:
        self.n_surfaces = len(surfaces)
        self._table = _group_surfaces(surfaces)
        self._max_tokens = max((k.count(" ") + 1 for k in self._table), default=1)

    def find(self, text: str) -> list[Mention]:
        toks = [(m.start(), m.end(), m.group().lower()) for m in self._TOKEN.finditer(text)]
        cands: list[Candidate] = []
        i = 0
        while i < len(toks):
            for n in range(min(self._max_tokens, len(toks) - i), 0, -1):
                entries = self._table.get(" ".join(t[2] for t in toks[i:i + n]))
                if entries:
                    start, end = toks[i][0], toks[i + n - 1][1]
                    full, abbr = _resolve(entries, text[start:end])
                    if full or abbr:
                        cands.append((start, end, full, abbr))
                        i += n
                        break
            else:
                i += 1
        return _leftmost_longest(cands)


def find_all(matcher: Matcher | BaselineMatcher, texts: Iterable[str]) -> list[list[Mention]]:
    return [matcher.find(t) for t in texts]
