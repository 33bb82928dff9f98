"""The BM25 passage retriever on the real knowledge base: relevance, batching, ties, persistence, errors, re-ranking."""

from __future__ import annotations

import json
import re
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from medkit import retriever as R
from medkit.errors import ConfigError, InputError

FABRY = "MONDO:0010526"


@pytest.fixture(scope="session")
def retriever(passages) -> R.BM25Retriever:
    """The full-corpus index (~60k passages, a few seconds to build)."""
    return R.BM25Retriever.build(passages)


@pytest.fixture(scope="session")
def small(passages) -> pd.DataFrame:
    """A 5,000-passage real slice (for tests that build several indexes), always containing Fabry disease."""
    sl = passages.sample(5000, random_state=3)
    return pd.concat([sl, passages[passages["passage_id"] == FABRY]]).drop_duplicates("passage_id")


def toy_tie_corpus(n: int = 60) -> pd.DataFrame:
    """n passages with identical text (all BM25 scores tie) and shuffled ids, plus two others."""
    rng = np.random.default_rng(0)
    ids = [f"TOY:{i:04d}" for i in rng.permutation(n)]
    df = pd.DataFrame({"passage_id": ids, "source": "TOY", "entity_id": None, "title": "storage disorder",
                       "text": "Lysosomal storage of globotriaosylceramide."})
    extra = pd.DataFrame({"passage_id": ["TOY:9998", "TOY:9999"], "source": "TOY", "entity_id": ["E:1", None],
                          "title": ["kidney", "heart"], "text": ["Renal tubules and kidneys.", "Cardiac muscle."]})
    return pd.concat([df, extra], ignore_index=True)


# --------------------------------------------------------------------------- relevance

def test_exact_definition_is_rank_one(retriever, passages):
    fabry = passages.set_index("passage_id").loc[FABRY]
    hits = retriever.search(fabry["text"], k=5)
    assert hits[0].passage_id == FABRY
    assert hits[0].entity_id == FABRY and hits[0].title == "Fabry disease" and hits[0].source == "MONDO"
    assert hits[0].text == fabry["text"] and hits[0].rank == 1 and not hits[0].truncated
    assert hits[0].score > hits[1].score


def test_exact_definitions_of_a_sample(retriever, passages):
    """Each passage's own text finds it first, except exact duplicates (same title + text), which tie."""
    sample = passages.sample(200, random_state=11)
    by_id = passages.set_index("passage_id")
    results = retriever.search_batch(sample["text"].tolist(), k=3)
    for pid, hits in zip(sample["passage_id"], results):
        top = hits[0]
        if top.passage_id != pid:
            own = next(h for h in hits if h.passage_id == pid)
            assert own.score == top.score and top.passage_id < pid
            assert (by_id.loc[pid, "title"], by_id.loc[pid, "text"]) == (top.title, top.text)


def test_query_by_name(retriever):
    hits = retriever.search("Fabry disease", k=5)
    assert FABRY in [h.passage_id for h in hits[:3]]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    # case, punctuation and accents do not matter
    assert retriever.search("FABRY-DISEASE!", k=5) == hits
    sjogren = retriever.search("Sjögren syndrome", k=10)
    assert "MONDO:0010030" in [h.passage_id for h in sjogren]  # title 'Sjogren syndrome', text 'Sjögren'
    assert sjogren == retriever.search("sjogren SYNDROME", k=10)  # accents folded on both sides
    assert R.tokenize(["Sjögren’s β-thalassæmia type 2"]) == [["sjogren", "β", "thalassæmia", "type", "2"]]
    assert R.tokenize(["What is the vitamin D level of T cells?"]) == [["vitamin", "d", "level", "t", "cells"]]
    assert R.tokenize(["Crohn's disease doesn't", "5'-nucleotidase"]) == [["crohn", "disease"], ["5", "nucleotidase"]]
    assert retriever.search("Crohn's disease", k=5) == retriever.search("Crohn disease", k=5)


