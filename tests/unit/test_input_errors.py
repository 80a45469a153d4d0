"""Bad inputs outside the BEIR reader (evaluation qrels, Parquet stage files, YAML, downloads) fail
with one line naming the file and the fix; an edited split rebuilds the pairs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from syneg_ray import attributes, beir, metrics
from syneg_ray.config import load_config
from syneg_ray.errors import ConfigError, DataError, yaml_error_message
from tests.unit.test_beir import QRELS, write_folder

TEST_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- evaluate


def evaluate_cfg(tmp_path: Path, qrels: str):
    folder = write_folder(tmp_path / "data")
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}",
                              f"data.dataset={folder}", "evaluate.model=bm25", "evaluate.split=test"])


def test_evaluate_rejects_a_query_missing_from_queries_jsonl(tmp_path: Path) -> None:
    from syneg_ray.stages.evaluate import run_evaluate

    with pytest.raises(DataError, match=r"qrels/test\.tsv:4: query 'q9' is not in queries\.jsonl") as info:
        run_evaluate(evaluate_cfg(tmp_path, TEST_QRELS + "q9\td1\t1\n"))
    one_line(info)


def test_evaluate_rejects_qrels_whose_documents_are_all_missing(tmp_path: Path) -> None:
    from syneg_ray.stages.evaluate import run_evaluate

    with pytest.raises(DataError, match=r"test\.tsv:2: document 'x1' is not in corpus\.jsonl, nor is any other") as info:
        run_evaluate(evaluate_cfg(tmp_path, "query-id\tcorpus-id\tscore\nq1\tx1\t1\nq2\tx2\t1\n"))
    one_line(info)


def test_evaluate_rejects_header_only_qrels(tmp_path: Path) -> None:
    from syneg_ray.stages.evaluate import run_evaluate

    with pytest.raises(DataError, match=r"qrels/test\.tsv: no judged query") as info:
        run_evaluate(evaluate_cfg(tmp_path, "query-id\tcorpus-id\tscore\n"))
    one_line(info)


def test_evaluate_keeps_a_few_missing_documents_as_beir_does(tmp_path: Path, caplog) -> None:
    """BEIR's ArguAna test qrels name a document its corpus lacks; BEIR scores it as never retrieved."""
    from syneg_ray.stages.evaluate import retrieve, run_evaluate

    cfg = evaluate_cfg(tmp_path, TEST_QRELS + "q2\tgone\t1\n")
    with caplog.at_level(logging.WARNING, logger="syneg_ray.beir"):
        scores = run_evaluate(cfg)
    assert "1 of 3 judged documents are not in corpus.jsonl (the first at line 4)" in caplog.text
    folder = Path(cfg.data.dataset)
    qrels, _ = beir.read_qrels(folder, "test")  # what evaluation read before it cross-checked
    run = retrieve(cfg, "bm25", beir.read_queries(folder, keep=set(qrels)), cfg.evaluate.top_k)
    assert scores == metrics.evaluate_run(qrels, run)
    assert scores["recall@100"] < 1.0  # the missing document counts as relevant


def test_evaluate_of_valid_data_scores_as_before(tmp_path: Path) -> None:
    from syneg_ray.stages.evaluate import retrieve, run_evaluate

    cfg = evaluate_cfg(tmp_path, TEST_QRELS)
    scores = run_evaluate(cfg)
    folder = Path(cfg.data.dataset)
    qrels, _ = beir.read_qrels(folder, "test")
    run = retrieve(cfg, "bm25", beir.read_queries(folder, keep=set(qrels)), cfg.evaluate.top_k)
    assert scores == metrics.evaluate_run(qrels, run)
    record = json.loads((Path(cfg.run.run_dir) / "evaluate" / "bm25-test" / "metrics.json").read_text())
    assert record["queries"] == 2


