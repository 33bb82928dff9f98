"""Streaming reader for NLM PubMed baseline / update XML files.

Scope
-----
Reads the files NLM publishes as the annual PubMed baseline and the daily update
files (``pubmed25n0001.xml.gz`` ...; DTD ``pubmed_250101.dtd``, root element
``<PubmedArticleSet>``), gzip-compressed or plain, detected by content rather than
by file name. Only the standard library is used (``xml.etree.ElementTree.iterparse``
on the C accelerator); each ``<PubmedArticle>`` is cleared as soon as it has been
turned into a record, so memory stays constant however large the file is.

What is extracted, per ``<PubmedArticle>``:

* ``pmid``      -- ``MedlineCitation/PMID`` (the citation's own PMID; the PMIDs inside
  ``CommentsCorrectionsList`` are *not* confused with it).
* ``title``     -- ``Article/ArticleTitle``.
* ``abstract``  -- every ``Article/Abstract/AbstractText`` in order, joined by one
  space; a labelled section (structured abstract) becomes ``"LABEL: text"``.
  ``CopyrightInformation`` and ``OtherAbstract`` are left out.
* ``year``      -- ``Journal/JournalIssue/PubDate/Year``, else the first four-digit
  year in ``PubDate/MedlineDate`` (``"1998 Dec-1999 Jan"`` -> 1998), else ``None``.
* ``journal``   -- ``Journal/Title`` (``None`` if absent).
* ``mesh`` / ``mesh_ids`` -- ``MeshHeadingList/MeshHeading/DescriptorName`` text and
  ``UI`` attribute (qualifiers are not included).
* ``language``  -- the first ``Article/Language`` (``None`` if absent).

Inline markup in titles and abstracts (``<i>``, ``<b>``, ``<u>``, ``<sup>``,
``<sub>``, MathML, ...) is flattened to its text, and runs of whitespace are
collapsed to one space.

Deliberately out of scope (documented, not silently half-done):

* ``<DeleteCitation>`` blocks of update files are skipped: their PMIDs are *not*
  removed from anything already read. Apply deletions downstream if you need them.
* ``<PubmedBookArticle>`` (NCBI Bookshelf records) are skipped.
* No de-duplication across files by the streaming functions: an update file that
  revises a PMID yields it again. :func:`read_pubmed_passages` (which materialises
  a DataFrame anyway) keeps the *last* occurrence of each ``passage_id``.
* Articles with neither a title nor an abstract are skipped.
* No DTD validation and no external entity loading.

Errors: a missing file, a ``.gz`` file that is not gzip, a corrupt or truncated gzip
stream, XML syntax errors (with line and column), a root element other than
``PubmedArticleSet`` and a ``PubmedArticle`` without a PMID all raise
:class:`medkit.errors.InputError` naming the file (and line / field where known);
no raw ``ParseError`` / ``OSError`` / ``EOFError`` escapes.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree as ET
from xml.parsers import expat

import pandas as pd

from .errors import InputError

__all__ = [
    "PASSAGE_COLUMNS",
    "iter_pubmed_articles",
    "pubmed_passages",
    "read_pubmed_passages",
]

PASSAGE_COLUMNS: tuple[str, ...] = ("passage_id", "source", "entity_id", "title", "text")
"""Columns of a passage record in the kit's corpus schema."""

ROOT_TAG = "PubmedArticleSet"
ARTICLE_TAG = "PubmedArticle"
_SKIPPED_TAGS = frozenset({"DeleteCitation", "PubmedBookArticle"})
_GZIP_MAGIC = b"\x1f\x8b"
_YEAR_RE = re.compile(r"\b(\d{4})\b")
_CHUNK = 1 << 20  # bytes handed to expat per read

PathLike = str | Path


# --------------------------------------------------------------------------- files

def _check_file(path: Path) -> bool:
    """Fail early on a missing / unreadable / mis-named file; return whether it is gzip."""
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise InputError(path, f"cannot read file ({e.strerror or e})") from None
    is_gzip = magic == _GZIP_MAGIC
    if path.suffix == ".gz" and not is_gzip:
        raise InputError(path, "named .gz but is not a gzip file (corrupt or mis-named download?)")
    return is_gzip


def _open(path: Path, is_gzip: bool) -> IO[bytes]:
    raw = open(path, "rb")
    if not is_gzip:
        return raw
    return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