def test_single_digits_are_tokens(retriever):
    t1 = [h.title for h in retriever.search("type 1 diabetes mellitus", k=5)]
    t2 = [h.title for h in retriever.search("type 2 diabetes mellitus", k=5)]
    assert all("type 1" in t for t in t1) and t1 != t2


def test_search_batch_matches_individual_searches(retriever, passages):
    sample = passages.sample(40, random_state=5)
    queries = (sample["title"] + " " + sample["text"].str.split().str[:6].str.join(" ")).tolist()
    queries += ["", "   ", "the of and", "zzqqxx unknownword", "Fabry disease", "Fabry disease", "syndrome"]
    batch = retriever.search_batch(queries, k=7)
    assert len(batch) == len(queries)
    assert batch == [retriever.search(q, k=7) for q in queries]
    assert sum(bool(h) for h in batch) == len(queries) - 4


def test_hits_without_an_entity_have_none(retriever, passages):
    uberon = passages[passages["source"] == "UBERON"].iloc[0]
    hit = retriever.search(uberon["title"] + " " + uberon["text"], k=1)[0]
    assert hit.passage_id == uberon["passage_id"] and hit.source == "UBERON" and hit.entity_id is None


def test_empty_and_stopword_queries_return_nothing(retriever):
    for q in ("", "   \n\t", "the", "The of AND is a", "What does it do?", "?!", "zzqqxx"):
        assert retriever.search(q) == []
    assert retriever.search_batch([]) == []


def test_bad_arguments(retriever, passages):
    with pytest.raises(ValueError):
        retriever.search("Fabry disease", k=0)
    with pytest.raises(TypeError):
        retriever.search_batch("Fabry disease")
    with pytest.raises(TypeError):
        retriever.search(None)
    assert len(retriever.search("disease", k=10**9)) > 1000  # k larger than the corpus is clamped
    with pytest.raises(InputError, match="passage_id"):
        R.BM25Retriever.build(pd.concat([passages.head(3), passages.head(1)]))
    with pytest.raises(InputError, match="missing column"):
        R.BM25Retriever.build(passages.drop(columns="title").head(10))
    with pytest.raises(ConfigError):
        R.BM25Retriever.build(passages.head(10), stemmer="klingon")


def test_overlong_queries_are_truncated_and_flagged(retriever, passages):
    fabry = passages.set_index("passage_id").loc[FABRY, "text"]
    long_query = fabry + " " + " ".join(["lysosomal"] * 600)
    assert len(long_query) > R.MAX_QUERY_CHARS
    with pytest.warns(R.QueryTruncatedWarning):
        hits = retriever.search(long_query)
    assert hits and all(h.truncated for h in hits)
    cut, flagged = R.prepare_query(long_query)
    assert flagged and len(cut) <= R.MAX_QUERY_CHARS and cut.endswith("lysosomal")  # cut at a word boundary
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = retriever.search(cut)
    assert [(h.passage_id, h.score) for h in plain] == [(h.passage_id, h.score) for h in hits]
    assert not any(h.truncated for h in plain)
    assert R.prepare_query("x" * 3000)[0] == "x" * R.MAX_QUERY_CHARS  # one huge word: hard cut


# --------------------------------------------------------------------------- ordering and determinism

def test_scores_are_lucene_bm25():
    """Hand-computed Lucene BM25 on a three-passage corpus (text only)."""
    df = pd.DataFrame({"passage_id": ["P1", "P2", "P3"], "source": "T", "entity_id": None, "title": "",
                       "text": ["kidney stone", "kidney kidney failure", "heart failure disease"]})
    r = R.BM25Retriever.build(df, include_title=False, k1=1.2, b=0.75)
    avgdl = (2 + 3 + 3) / 3

    def term(tf: int, dl: int, df_: int) -> float:
        return np.log(1 + (3 - df_ + 0.5) / (df_ + 0.5)) * tf / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl))

    hits = r.search("kidney failure", k=3)
    expect = {"P1": term(1, 2, 2), "P2": term(2, 3, 2) + term(1, 3, 2), "P3": term(1, 3, 2)}
    assert [h.passage_id for h in hits] == sorted(expect, key=lambda p: -expect[p])
    assert all(h.score == pytest.approx(expect[h.passage_id], rel=1e-6) for h in hits)


