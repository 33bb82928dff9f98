"""Tests for medkit.pubmed: the streaming PubMed baseline XML reader."""

from __future__ import annotations

import gzip
import inspect
import tracemalloc
from pathlib import Path
from xml.sax.saxutils import escape

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medkit.errors import InputError
from medkit.pubmed import (
    PASSAGE_COLUMNS,
    iter_pubmed_articles,
    pubmed_passages,
    read_pubmed_passages,
)

FIXTURE = Path(__file__).parent / "fixtures" / "pubmed_sample.xml.gz"

HEADER = (
    '<?xml version="1.0" ?>\n'
    '<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
    '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">\n'
)


def _article(pmid: str, title: str, abstract: str = "", year: str = "2020") -> str:
    pmid_xml = f'<PMID Version="1">{pmid}</PMID>' if pmid else ""
    abstract_xml = f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract>" if abstract else ""
    return (
        "<PubmedArticle>\n<MedlineCitation Status=\"MEDLINE\" Owner=\"NLM\">\n"
        f"{pmid_xml}\n<Article PubModel=\"Print\">\n"
        f"<Journal><JournalIssue><PubDate><Year>{year}</Year></PubDate></JournalIssue>"
        "<Title>Test journal</Title></Journal>\n"
        f"<ArticleTitle>{title}</ArticleTitle>\n{abstract_xml}\n<Language>eng</Language>\n"
        "</Article>\n</MedlineCitation>\n<PubmedData><PublicationStatus>ppublish</PublicationStatus>"
        "</PubmedData>\n</PubmedArticle>\n"
    )


def _write(path: Path, body: str, *, gz: bool = False) -> Path:
    data = (HEADER + body).encode("utf-8")
    if gz:
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def articles() -> dict[str, dict]:
    recs = list(iter_pubmed_articles(FIXTURE))
    by_pmid = {r["pmid"]: r for r in recs}
    assert len(by_pmid) == len(recs), "duplicate PMIDs in fixture output"
    return by_pmid


# ----------------------------------------------------------------- fixture content

def test_fixture_is_real_schema_gzip() -> None:
    raw = FIXTURE.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    text = gzip.decompress(raw).decode("utf-8")
    assert text.startswith("<?xml")
    assert "pubmed_250101.dtd" in text and "<PubmedArticleSet>" in text
    assert "<DeleteCitation>" in text


def test_pmids_in_order_and_skips(articles: dict[str, dict]) -> None:
    pmids = [r["pmid"] for r in iter_pubmed_articles(FIXTURE)]
    # 30122199 has neither title nor abstract -> skipped; DeleteCitation PMIDs never appear;
    # the CommentsCorrections PMID (29720221) is not mistaken for the citation's own.
    assert pmids == ["33712045", "31045872", "28954310", "32501187", "35198843"]
    for ghost in ("30122199", "29999001", "29999002", "29720221"):
        assert ghost not in articles


def test_structured_abstract_labels(articles: dict[str, dict]) -> None:
    rec = articles["33712045"]
    assert rec["title"] == ("Plasma globotriaosylsphingosine and cardiac involvement in late-onset "
                            "Fabry disease: a retrospective cohort study.")
    abstract = rec["abstract"]
    labels = ["BACKGROUND: ", "METHODS: ", "RESULTS: ", "CONCLUSIONS: "]
    positions = [abstract.find(lab) for lab in labels]
    assert positions[0] == 0
    assert all(p > 0 for p in positions[1:]) and positions == sorted(positions)
    assert "IVS4+919G>A" in abstract  # &gt; entity decoded
    assert "Author(s)" not in abstract  # CopyrightInformation left out
    assert rec["year"] == 2021
    assert rec["journal"] == "Orphanet journal of rare diseases"
    assert rec["language"] == "eng"
    assert rec["mesh"] == ["Fabry Disease", "Humans", "alpha-Galactosidase"]
    assert rec["mesh_ids"] == ["D000795", "D006801", "D000519"]


