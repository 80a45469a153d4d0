"""The user's own data through the stages: configs/own-data.yaml (the README's example) and its
commands, `syneg mine` (BM25, no Ray) and `syneg evaluate`, on files written from a generated dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from syneg_ray import beir, cli, schema
from syneg_ray.config import load_config
from syneg_ray.dataset import prepare
from tests.make_dataset import make_dataset

REPO = Path(__file__).resolve().parents[2]


def write_user_files(root: Path, generated: Path) -> None:
    """my-data/ as the example config names it: a Parquet corpus, JSONL train pairs (ids or texts,
    some with negatives), CSV test pairs."""
    docs = [json.loads(line) for line in (generated / "corpus.jsonl").open(encoding="utf-8")]
    text = {d["_id"]: d["text"] for d in docs}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (generated / "queries.jsonl").open(encoding="utf-8"))}
    out = root / "my-data"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist([{"_id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs]), out / "corpus.parquet")
    with (out / "train.jsonl").open("w", encoding="utf-8") as handle:
        for i, (q, d) in enumerate(beir.positive_pairs(beir.read_qrels(generated, "train")[0])):
            row = {"query": queries[q], "doc_id": d} if i % 2 else {"query": queries[q], "positive": text[d]}
            if i % 3 == 0:
                row["negatives"] = [docs[(i * 7) % len(docs)]["_id"], f"an invented passage number {i}"]
            handle.write(json.dumps(row) + "\n")
    tests = [{"query": queries[q], "doc_id": d} for q, d in beir.positive_pairs(beir.read_qrels(generated, "test")[0])]
    pcsv.write_csv(pa.Table.from_pylist(tests), out / "test.csv")


def test_the_readme_example_mines_and_evaluates(tmp_path: Path, monkeypatch) -> None:
    generated = make_dataset(tmp_path / "generated", docs=300, queries=24, positives=(1, 3), dev_queries=2, test_queries=6)
    work = tmp_path / "work"
    (work / "configs").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "own-data.yaml", work / "configs")
    write_user_files(work, generated)
    monkeypatch.chdir(work)
    monkeypatch.setenv("SYNEG_CACHE", str(tmp_path / "cache"))

    # the README's commands, as written there, run from the folder that holds my-data/
    assert cli.main(["mine", "--config", "configs/own-data.yaml", "--smoke-test", "mine.sources=[bm25]"]) == 0
    cfg = load_config("configs/own-data.yaml", ["data.limit=16"])
    prepared = prepare(cfg)
    assert prepared.given_negatives is not None and pq.read_table(prepared.given_negatives).num_rows > 0
    docs = beir.read_corpus(prepared.folder)
    invented = sum("negatives" in json.loads(line) for line in (work / "my-data" / "train.jsonl").open(encoding="utf-8"))
    assert sum(d.startswith("gen-") for d in docs) == invented  # the invented negatives joined the corpus, nothing else
    train = beir.read_qrels(prepared.folder, "train")[0]
    mined = pq.read_table(Path(cfg.run.run_dir) / schema.MINED).to_pylist()
    assert len(mined) == pq.read_table(Path(cfg.run.run_dir) / schema.PAIRS).num_rows == 16
    for row in mined:  # mined from the converted corpus, never a positive of the query
        assert row["negative_ids"] and set(row["negative_ids"]) <= set(docs)
        assert not set(row["negative_ids"]) & set(train[row["query_id"]])

    assert cli.main(["evaluate", "--config", "configs/own-data.yaml", "--model", "bm25"]) == 0
    (scores,) = [json.loads(p.read_text()) for p in (Path(cfg.run.run_dir) / "evaluate").glob("*/metrics.json")]
    assert scores["split"] == "test" and scores["dataset"] == "my-data" and scores["queries"] == 6
    assert scores["ndcg@10"] > 0.3  # the generated queries share their positives' topic words


def test_given_negatives_are_a_mining_source(tmp_path: Path, monkeypatch) -> None:
    """`mine.sources=[given]`: each pair's negatives are its query's given ones, never a positive;
    without given negatives in the data the source is a one-line error."""
    import pytest

    from syneg_ray.errors import DataError
    from syneg_ray.stages.mine import run_mine

    generated = make_dataset(tmp_path / "generated", docs=200, queries=12, positives=(1, 2), dev_queries=2, test_queries=2)
    work = tmp_path / "work"
    work.mkdir()
    write_user_files(work, generated)
    monkeypatch.chdir(work)
    overrides = ["data.dataset=my-data", "data.corpus=my-data/corpus.parquet", "data.pairs=my-data/train.jsonl",
                 "data.positive_id_column=doc_id", f"run.cache_dir={tmp_path / 'cache'}", "mine.sources=[given]",
                 "mine.guard_scorer=source"]  # fmt: skip
    cfg = load_config(None, overrides)
    summary = run_mine(cfg)
    prepared = prepare(cfg)
    given: dict[str, set[str]] = {}
    for row in pq.read_table(prepared.given_negatives).to_pylist():
        given.setdefault(row["query_id"], set()).update(row["negative_ids"])
    train = beir.read_qrels(prepared.folder, "train")[0]
    mined = pq.read_table(Path(cfg.run.run_dir) / schema.MINED).to_pylist()
    with_given = [r for r in mined if r["query_id"] in given]
    assert with_given and summary["per_source"] == {"given": sum(len(r["negative_ids"]) for r in mined)}
    for row in mined:
        assert set(row["negative_ids"]) <= given.get(row["query_id"], set()) - set(train[row["query_id"]])
        assert set(row["source"]) <= {"given"}
    assert sum(len(r["negative_ids"]) for r in with_given) > 0

    (work / "my-data" / "plain.jsonl").write_text("".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "negatives"}) + "\n"
        for line in (work / "my-data" / "train.jsonl").open(encoding="utf-8")), encoding="utf-8")  # fmt: skip
    plain = load_config(None, [*overrides, "data.pairs=my-data/plain.jsonl", f"run.run_dir={tmp_path / 'plain'}"])
    with pytest.raises(DataError, match="mine.sources names `given`, but the data has no given negatives"):
        run_mine(plain)