def test_scores_agree_with_bm25s_retrieve(retriever):
    for q in ("Fabry disease", "alpha-galactosidase deficiency kidney"):
        toks = [R.tokenize([q])[0]]
        res = retriever.bm25.retrieve(toks, k=10, show_progress=False, backend_selection="numpy")
        assert [h.score for h in retriever.search(q, k=10)] == sorted(res.scores[0].tolist(), reverse=True)


def test_top_k_is_exact_with_ties():
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        scores = rng.choice([0.0, 0.0, 0.0, 1.5, 2.0, 2.5, 3.0], size=n).astype(np.float32)
        k = int(rng.integers(1, 40))
        idx, sc = R.top_k(scores, k)
        brute = sorted((i for i in range(n) if scores[i] > 0), key=lambda i: (-scores[i], i))[:k]
        assert idx.tolist() == brute and sc.tolist() == scores[brute].tolist()



def test_hits_are_ordered_by_score_then_passage_id(retriever):
    for q in ("type 1 diabetes mellitus", "storage disease", "abnormality of the kidney", "syndrome"):
        hits = retriever.search(q, k=50)
        keys = [(-h.score, h.passage_id) for h in hits]
        assert keys == sorted(keys)
        assert all(h.score > 0 for h in hits)


def test_ties_break_by_passage_id():
    df = toy_tie_corpus(60)  # 60 tied passages, ids shuffled
    r = R.BM25Retriever.build(df)
    hits = r.search("globotriaosylceramide storage", k=3)
    assert [h.passage_id for h in hits] == ["TOY:0000", "TOY:0001", "TOY:0002"]
    assert len({h.score for h in hits}) == 1
    assert [h.passage_id for h in r.search("storage", k=60)] == sorted(df["passage_id"])[:60]
    assert r.search("kidney", k=5)[0].passage_id == "TOY:9998"
    assert len(r.search("kidney", k=5)) == 1  # passages sharing no term are not returned


def test_rebuilds_are_identical(small):
    a, b = R.BM25Retriever.build(small), R.BM25Retriever.build(small.sample(frac=1, random_state=1))
    queries = small["title"].head(50).tolist()
    assert a.search_batch(queries, k=10) == b.search_batch(queries, k=10)
    assert a.meta == b.meta  # same vocabulary, checksums, sizes (input order does not matter)


# --------------------------------------------------------------------------- persistence

def test_save_load_round_trip(retriever, passages, tmp_path):
    folder = retriever.save(tmp_path / "index")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["corpus_size"] == len(passages)
    assert meta["corpus_sha256"] == R.corpus_checksums(passages)["corpus_sha256"]
    assert meta["params"] == R.index_params() and meta["bm25s_version"] == R.bm25s.__version__
    assert all(info["bytes"] > 0 for info in meta["files"].values())
    loaded = R.BM25Retriever.load(folder)
    queries = passages.sample(30, random_state=2)["title"].tolist() + ["Fabry disease", "", "the"]
    assert loaded.search_batch(queries, k=10) == retriever.search_batch(queries, k=10)
    assert len(loaded) == len(retriever) and loaded.vocab_size == retriever.vocab_size
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temporary folders left behind


def test_saved_index_is_byte_identical_between_builds(small, tmp_path):
    m1 = json.loads((R.BM25Retriever.build(small).save(tmp_path / "a") / "meta.json").read_text())
    m2 = json.loads((R.BM25Retriever.build(small).save(tmp_path / "b") / "meta.json").read_text())
    assert m1["files"] == m2["files"]