def test_inline_markup_flattened(articles: dict[str, dict]) -> None:
    rec = articles["31045872"]
    assert rec["title"] == "GBA1 genotype and bone marrow burden in type 1 Gaucher disease."
    assert "biallelic GBA1 variants" in rec["abstract"]
    assert "above 104 nmol/mL/h" in rec["abstract"]  # <sup>4</sup> flattened
    assert "ratio of Gb1 to ceramide" in rec["abstract"]  # <sub>1</sub> flattened
    assert "<" not in rec["title"] + rec["abstract"]
    mathml = articles["35198843"]["abstract"]
    assert "approximately as at after treatment" in mathml  # MathML -> its text
    assert mathml.startswith("OBJECTIVE: To model") and " RESULTS: Across 41" in mathml
    assert "  " not in mathml and "\n" not in mathml


def test_medline_date_year_and_unicode(articles: dict[str, dict]) -> None:
    rec = articles["28954310"]
    assert rec["year"] == 2017  # <MedlineDate>2017 Nov-Dec</MedlineDate>
    assert rec["title"].startswith("Alström syndrome")
    assert rec["mesh_ids"] == ["D056769", "D002311"]


def test_no_abstract_keeps_title(articles: dict[str, dict]) -> None:
    rec = articles["32501187"]
    assert rec["abstract"] == ""
    assert rec["title"] == "Niemann-Pick disease type C: miglustat and the vertical supranuclear gaze palsy."
    assert rec["year"] == 2020
    assert rec["mesh"] == ["Niemann-Pick Disease, Type C"]


def test_record_types(articles: dict[str, dict]) -> None:
    for rec in articles.values():
        assert set(rec) == {"pmid", "title", "abstract", "year", "journal", "mesh", "mesh_ids", "language"}
        assert isinstance(rec["pmid"], str) and rec["pmid"].isdigit()
        assert isinstance(rec["year"], int)
        assert len(rec["mesh"]) == len(rec["mesh_ids"])
        assert all(u.startswith("D") for u in rec["mesh_ids"])


def test_missing_year_and_journal_are_none(tmp_path: Path) -> None:
    body = ("<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article>"
            "<Journal><JournalIssue><PubDate><Season>Spring</Season></PubDate></JournalIssue></Journal>"
            "<ArticleTitle>T</ArticleTitle></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>")
    (rec,) = iter_pubmed_articles(_write(tmp_path / "x.xml", body))
    assert rec["year"] is None and rec["journal"] is None and rec["language"] is None
    assert rec["mesh"] == [] and rec["mesh_ids"] == []


# ------------------------------------------------------------------ passages

def test_passages_schema() -> None:
    passages = list(pubmed_passages(FIXTURE))
    assert len(passages) == 5
    for p in passages:
        assert tuple(p) == PASSAGE_COLUMNS == ("passage_id", "source", "entity_id", "title", "text")
        assert p["passage_id"].startswith("PMID:")
        assert p["source"] == "pubmed" and p["entity_id"] is None
        assert p["text"].startswith(p["title"]) and p["text"] == p["text"].strip()
    by_id = {p["passage_id"]: p for p in passages}
    fabry = by_id["PMID:33712045"]
    assert fabry["text"] == fabry["title"] + " BACKGROUND: " + fabry["text"].split(" BACKGROUND: ", 1)[1]
    # no abstract: text is just the title, with no trailing space
    npc = by_id["PMID:32501187"]
    assert npc["text"] == npc["title"]


def test_passages_min_chars() -> None:
    all_p = list(pubmed_passages(FIXTURE))
    shortest = min(all_p, key=lambda p: len(p["text"]))
    cut = len(shortest["text"]) + 1
    kept = list(pubmed_passages([FIXTURE], min_chars=cut))
    assert len(kept) == len(all_p) - 1
    assert shortest["passage_id"] not in {p["passage_id"] for p in kept}
    assert len(list(pubmed_passages(FIXTURE, min_chars=cut - 1))) == len(all_p)