def test_training_still_rejects_any_missing_document(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, qrels=QRELS + "q1\tgone\t1\r\n")
    with pytest.raises(DataError, match=r"train\.tsv:5: document 'gone' is not in corpus\.jsonl$"):
        beir.load_split(folder, "train")


def test_a_run_that_would_score_its_model_on_its_training_queries_stops_before_any_work(tmp_path: Path, capsys) -> None:
    from syneg_ray.cli import main

    folder = write_folder(tmp_path / "data")
    argv = ["run", "--dataset", str(folder), "--run-dir", str(tmp_path / "run"), "data.train_split=test"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.train_split and the evaluated split are both 'test'" in err
    assert not (tmp_path / "run").exists()


def test_evaluating_the_trained_model_on_its_training_split_is_refused(tmp_path: Path) -> None:
    from syneg_ray.stages.evaluate import run_evaluate

    cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"data.dataset={write_folder(tmp_path / 'data')}",
                             "evaluate.split=train"])  # fmt: skip
    (tmp_path / "run" / "train" / "model").mkdir(parents=True)
    (tmp_path / "run" / "train" / "model" / "modules.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ConfigError, match="scored on the queries it was trained on") as info:
        run_evaluate(cfg)
    one_line(info)


def test_metrics_of_no_query_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least one judged query"):
        metrics.evaluate_run({}, {})


# --------------------------------------------------------------------------- Parquet stage files


def test_mix_names_a_corrupt_input_file(tmp_path: Path) -> None:
    from syneg_ray.stages.mix import MINED_COLUMNS, _read

    path = tmp_path / "mine" / "negatives.parquet"
    path.parent.mkdir()
    path.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(DataError, match=r"mine/negatives\.parquet: not a readable Parquet file .*rerun `syneg mine`") as info:
        _read(path, MINED_COLUMNS, "run `syneg mine` first")
    one_line(info)


def test_mix_names_a_truncated_part_of_the_synthetic_folder(tmp_path: Path) -> None:
    from syneg_ray.stages.mix import SYNTHETIC_COLUMNS, _read

    folder = tmp_path / "synthesize" / "negatives.parquet"
    folder.mkdir(parents=True)
    good = write_parquet(folder / "part-0.parquet").read_bytes()
    (folder / "part-1.parquet").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"part-1\.parquet.*rerun `syneg synthesize`") as info:
        _read(folder, SYNTHETIC_COLUMNS, "run `syneg synthesize` first")
    one_line(info)


def write_parquet(path: Path) -> Path:
    import pyarrow as pa

    pq.write_table(pa.table({"key": ["k"], "query_id": ["q1"], "positive_id": ["d1"], "negatives": [["n"]]}), path)
    return path


def test_train_names_a_corrupt_instances_file(tmp_path: Path) -> None:
    from syneg_ray.stages.train.trainer import read_instances

    path = tmp_path / "instances.parquet"
    path.write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=r"instances\.parquet: not a readable Parquet file .*rerun `syneg mix`") as info:
        read_instances(path, {"d1"})
    one_line(info)


# --------------------------------------------------------------------------- YAML