def test_load_or_build_rebuilds_on_checksum_mismatch(small, tmp_path):
    folder = tmp_path / "idx"
    log: list[str] = []
    first = R.load_or_build(small, folder, progress=log.append)
    assert "building" in log[-1] and (folder / "meta.json").exists()
    again = R.load_or_build(small, folder, progress=log.append)
    assert log[-1].startswith("loaded") and again.search("Fabry disease") == first.search("Fabry disease")

    changed = small.copy()
    row = changed.index[changed["passage_id"] == FABRY][0]
    changed.loc[row, "text"] = "A zebrawordunique lysosomal disorder."  # same ids, different content
    rebuilt = R.load_or_build(changed, folder, progress=log.append)
    assert "checksum" in log[-1]
    assert rebuilt.search("zebrawordunique")[0].passage_id == FABRY
    assert R.read_meta(folder)["corpus_sha256"] == R.corpus_checksums(changed)["corpus_sha256"]
    assert R.BM25Retriever.load(folder).search("zebrawordunique")[0].passage_id == FABRY

    fewer = changed[changed["passage_id"] != FABRY]
    R.load_or_build(fewer, folder, progress=log.append)
    assert "checksum" in log[-1] and R.read_meta(folder)["corpus_size"] == len(fewer)

    R.load_or_build(fewer, folder, k1=1.2, progress=log.append)
    assert log[-1].endswith("the parameters changed (k1)") and R.read_meta(folder)["params"]["k1"] == 1.2

    (folder / "bm25s" / "data.csc.index.npy").write_bytes(b"garbage")
    R.load_or_build(fewer, folder, k1=1.2, progress=log.append)
    assert "corrupt" in log[-1]
    assert R.BM25Retriever.load(folder).search("Fabry disease") == R.BM25Retriever.build(fewer, k1=1.2).search(
        "Fabry disease")


def test_corrupt_or_missing_folder(small, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="not found") as e:
        R.BM25Retriever.load(missing)
    assert e.value.path == str(missing)

    folder = R.BM25Retriever.build(small.head(500)).save(tmp_path / "idx")
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="meta.json") as e:
        R.BM25Retriever.load(folder)
    assert e.value.path == str(folder)

    folder = R.BM25Retriever.build(small.head(500)).save(tmp_path / "idx2")
    npy = folder / "bm25s" / "indices.csc.index.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    with pytest.raises(InputError, match="indices.csc.index.npy") as e:
        R.BM25Retriever.load(folder)
    assert e.value.path == str(folder)

    folder = R.BM25Retriever.build(small.head(500)).save(tmp_path / "idx3")
    (folder / "passages.parquet").unlink()
    with pytest.raises(InputError, match="passages.parquet is missing"):
        R.BM25Retriever.load(folder)

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="meta.json"):
        R.BM25Retriever.load(tmp_path / "empty")


def test_save_is_atomic_and_refuses_foreign_folders(small, tmp_path, monkeypatch):
    old = R.BM25Retriever.build(small.head(300))
    folder = old.save(tmp_path / "idx")
    before = old.search("disease", k=5)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    new = R.BM25Retriever.build(small.tail(300))
    monkeypatch.setattr(R.mio, "write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        new.save(folder)
    monkeypatch.undo()
    assert R.BM25Retriever.load(folder).search("disease", k=5) == before  # the old index survived intact
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]

    new.save(folder)  # replacing an index works
    assert R.read_meta(folder)["corpus_sha256"] == R.corpus_checksums(small.tail(300))["corpus_sha256"]

    foreign = tmp_path / "mydata"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a medkit retriever index"):
        new.save(foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- stemming

def test_stemmer_needs_pystemmer(monkeypatch):
    monkeypatch.setitem(sys.modules, "Stemmer", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="PyStemmer"):
        R.BM25Retriever.build(toy_tie_corpus(5), stemmer="english")


def test_stemming_when_available():
    pytest.importorskip("Stemmer")
    r = R.BM25Retriever.build(toy_tie_corpus(5), stemmer="english")
    assert r.params["stemmer"] == "english" and r.meta["pystemmer_version"]
    assert [h.passage_id for h in r.search("tubule")] == ["TOY:9998"]  # 'tubules' in the text
    assert [h.passage_id for h in r.search("storing disorders")][:1] == ["TOY:0000"]
    assert R.BM25Retriever.build(toy_tie_corpus(5)).search("tubule") == []  # no stemming: no match


# --------------------------------------------------------------------------- dense re-ranking

def letter_embedder(texts: list[str]) -> np.ndarray:
    """Deterministic toy embedder: letter counts a-z."""
    out = np.zeros((len(texts), 26))
    for i, t in enumerate(texts):
        for c in t.lower():
            if "a" <= c <= "z":
                out[i, ord(c) - 97] += 1
    return out


def test_rerank_with_a_toy_embedder(retriever):
    hits = retriever.search("Fabry disease", k=10)
    out = R.rerank("Fabry disease", hits, letter_embedder)
    assert sorted(h.passage_id for h in out) == sorted(h.passage_id for h in hits)
    assert [h.rank for h in out] == list(range(1, 11))
    sims = [h.score for h in out]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 + 1e-12 for s in sims)
    q = letter_embedder(["Fabry disease"])[0]
    expect = {h.passage_id: float(v @ q / np.linalg.norm(v) / np.linalg.norm(q))
              for h, v in zip(hits, letter_embedder([R.passage_for_embedding(h) for h in hits]))}
    assert all(abs(h.score - expect[h.passage_id]) < 1e-9 for h in out)
    assert R.rerank("Fabry disease", hits, letter_embedder) == out  # deterministic