def test_read_pubmed_passages_dataframe() -> None:
    df = read_pubmed_passages(FIXTURE)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(PASSAGE_COLUMNS)
    assert len(df) == 5 and df["passage_id"].is_unique
    assert df["entity_id"].isna().all() and (df["source"] == "pubmed").all()
    assert list(read_pubmed_passages(FIXTURE, limit=2)["passage_id"]) == ["PMID:33712045", "PMID:31045872"]
    assert read_pubmed_passages(FIXTURE, limit=0).empty
    assert list(read_pubmed_passages(FIXTURE, limit=0).columns) == list(PASSAGE_COLUMNS)
    # the same file twice (as when an update revises records): one row per PMID
    assert len(read_pubmed_passages([FIXTURE, FIXTURE])) == 5


def test_plain_xml_equals_gzip(tmp_path: Path) -> None:
    plain = tmp_path / "pubmed25n0001.xml"
    plain.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    assert list(iter_pubmed_articles(plain)) == list(iter_pubmed_articles(FIXTURE))
    assert list(pubmed_passages(str(plain))) == list(pubmed_passages(FIXTURE))
    # gzip content detected even without the .gz suffix
    odd = tmp_path / "renamed.xml"
    odd.write_bytes(FIXTURE.read_bytes())
    assert list(iter_pubmed_articles(odd)) == list(iter_pubmed_articles(FIXTURE))


_xml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    min_size=1, max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.tuples(_xml_text, st.sampled_from(["", "i", "b", "sup", "sub", "u"])),
                      min_size=1, max_size=6))
def test_markup_flattening_property(tmp_path_factory: pytest.TempPathFactory,
                                    parts: list[tuple[str, str]]) -> None:
    xml_title = "".join(escape(t) if not tag else f"<{tag}>{escape(t)}</{tag}>" for t, tag in parts)
    expected = " ".join("".join(t for t, _ in parts).split())
    path = tmp_path_factory.mktemp("prop") / "p.xml"
    _write(path, f"<PubmedArticleSet>{_article('7', xml_title)}</PubmedArticleSet>")
    recs = list(iter_pubmed_articles(path))
    if expected:
        assert [r["title"] for r in recs] == [expected]
    else:
        assert recs == []  # whitespace-only title and no abstract -> skipped


# -------------------------------------------------------------------- bad input

def _raises_naming(path: Path, fn=lambda p: list(iter_pubmed_articles(p))) -> InputError:
    with pytest.raises(InputError) as info:
        fn(path)
    err = info.value
    assert path.name in str(err)
    assert err.path == str(path)
    return err


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "pubmed25n9999.xml.gz"
    err = _raises_naming(missing)
    assert "not found" in err.problem
    # raised at call time, before iteration starts
    with pytest.raises(InputError):
        iter_pubmed_articles(missing)
    with pytest.raises(InputError, match="pubmed25n9999"):
        pubmed_passages([FIXTURE, missing])
    _raises_naming(missing, read_pubmed_passages)


