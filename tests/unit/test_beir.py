"""The BEIR reader: valid folders load, every malformed input fails with file, line and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syneg_ray import beir
from syneg_ray.errors import DataError

CORPUS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers fever.", "metadata": {}},
    {"_id": "d2", "title": "", "text": "Statins lower cholesterol.", "metadata": {}},
    {"_id": "d3", "title": "Vitamin D", "text": "Vitamin D and bones.", "metadata": {}},
]
QUERIES = [
    {"_id": "q1", "text": "Does aspirin reduce fever?", "metadata": {"d1": [{"label": "SUPPORT"}]}},
    {"_id": "q2", "text": "Do statins lower cholesterol?", "metadata": {}},
]
QRELS = "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\t2\r\nq2\td3\t1\r\n"


def write_folder(root: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    (root / "qrels" / "train.tsv").write_bytes(qrels.encode("utf-8"))
    return root


def test_loads_valid_folder_with_crlf_graded_and_multiple_positives(tmp_path: Path) -> None:
    split = beir.load_split(write_folder(tmp_path), "train")
    assert split.corpus == {"d1": "Aspirin Aspirin lowers fever.", "d2": "Statins lower cholesterol.", "d3": "Vitamin D Vitamin D and bones."}
    assert split.queries == {"q1": "Does aspirin reduce fever?", "q2": "Do statins lower cholesterol?"}
    assert split.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}}
    assert beir.positive_pairs(split.qrels) == [("q1", "d1"), ("q2", "d2"), ("q2", "d3")]


def test_qrels_without_a_header_keep_their_first_judgement(tmp_path: Path) -> None:
    headerless = QRELS.split("\r\n", 1)[1]
    assert beir.load_split(write_folder(tmp_path, qrels=headerless), "train").qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}}


def test_positive_pairs_skip_zero_relevance() -> None:
    assert beir.positive_pairs({"q": {"a": 0, "b": 1}}) == [("q", "b")]


def test_real_scifact_counts(scifact: Path) -> None:
    train = beir.load_split(scifact, "train")
    assert (len(train.corpus), len(train.queries), sum(map(len, train.qrels.values()))) == (5183, 809, 919)


def expect_error(folder: Path, match: str, split: str = "train") -> str:
    with pytest.raises(DataError, match=match) as info:
        beir.load_split(folder, split)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def test_broken_json_line(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    lines = (folder / "corpus.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-3]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    expect_error(folder, r"corpus\.jsonl:2: broken JSON")


def test_row_missing_id(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, corpus=[*CORPUS, {"title": "x", "text": "no id"}])
    expect_error(folder, r"corpus\.jsonl:4: row has no string '_id'")


def test_row_missing_text(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, queries=[QUERIES[0], {"_id": "q2"}])
    expect_error(folder, r"queries\.jsonl:2: row has no string 'text'")


def test_duplicate_ids(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, corpus=[*CORPUS, CORPUS[0]])
    expect_error(folder, r"corpus\.jsonl:4: duplicate _id 'd1'")


def test_qrels_unknown_query(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, qrels=QRELS + "q9\td1\t1\r\n")
    expect_error(folder, r"train\.tsv:5: query 'q9' is not in queries\.jsonl")


def test_qrels_unknown_document(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, qrels=QRELS + "q1\td9\t1\r\n")
    expect_error(folder, r"train\.tsv:5: document 'd9' is not in corpus\.jsonl")


def test_missing_split_lists_available(tmp_path: Path) -> None:
    expect_error(write_folder(tmp_path), r"test\.tsv: split 'test' not found; available splits: train", split="test")


def test_empty_corpus(tmp_path: Path) -> None:
    expect_error(write_folder(tmp_path, corpus=[]), r"corpus\.jsonl: the corpus is empty")


def test_not_utf8(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    with (folder / "corpus.jsonl").open("ab") as handle:
        handle.write(b'{"_id": "d4", "text": "caf\xe9"}\n')
    expect_error(folder, r"corpus\.jsonl:4: not UTF-8")


def test_utf8_bom(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "queries.jsonl").write_bytes(b"\xef\xbb\xbf" + (folder / "queries.jsonl").read_bytes())
    expect_error(folder, r"queries\.jsonl:1: starts with a UTF-8 byte-order mark")


def test_qrels_bad_score_and_field_count(tmp_path: Path) -> None:
    expect_error(write_folder(tmp_path, qrels=QRELS + "q1\td2\tyes\r\n"), r"train\.tsv:5: score 'yes' is not an integer")
    expect_error(write_folder(tmp_path, qrels=QRELS + "q1\td2\r\n"), r"train\.tsv:5: expected 3 tab-separated fields")


def test_unknown_dataset_name_without_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither a BEIR folder nor a BEIR dataset name"):
        beir.resolve_dataset("not-a-dataset", str(tmp_path))


def test_missing_dataset_with_download_off(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.download is false"):
        beir.resolve_dataset("nfcorpus", str(tmp_path), download=False)


def test_finds_dataset_by_name_under_data_dir(tmp_path: Path) -> None:
    write_folder(tmp_path / "mini")
    with pytest.raises(DataError):  # a name outside the BEIR list is not downloaded
        beir.resolve_dataset("other", str(tmp_path))
    assert beir.resolve_dataset(str(tmp_path / "mini")) == tmp_path / "mini"


def test_corpus_parquet_is_streamed_in_row_groups_and_names_a_duplicate_id(tmp_path, monkeypatch):
    import json

    import pyarrow.parquet as pq

    from syneg_ray import dataset
    from syneg_ray.errors import DataError

    monkeypatch.setattr(dataset, "CORPUS_ROW_GROUP", 4)
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"_id": f"d{i}", "title": "T" if i == 2 else "", "text": f"text {i}"}) + "\n" for i in range(10)))
    target = tmp_path / "corpus.parquet"
    assert dataset.write_corpus_parquet(source, target) == 10
    assert pq.ParquetFile(target).metadata.num_row_groups == 3  # 4 + 4 + 2
    rows = dataset.read_corpus_rows(target, 3, 9).to_pylist()
    assert [r["doc_id"] for r in rows] == [f"d{i}" for i in range(3, 9)] and rows[0]["text"] == "text 3"
    assert dataset.read_corpus_rows(target, 2, 3).column("text").to_pylist() == ["T text 2"]
    assert dataset.rows_of(pq.read_table(target).column("doc_id"), ["d9", "nope", "d0"]).tolist() == [9, -1, 0]

    lines = source.read_text().splitlines()
    source.write_text("\n".join([*lines, json.dumps({"_id": "d3", "text": "again"})]) + "\n")
    target.unlink()
    with pytest.raises(DataError, match=r"corpus.jsonl:11: duplicate _id 'd3'"):
        dataset.write_corpus_parquet(source, target)
    assert not target.exists() and not list(tmp_path.glob(".*.tmp"))  # nothing half-written is left
