"""Mining backends agree; document frequency and rare selection behave as specified."""

import pandas as pd
import pytest

from medkit import mining
from medkit.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def serial(matcher, passage_slice):
    return mining.mine_mentions(passage_slice, matcher, backend="serial", chunk_size=300, progress=False)


def test_process_pool_equals_serial(matcher, passage_slice, serial):
    pool = mining.mine_mentions(passage_slice, matcher, backend="processes", n_workers=2, chunk_size=300,
                                progress=False)
    pd.testing.assert_frame_equal(pool, serial)
    assert len(serial) > 1000 and list(serial.columns) == mining.MENTION_COLUMNS


@pytest.mark.slow
def test_local_dask_cluster_equals_serial(matcher, passage_slice, serial):
    import os

    before = dict(os.environ)
    dask = mining.mine_mentions(passage_slice, matcher, backend="dask", n_workers=2, chunk_size=300, progress=False)
    pd.testing.assert_frame_equal(dask, serial)
    # distributed sets OMP_NUM_THREADS=1 & co. for its workers in this process; every later subprocess
    # (a notebook kernel) inherited it and ran OpenVINO on 1 thread, which crashes it on AMX Xeons
    assert dict(os.environ) == before


def test_mentions_point_at_their_surface(serial, passage_slice):
    texts = passage_slice.set_index("passage_id")["text"]
    for row in serial.sample(200, random_state=1).itertuples():
        assert texts[row.passage_id][row.start:row.end] == row.surface


def test_document_frequency_counts_distinct_passages():
    m = pd.DataFrame({"passage_id": ["p1", "p1", "p2", "p3"], "entity_id": ["A", "A", "A", "B"],
                      "start": [0, 5, 0, 0], "end": [1, 6, 1, 1], "surface": ["a"] * 4})
    df = mining.document_frequency(m, n_passages=4).set_index("entity_id")
    assert df.loc["A", "df"] == 2 and df.loc["A", "mentions"] == 3 and df.loc["B", "df_share"] == 0.25


def test_select_rare_respects_every_rule(entities, relations, passages, serial, passage_slice):
    stats = mining.entity_stats(entities, relations, passages,
                                mining.document_frequency(serial, len(passage_slice)))
    rare = mining.select_rare(stats, max_df=1, min_relations=4, types=["disease", "gene"])
    assert len(rare) > 100
    assert rare["df"].le(1).all() and rare["curated_relations"].ge(4).all()
    assert set(rare["type"]) <= {"disease", "gene"} and rare["n_children"].eq(0).all()
    assert rare[rare["type"] == "disease"]["has_passage"].all()
    assert not rare["entity_id"].isin(["MONDO:0000001", "MONDO:0005066"]).any()  # grouping terms
    sample = mining.select_rare(stats, max_df=1, min_relations=4, types=["disease", "gene"], max_rare=50, seed=3)
    again = mining.select_rare(stats, max_df=1, min_relations=4, types=["disease", "gene"], max_rare=50, seed=3)
    pd.testing.assert_frame_equal(sample, again)
    assert 48 <= len(sample) <= 52 and set(sample["type"]) == {"disease", "gene"}


def test_bad_input(matcher):
    with pytest.raises(InputError, match="corpus is empty"):
        mining.mine_mentions(pd.DataFrame({"passage_id": [], "text": []}), matcher, progress=False)
    with pytest.raises(InputError, match="no 'text' column"):
        mining.mine_mentions(pd.DataFrame({"passage_id": ["p"]}), matcher, progress=False)
    with pytest.raises(ConfigError, match="unknown mining backend 'spark'"):
        mining.mine_mentions(pd.DataFrame({"passage_id": ["p"], "text": ["x"]}), matcher, backend="spark")