def _close(f: IO[bytes]) -> None:
    inner = getattr(f, "fileobj", None)
    f.close()
    if inner is not None:
        inner.close()


def _input_error(path: Path, exc: BaseException) -> InputError:
    """Translate a low-level parse / decompression error into an InputError."""
    if isinstance(exc, ET.ParseError):
        line, col = exc.position
        msg = expat.ErrorString(exc.code) if isinstance(exc.code, int) else str(exc)
        return InputError(path, f"XML syntax error: {msg} (column {col})", line=line)
    if isinstance(exc, EOFError):
        return InputError(path, "gzip stream ends early (truncated download?)")
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return InputError(path, f"corrupt gzip data ({exc})")
    if isinstance(exc, OSError):
        return InputError(path, f"cannot read file ({exc.strerror or exc})")
    return InputError(path, f"{type(exc).__name__}: {exc}")


def _article_line(path: Path, is_gzip: bool, index: int) -> int | None:
    """Line of the ``index``-th (0-based) top-level ``<PubmedArticle>`` start tag.

    Only called on the error path, so the fast parse needs no line bookkeeping.
    """
    parser = expat.ParserCreate()
    state = {"depth": 0, "seen": -1, "line": None}

    class _Found(Exception):
        pass

    def start(name: str, _attrs: Any) -> None:
        state["depth"] += 1
        if state["depth"] == 2 and name == ARTICLE_TAG:
            state["seen"] += 1
            if state["seen"] == index:
                state["line"] = parser.CurrentLineNumber
                raise _Found

    def end(_name: str) -> None:
        state["depth"] -= 1

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    f = _open(path, is_gzip)
    try:
        while chunk := f.read(_CHUNK):
            parser.Parse(chunk, False)
    except _Found:
        pass
    except Exception:  # the caller already has an error to report; a line is a bonus
        return None
    finally:
        _close(f)
    return state["line"]


# ------------------------------------------------------------------- extraction

def _text(elem: ET.Element | None) -> str:
    """All text inside ``elem`` (inline markup flattened), whitespace collapsed."""
    if elem is None:
        return ""
    return " ".join("".join(elem.itertext()).split())


def _year(pub_date: ET.Element | None) -> int | None:
    if pub_date is None:
        return None
    year = pub_date.findtext("Year")
    if year and year.strip().isdigit():
        return int(year.strip())
    m = _YEAR_RE.search(pub_date.findtext("MedlineDate") or "")
    return int(m.group(1)) if m else None


def _abstract(abstract: ET.Element | None) -> str:
    if abstract is None:
        return ""
    parts = []
    for sec in abstract.findall("AbstractText"):
        text = _text(sec)
        label = (sec.get("Label") or "").strip()
        if label and text:
            parts.append(f"{label}: {text}")
        elif text:
            parts.append(text)
    return " ".join(parts)


def _mesh(citation: ET.Element) -> tuple[list[str], list[str]]:
    names: list[str] = []
    ids: list[str] = []
    headings = citation.find("MeshHeadingList")
    if headings is None:
        return names, ids
    for heading in headings:
        desc = heading.find("DescriptorName")
        if desc is not None:
            name = _text(desc)
            if name:
                names.append(name)
                ids.append(desc.get("UI", ""))
    return names, ids


def _child(elem: ET.Element | None, tag: str) -> ET.Element | None:
    return None if elem is None else elem.find(tag)


def _record(article: ET.Element) -> dict[str, Any] | None:
    """Record for one ``<PubmedArticle>``; ``None`` if it has no PMID.

    Plain one-step ``find`` calls run in C; multi-step paths would go through the
    pure-Python ElementPath engine, which is measurably slower at 30M articles.
    """
    citation = article.find("MedlineCitation")
    if citation is None:
        return None
    pmid = (citation.findtext("PMID") or "").strip()
    if not pmid:
        return None
    art = citation.find("Article")
    journal = _child(art, "Journal")
    mesh, mesh_ids = _mesh(citation)
    language = "" if art is None else (art.findtext("Language") or "").strip()
    return {
        "pmid": pmid,
        "title": _text(_child(art, "ArticleTitle")),
        "abstract": _abstract(_child(art, "Abstract")),
        "year": _year(_child(_child(journal, "JournalIssue"), "PubDate")),
        "journal": _text(_child(journal, "Title")) or None,
        "mesh": mesh,
        "mesh_ids": mesh_ids,
        "language": language or None,
    }