def test_rerank_can_promote_and_keeps_bm25_order_on_ties(retriever):
    hits = retriever.search("Fabry disease", k=5)
    target = hits[-1].passage_id

    def picks_last(texts: list[str]) -> np.ndarray:
        v = np.zeros((len(texts), 2))
        v[:, 1] = 1.0
        v[0] = [1.0, 0.0]
        v[1 + len(hits) - 1] = [1.0, 0.0]  # the last BM25 hit is identical to the query
        return v

    out = R.rerank("Fabry disease", hits, picks_last)
    assert out[0].passage_id == target and out[0].score == pytest.approx(1.0)
    assert [h.passage_id for h in out[1:]] == [h.passage_id for h in hits[:-1]]  # equal sims: BM25 order

    zeros = R.rerank("Fabry disease", hits, lambda texts: np.zeros((len(texts), 4)))
    assert [h.passage_id for h in zeros] == [h.passage_id for h in hits] and all(h.score == 0 for h in zeros)
    assert R.rerank("Fabry disease", [], letter_embedder) == []
    with pytest.raises(ValueError, match="shape"):
        R.rerank("Fabry disease", hits, lambda texts: np.zeros((len(texts) - 1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        R.rerank("Fabry disease", hits, lambda texts: np.full((len(texts), 4), np.nan))


def test_minilm_embedder_is_offline_real_and_cached():
    embed = R.minilm_embedder()
    vecs = embed(["Fabry disease", "alpha-galactosidase A deficiency", "a sunny day at the beach"])
    assert vecs.shape == (3, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs[0]
    assert sims[1] > sims[2] + 0.1  # the synonym is closer than an unrelated sentence
    assert R.minilm_embedder() is embed


def test_toolbox_search_with_dense_reranking(toolbox):
    from medkit.tools import MedicalToolbox

    dense = MedicalToolbox(toolbox._entities, toolbox._relations, toolbox._passages, toolbox.retriever,
                           reranker=R.minilm_embedder())
    query = "a blood cancer of plasma cells producing monoclonal protein"
    plain, reranked = toolbox.search(query, k=5), dense.search(query, k=5)
    assert len(reranked.splitlines()) == 5 and reranked != plain

    def title(hit: str) -> str:  # "[passage id] " leads only a hit that is not the entity's own passage
        return re.sub(r"^\[[^\]]*\] ", "", hit)

    def passage(hit: str) -> str:  # that id, or the entity's (its own passage)
        m = re.match(r"^\[([^\]]*)\] ", hit) or re.search(r" \(([^()]+)\): ", hit)
        return m.group(1)

    assert title(plain.splitlines()[0]).startswith("monoclonal gammopathy")  # BM25: word overlap
    assert title(reranked.splitlines()[0]).startswith("plasma cell neoplasm")  # dense: the meaning
    pool = {h.passage_id for h in toolbox.retriever.search(query, k=30)}
    assert {passage(line) for line in reranked.splitlines()} <= pool  # re-ranks BM25's candidates only