def test_attribute_pools_yaml_error_is_one_line_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text("domains: [Law, Tax]\nlengths: [shorter\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"pools\.yaml:\d+: not valid YAML \(.+\); fix the attribute pools file") as info:
        attributes.load_pools(path)
    one_line(info)


def test_config_yaml_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 1\n bad: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML \(") as info:
        load_config(path)
    one_line(info)


def test_yaml_error_without_a_mark_is_one_line() -> None:
    message = yaml_error_message("x.yaml", yaml.YAMLError("first line\n  second line"))
    assert message == "x.yaml: not valid YAML (first line second line)"


# --------------------------------------------------------------------------- download


def test_download_of_a_non_zip_names_the_url(tmp_path: Path, monkeypatch) -> None:
    class Page:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self) -> bytes:
            return b"<!DOCTYPE html><title>503 Service Unavailable</title>"

    monkeypatch.setattr(beir.urllib.request, "urlopen", lambda url, timeout: Page())
    with pytest.raises(DataError, match=r"scifact\.zip did not return a valid zip .*download and unzip it") as info:
        beir.resolve_dataset("scifact", str(tmp_path))
    one_line(info)


# --------------------------------------------------------------------------- pairs


def test_edited_split_rebuilds_the_pairs(tmp_path: Path) -> None:
    from syneg_ray.dataset import ensure_pairs

    folder = write_folder(tmp_path / "data")
    cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}",
                             f"data.dataset={folder}", "data.dev_fraction=0"])

    def pairs() -> list[tuple[str, str, str]]:
        _, path = ensure_pairs(cfg)
        return [(r["query_id"], r["positive_id"], r["query"]) for r in pq.read_table(path).to_pylist()]

    assert [p[:2] for p in pairs()] == [("q1", "d1"), ("q2", "d2"), ("q2", "d3")]
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    assert [p[:2] for p in pairs()] == [("q1", "d1")]
    queries = (folder / "queries.jsonl").read_text(encoding="utf-8")
    (folder / "queries.jsonl").write_text(queries.replace("Does aspirin reduce fever?", "Aspirin and fever?"), encoding="utf-8")
    assert pairs() == [("q1", "d1", "Aspirin and fever?")]


def test_train_names_the_row_of_an_instance_whose_id_is_not_in_the_corpus(tmp_path: Path, monkeypatch) -> None:
    """Ids are checked a block of rows at a time against the corpus's Arrow column; a row past the
    first block names its own line."""
    import pyarrow as pa

    from syneg_ray.stages.mix import INSTANCE_SCHEMA
    from syneg_ray.stages.train import trainer

    monkeypatch.setattr(trainer, "VALIDATE_ROWS", 2)
    corpus = pa.chunked_array([["d1", "d2"], ["d3"]])
    row = {"query_id": "q", "positive_id": "d1", "query": "q", "positive": "p", "negatives": ["a", "b"],
           "negative_sources": ["dense", "bm25"], "negative_ids": ["d2", "d3"]}  # fmt: skip
    rows = [row, row, row, {**row, "negative_ids": ["d3", "d9"]}, row]
    path = tmp_path / "instances.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=INSTANCE_SCHEMA), path)
    with pytest.raises(DataError, match=r"instances\.parquet:4: unknown negative id 'd9' \(bm25\): not in the corpus") as info:
        trainer.read_instances(path, corpus)
    one_line(info)
    pq.write_table(pa.Table.from_pylist(rows[:3], schema=INSTANCE_SCHEMA), path)
    assert trainer.read_instances(path, corpus) == (3, 2)


def test_a_dense_evaluation_checks_the_judged_documents_against_the_corpus_ids(tmp_path: Path) -> None:
    """A dense model's evaluation looks up only the judged ids in the corpus's id column; a missing
    one is left out, so beir.load_split warns about it as it does with the texts."""
    from syneg_ray.dataset import prepare
    from syneg_ray.stages.evaluate import judged_in_corpus

    cfg = evaluate_cfg(tmp_path, TEST_QRELS + "q2\tgone\t1\n")
    prepared = prepare(cfg)
    present = judged_in_corpus(prepared, "test")
    qrels, _ = beir.read_qrels(prepared.folder, "test")
    judged = {d for docs in qrels.values() for d in docs}
    assert "gone" in judged and present == judged - {"gone"} and present


def test_one_judged_query_writes_its_undefined_standard_error_as_null(tmp_path: Path) -> None:
    from syneg_ray.stages.evaluate import run_evaluate

    cfg = evaluate_cfg(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert math.isnan(run_evaluate(cfg)["ndcg@10_se"])  # one query: no spread to estimate
    text = (Path(cfg.run.run_dir) / "evaluate" / "bm25-test" / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["ndcg@10_se"] is None  # JSON has no NaN