def test_truncated_gzip(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    bad = tmp_path / "pubmed25n0002.xml.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    err = _raises_naming(bad)
    assert "gzip" in err.problem or "XML" in err.problem


def test_corrupt_gzip_body(tmp_path: Path) -> None:
    raw = bytearray(FIXTURE.read_bytes())
    for i in range(200, 260):
        raw[i] ^= 0xFF
    bad = tmp_path / "pubmed25n0003.xml.gz"
    bad.write_bytes(bytes(raw))
    _raises_naming(bad)


def test_gz_name_but_not_gzip(tmp_path: Path) -> None:
    bad = tmp_path / "pubmed25n0004.xml.gz"
    bad.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    err = _raises_naming(bad)
    assert "not a gzip" in err.problem


def test_malformed_xml_names_line_and_column(tmp_path: Path) -> None:
    body = ("<PubmedArticleSet>\n" + _article("11", "Fine title")
            + "<PubmedArticle>\n<MedlineCitation>\n<PMID>12</PMID>\n</Article>\n")
    bad = _write(tmp_path / "broken.xml", body)
    lines = (HEADER + body).splitlines()
    bad_line = len(lines) - lines[::-1].index("</Article>")  # the last, unmatched one
    err = _raises_naming(bad)
    assert err.line == bad_line
    assert f"line {bad_line}" in str(err) and "column" in str(err)
    assert "mismatched tag" in err.problem


def test_malformed_xml_in_gzip(tmp_path: Path) -> None:
    body = "<PubmedArticleSet>\n" + _article("11", "a &undefined; entity") + "</PubmedArticleSet>\n"
    bad = _write(tmp_path / "entity.xml.gz", body, gz=True)
    err = _raises_naming(bad)
    assert err.line is not None and "XML syntax error" in err.problem


def test_truncated_plain_xml(tmp_path: Path) -> None:
    body = "<PubmedArticleSet>\n" + _article("11", "Fine title")
    err = _raises_naming(_write(tmp_path / "cut.xml", body))
    assert err.line is not None


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    _raises_naming(empty)


def test_wrong_root(tmp_path: Path) -> None:
    bad = tmp_path / "esearch.xml"
    bad.write_text('<?xml version="1.0"?>\n<eSearchResult><Count>0</Count></eSearchResult>\n')
    err = _raises_naming(bad)
    assert "PubmedArticleSet" in err.problem and "eSearchResult" in err.problem


def test_missing_pmid_names_article_line(tmp_path: Path) -> None:
    body = ("<PubmedArticleSet>\n" + _article("21", "First") + _article("22", "Second")
            + "<DeleteCitation><PMID>5</PMID></DeleteCitation>\n"
            + _article("", "No PMID here") + _article("24", "Fourth") + "</PubmedArticleSet>\n")
    bad = _write(tmp_path / "nopmid.xml.gz", body, gz=True)
    lines = (HEADER + body).splitlines()
    starts = [i + 1 for i, line in enumerate(lines) if line == "<PubmedArticle>"]
    err = _raises_naming(bad)
    assert err.field == "PMID"
    assert err.line == starts[2]
    assert f"line {starts[2]}" in str(err)
    # the articles before the bad one were yielded first
    gen = iter_pubmed_articles(bad)
    assert [next(gen)["pmid"], next(gen)["pmid"]] == ["21", "22"]
    with pytest.raises(InputError):
        next(gen)


def test_never_a_raw_low_level_error(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    for n in (5, 20, 100, len(raw) - 3):
        bad = tmp_path / f"cut{n}.xml.gz"
        bad.write_bytes(raw[:n])
        with pytest.raises(InputError):
            list(iter_pubmed_articles(bad))


# ------------------------------------------------------------------- streaming

def _big_file(path: Path, n: int) -> Path:
    abstract = ("Hereditary transthyretin amyloidosis causes a length-dependent neuropathy and "
                "cardiomyopathy; <i>TTR</i> silencing slows progression. ") * 3
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) if path.suffix == ".gz" \
            else open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + "<PubmedArticleSet>\n")
        for i in range(n):
            f.write(_article(str(40_000_000 + i), f"Case {i} of transthyretin amyloidosis", abstract))
        f.write("</PubmedArticleSet>\n")
    return path


def test_streaming_constant_memory(tmp_path: Path) -> None:
    n = 20_000
    big = _big_file(tmp_path / "big.xml", n)
    size = big.stat().st_size
    assert size > 15_000_000

    gen = iter_pubmed_articles(big)
    assert inspect.isgenerator(gen)

    tracemalloc.start()
    try:
        count = 0
        last = None
        for rec in gen:
            count += 1
            last = rec["pmid"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n and last == str(40_000_000 + n - 1)
    # A parse that kept the tree would need several times the file size; streaming
    # needs a small constant (parser buffers + one article).
    assert peak < 4_000_000, f"peak traced memory {peak} bytes for a {size}-byte file"


def test_generator_is_lazy(tmp_path: Path) -> None:
    big = _big_file(tmp_path / "lazy.xml.gz", 3_000)
    gen = iter_pubmed_articles(big)
    first = next(gen)
    assert first["pmid"] == "40000000"
    gen.close()  # closing early releases the file without error
    assert len(read_pubmed_passages(big, limit=10)) == 10
