"""Pairs on a many-positive, graded dataset: the positive cap, the pair cap, the relevance threshold,
and the dataset's own dev split against the carve. Generated BEIR folders (tests/make_dataset.py); no Ray."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from syneg_ray import beir, schema
from syneg_ray.config import load_config
from syneg_ray.dataset import ensure_pairs, sample_pairs, select_positives, split_dev
from syneg_ray.errors import ConfigError, DataError
from tests.make_dataset import make_dataset


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """200 documents, 30 train queries of 12-20 graded positives, 6 dev and 6 test queries."""
    return make_dataset(tmp_path_factory.mktemp("many"), docs=200, queries=30, positives=(12, 20), dev_queries=6, test_queries=6)


def _cfg(tmp_path: Path, folder: Path, *overrides: str):
    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}",
                              f"data.dataset={folder}", *overrides])  # fmt: skip


def _pairs(cfg) -> list[tuple[str, str]]:
    _, path = ensure_pairs(cfg)
    return [(r["query_id"], r["positive_id"]) for r in pq.read_table(path, columns=["query_id", "positive_id"]).to_pylist()]


def _dev(cfg) -> dict:
    return json.loads((Path(cfg.run.run_dir) / schema.DEV_QRELS).read_text(encoding="utf-8"))


def test_the_positive_cap_keeps_the_highest_grades_then_a_seeded_draw(tmp_path: Path, many: Path) -> None:
    qrels, _ = beir.read_qrels(many, "train")
    pairs = _pairs(_cfg(tmp_path, many, "data.max_positives_per_query=3", "data.max_pairs=0"))
    per_query = Counter(q for q, _ in pairs)
    assert set(per_query) == set(qrels) and set(per_query.values()) == {3}
    for q, d in pairs:  # every query of the generator has at least 4 grade-2 positives: only those are kept
        assert qrels[q][d] == 2
    assert pairs == sorted(pairs)  # the order of the uncapped list: query, then document id
    again = _pairs(_cfg(tmp_path, many, "data.max_positives_per_query=3", "data.max_pairs=0"))
    reseeded = _pairs(_cfg(tmp_path, many, "data.max_positives_per_query=3", "data.max_pairs=0", "data.split_seed=5"))
    assert again == pairs and reseeded != pairs


def test_grade_first_then_draw_on_a_hand_made_query() -> None:
    qrels = {"q": {"a": 1, "b": 2, "c": 1, "d": 1, "e": 0}, "r": {"x": 1}}
    assert select_positives(qrels) == [("q", "a"), ("q", "b"), ("q", "c"), ("q", "d"), ("r", "x")]
    capped = select_positives(qrels, per_query=2, seed=0)
    assert ("q", "b") in capped and len([p for p in capped if p[0] == "q"]) == 2 and ("r", "x") in capped
    draws = {tuple(select_positives(qrels, per_query=2, seed=s)) for s in range(20)}
    assert len(draws) > 1  # the second slot is drawn among the grade-1 documents
    assert select_positives(qrels, min_relevance=2) == [("q", "b")]


def test_min_relevance_sets_the_training_positives_and_mining_still_knows_every_relevant_doc(tmp_path: Path, many: Path) -> None:
    from syneg_ray.stages.mine import load_inputs

    cfg = _cfg(tmp_path, many, "data.min_relevance=2", "data.max_positives_per_query=0", "data.max_pairs=0")
    qrels, _ = beir.read_qrels(many, "train")
    pairs = _pairs(cfg)
    assert pairs and all(qrels[q][d] == 2 for q, d in pairs)
    prepared, path = ensure_pairs(cfg)
    inputs, _ = load_inputs(cfg, prepared, path)
    doc_ids = prepared.doc_ids().to_pylist()
    for q, rows in zip(inputs.query_ids, inputs.positives, strict=True):
        assert {doc_ids[r] for r in rows} == {d for d, rel in qrels[q].items() if rel > 0}  # grade 1 too


def test_the_pair_cap_samples_whole_queries_and_limit_takes_the_first_of_them(tmp_path: Path, many: Path) -> None:
    base = ("data.max_positives_per_query=0",)
    full = _pairs(_cfg(tmp_path, many, *base, "data.max_pairs=0"))
    capped = _pairs(_cfg(tmp_path, many, *base, "data.max_pairs=50"))
    assert len(capped) == 50 and set(capped) <= set(full) and capped == [p for p in full if p in set(capped)]
    sizes = Counter(q for q, _ in full)
    cut = [q for q, n in Counter(q for q, _ in capped).items() if n != sizes[q]]
    assert len(cut) <= 1  # whole queries, but for the one that reached the cap
    assert _pairs(_cfg(tmp_path, many, *base, "data.max_pairs=50", "data.split_seed=3")) != capped
    assert _pairs(_cfg(tmp_path, many, *base, "data.max_pairs=50", "data.limit=7")) == capped[:7]
    assert sample_pairs(full, 0, 0) == full and sample_pairs(full, len(full) + 1, 0) == full


def test_the_datasets_dev_split_replaces_the_carve_and_carve_still_works(tmp_path: Path, many: Path) -> None:
    dev_qrels, _ = beir.read_qrels(many, "dev")
    train_qrels, _ = beir.read_qrels(many, "train")
    auto = _cfg(tmp_path, many, "data.max_pairs=0")
    pairs = _pairs(auto)
    assert _dev(auto) == dev_qrels  # graded, as the file holds them
    assert {q for q, _ in pairs} == set(train_qrels)  # no train query carved away
    carve = _cfg(tmp_path, many, "data.max_pairs=0", "data.dev_split=carve", "data.dev_fraction=0.2")
    carved = _pairs(carve)
    _, dev_ids = split_dev(list(train_qrels), 0.2, 0)
    assert set(_dev(carve)) == dev_ids and not dev_ids & {q for q, _ in carved}
    named = _cfg(tmp_path, many, "data.max_pairs=0", "data.dev_split=dev")
    assert _pairs(named) == pairs and _dev(named) == dev_qrels


def test_queries_the_caps_leave_without_a_pair_join_dev_and_the_pairs_stay(tmp_path: Path, many: Path) -> None:
    base = ("data.max_positives_per_query=2", "data.max_pairs=30", "data.limit=20", "data.dev_split=carve", "data.dev_fraction=0.2")
    train_qrels, _ = beir.read_qrels(many, "train")
    carve = _cfg(tmp_path, many, *base)
    pairs, carved = _pairs(carve), _dev(carve)
    added = _cfg(tmp_path, many, *base, "data.dev_adds_unused=true")
    assert _pairs(added) == pairs  # the same pairs, in the same order
    dev = _dev(added)
    used = {q for q, _ in pairs}
    assert set(dev) == set(train_qrels) - used  # the carve and every train query the caps left out
    assert set(carved) < set(dev) and not set(dev) & used
    assert all(dev[q] == train_qrels[q] for q in set(dev) - set(carved))  # graded, as the train file holds them
    _pairs(carve)
    assert _dev(carve) == carved  # turned off again, the pairs are rebuilt with the carve alone


def test_without_a_dev_file_auto_carves(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "nodev", docs=60, queries=10, positives=(3, 5), dev_queries=2, test_queries=2)
    (folder / "qrels" / "dev.tsv").unlink()
    cfg = _cfg(tmp_path, folder, "data.dev_fraction=0.2")
    train_qrels, _ = beir.read_qrels(folder, "train")
    _pairs(cfg)
    _, dev_ids = split_dev(list(train_qrels), 0.2, 0)
    assert set(_dev(cfg)) == dev_ids and len(dev_ids) == 2
    with pytest.raises(DataError, match=r"split 'dev' not found; available splits: test, train"):
        _pairs(_cfg(tmp_path, folder, "data.dev_split=dev"))


def test_dev_queries_that_are_also_train_queries_give_no_pairs(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "overlap", docs=60, queries=10, positives=(3, 5), dev_queries=2, test_queries=2)
    train = (folder / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (folder / "qrels" / "dev.tsv").write_text("\n".join([train[0], train[1]]) + "\n", encoding="utf-8")  # one train row
    query = train[1].split("\t")[0]
    cfg = _cfg(tmp_path, folder)
    assert query not in {q for q, _ in _pairs(cfg)} and set(_dev(cfg)) == {query}


def test_dev_split_may_not_be_the_evaluated_or_the_train_split(tmp_path: Path, many: Path) -> None:
    with pytest.raises(ConfigError, match="data.dev_split = 'test' is data.eval_split"):
        _cfg(tmp_path, many, "data.dev_split=test")
    with pytest.raises(ConfigError, match="data.dev_split = 'train' is data.train_split"):
        _cfg(tmp_path, many, "data.dev_split=train")
    # evaluating on dev: auto falls back to the carve rather than tune on the evaluated queries
    cfg = _cfg(tmp_path, many, "data.eval_split=dev", "data.max_pairs=0")
    _pairs(cfg)
    assert not set(_dev(cfg)) & set(beir.read_qrels(many, "dev")[0])


@pytest.mark.parametrize("override", ["data.max_positives_per_query=2", "data.max_pairs=20", "data.min_relevance=2",
                                      "data.dev_split=carve"])  # fmt: skip
def test_changed_caps_rebuild_the_pairs(tmp_path: Path, many: Path, override: str) -> None:
    before = _pairs(_cfg(tmp_path, many))
    assert _pairs(_cfg(tmp_path, many, override)) != before
    assert _pairs(_cfg(tmp_path, many)) == before


def test_the_defaults_leave_scifacts_822_train_pairs_unchanged(tmp_path: Path, scifact: Path) -> None:
    """SciFact's most positives per train query is 5 and it has 822 train pairs after the carve:
    the default caps (5 per query, 1000 pairs) bind on neither, so its published results hold."""
    cfg = _cfg(tmp_path, scifact)
    qrels, _ = beir.read_qrels(scifact, "train")
    train_ids, dev_ids = split_dev(list(qrels), 0.1, 0)
    assert _pairs(cfg) == beir.positive_pairs({q: qrels[q] for q in train_ids})  # the rule before the caps
    assert len(_pairs(cfg)) == 822 and set(_dev(cfg)) == dev_ids
    assert max(len(qrels[q]) for q in train_ids) == cfg.data.max_positives_per_query  # a cap of 4 would cut one query


def test_tune_accepts_no_carve_when_the_dataset_has_a_dev_split(tmp_path: Path, many: Path) -> None:
    from syneg_ray.stages.tune import require_dev_scores

    require_dev_scores(_cfg(tmp_path, many, "data.dev_fraction=0"))  # dev.tsv: nothing to carve
    with pytest.raises(ConfigError, match="data.dev_fraction = 0 leaves no dev queries"):
        require_dev_scores(_cfg(tmp_path, many, "data.dev_fraction=0", "data.dev_split=carve"))
    # the queries a cap leaves without a pair are dev queries too; without a cap there are none
    require_dev_scores(_cfg(tmp_path, many, "data.dev_fraction=0", "data.dev_split=carve", "data.dev_adds_unused=true", "data.limit=10"))
    with pytest.raises(ConfigError, match="data.dev_fraction = 0 leaves no dev queries"):
        require_dev_scores(_cfg(tmp_path, many, "data.dev_fraction=0", "data.dev_split=carve", "data.dev_adds_unused=true",
                                "data.max_pairs=0"))