# -------------------------------------------------------------------- readers

def _iter_file(path: Path, is_gzip: bool) -> Iterator[dict[str, Any]]:
    root: ET.Element | None = None
    n_articles = 0
    f = _open(path, is_gzip)
    try:
        # The try covers the yield too: a consumer's exceptions never enter a
        # generator (close() raises GeneratorExit, which is not caught here), so only
        # parse / decompression errors from iterparse reach the handler. One try
        # around the loop is much cheaper than one per event.
        for event, elem in ET.iterparse(f, events=("start", "end")):
            if event == "end":
                tag = elem.tag
                if tag == ARTICLE_TAG:
                    rec = _record(elem)
                    root.clear()  # type: ignore[union-attr]  # drop the finished article
                    if rec is None:
                        raise InputError(path, f"PubmedArticle #{n_articles + 1} has no MedlineCitation/PMID",
                                         line=_article_line(path, is_gzip, n_articles), field="PMID")
                    n_articles += 1
                    if rec["title"] or rec["abstract"]:
                        yield rec
                elif tag in _SKIPPED_TAGS:
                    root.clear()  # type: ignore[union-attr]
            elif root is None:  # first event: the root element's start tag
                if elem.tag != ROOT_TAG:
                    raise InputError(path, f"root element is <{elem.tag}>, expected <{ROOT_TAG}> "
                                     "(not a PubMed baseline/update file)")
                root = elem
    except (ET.ParseError, OSError, EOFError, zlib.error) as e:
        raise _input_error(path, e) from None
    finally:
        _close(f)


def iter_pubmed_articles(path: PathLike) -> Iterator[dict[str, Any]]:
    """Stream the articles of one PubMed XML file (``.xml.gz`` or ``.xml``) as dicts.

    Keys: ``pmid`` (str), ``title`` (str), ``abstract`` (str), ``year`` (int | None),
    ``journal`` (str | None), ``mesh`` (list[str]), ``mesh_ids`` (list[str]),
    ``language`` (str | None). A missing or mis-named file raises
    :class:`InputError` immediately; errors further into the file are raised when
    iteration reaches them.
    """
    path = Path(path)
    is_gzip = _check_file(path)
    return _iter_file(path, is_gzip)


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _passage(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "passage_id": f"PMID:{rec['pmid']}",
        "source": "pubmed",
        "entity_id": None,
        "title": rec["title"],
        "text": f"{rec['title']} {rec['abstract']}".strip(),
    }


def _iter_passages(files: list[tuple[Path, bool]], min_chars: int) -> Iterator[dict[str, Any]]:
    for path, is_gzip in files:
        for rec in _iter_file(path, is_gzip):
            passage = _passage(rec)
            if len(passage["text"]) >= min_chars:
                yield passage


def pubmed_passages(paths: PathLike | Iterable[PathLike], *, min_chars: int = 0) -> Iterator[dict[str, Any]]:
    """Stream corpus passages (keys :data:`PASSAGE_COLUMNS`) from one or more PubMed files.

    ``text`` is ``title + " " + abstract`` (stripped); passages shorter than
    ``min_chars`` characters are dropped. Every file is checked to exist (and to be
    gzip when named ``.gz``) before the first passage is produced.
    """
    files = [(p, _check_file(p)) for p in _as_paths(paths)]
    return _iter_passages(files, min_chars)


def read_pubmed_passages(paths: PathLike | Iterable[PathLike], limit: int | None = None,
                         *, min_chars: int = 0) -> pd.DataFrame:
    """Passages from PubMed files as a DataFrame with columns :data:`PASSAGE_COLUMNS`.

    Reads at most ``limit`` passages (all if ``None``), then keeps the last
    occurrence of each ``passage_id`` (update files revise earlier records).
    """
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0 or None")
    rows: list[dict[str, Any]] = []
    passages = pubmed_passages(paths, min_chars=min_chars)
    try:
        for passage in passages if limit != 0 else ():
            rows.append(passage)
            if limit is not None and len(rows) >= limit:
                break
    finally:
        passages.close()  # type: ignore[attr-defined]  # closes the open file at once
    df = pd.DataFrame(rows, columns=list(PASSAGE_COLUMNS))
    df = df.drop_duplicates("passage_id", keep="last").reset_index(drop=True)
    df["entity_id"] = df["entity_id"].astype(object)
    return df
