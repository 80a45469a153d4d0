"""The user's own data: every reader converts to the same BEIR folder, and each bad input fails on one
line naming the file, the row, the column and the fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from syneg_ray import beir, schema, userdata
from syneg_ray.config import load_config
from syneg_ray.dataset import configured_dev_split, ensure_pairs, prepare
from syneg_ray.errors import ConfigError, DataError, MissingExtraError
from tests.make_dataset import make_dataset
from tests.unit.test_beir import write_folder


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated BEIR folder: the data the user files below are written from."""
    return make_dataset(tmp_path_factory.mktemp("generated"), docs=80, queries=12, positives=(1, 3), dev_queries=3, test_queries=4)


def corpus_rows(folder: Path) -> list[dict]:
    return [{k: row[k] for k in ("_id", "title", "text")} for row in map(json.loads, (folder / "corpus.jsonl").open(encoding="utf-8"))]


def pair_rows(folder: Path, split: str, with_ids: bool = True) -> list[dict]:
    """(query, positive) rows of a split: with query_id and positive_id, or with the texts only."""
    queries = {r["_id"]: r["text"] for r in map(json.loads, (folder / "queries.jsonl").open(encoding="utf-8"))}
    texts = {r["_id"]: r["text"] for r in corpus_rows(folder)}
    qrels, _ = beir.read_qrels(folder, split)
    rows = []
    for q in sorted(qrels):
        for d in sorted(qrels[q]):
            row = {"query": queries[q], "positive": texts[d]}
            rows.append({"query_id": q, **row, "positive_id": d} if with_ids else row)
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    """Rows as the file type of `path`'s suffix (lists in CSV as JSON text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
        pcsv.write_csv(pa.Table.from_pylist(flat), path, pcsv.WriteOptions(delimiter="\t" if path.suffix == ".tsv" else ","))
    return path


def config(tmp_path: Path, **data: str):
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}", *overrides])


def qrels_of(folder: Path, split: str) -> beir.Qrels:
    return {q: {d: 1 for d in docs} for q, docs in beir.read_qrels(folder, split)[0].items()}


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv", ".tsv", "datasets"])
def test_every_format_converts_to_the_same_beir_folder(tmp_path: Path, generated: Path, suffix: str) -> None:
    if suffix == "datasets":
        datasets = pytest.importorskip("datasets")
        corpus, pairs = tmp_path / "corpus_ds", tmp_path / "pairs_ds"
        datasets.Dataset.from_list(corpus_rows(generated)).save_to_disk(str(corpus))
        datasets.Dataset.from_list(pair_rows(generated, "train")).save_to_disk(str(pairs))
    else:
        corpus = write(tmp_path / f"corpus{suffix}", corpus_rows(generated))
        pairs = write(tmp_path / f"train{suffix}", pair_rows(generated, "train"))
    tests = write(tmp_path / "test.jsonl", pair_rows(generated, "test"))
    prepared = prepare(config(tmp_path, corpus=corpus, pairs=pairs, eval_pairs=tests))
    folder = prepared.folder
    assert beir.read_corpus(folder) == beir.read_corpus(generated)  # titles joined by BEIR's rule, in the same order
    assert qrels_of(folder, "train") == qrels_of(generated, "train")
    assert qrels_of(folder, "test") == qrels_of(generated, "test")
    assert not (folder / "qrels" / "dev.tsv").exists() and prepared.given_negatives is None
    split = beir.load_split(folder, "train")  # the converted folder is itself a valid BEIR folder
    assert set(split.queries) == set(qrels_of(generated, "train"))


def test_texts_only_get_stable_ids_and_unknown_positives_join_the_corpus(tmp_path: Path, generated: Path, caplog) -> None:
    rows = pair_rows(generated, "train", with_ids=False)
    rows.append({"query": "a query of its own", "positive": "a passage found in no corpus"})
    corpus = write(tmp_path / "corpus.parquet", corpus_rows(generated))
    with caplog.at_level(logging.INFO, logger="syneg_ray.userdata"):
        folder = prepare(config(tmp_path, corpus=corpus, pairs=write(tmp_path / "train.jsonl", rows))).folder
    assert "1 of them added from texts the pairs name" in caplog.text
    docs = beir.read_corpus(folder)
    added = [d for d in docs if d.startswith("gen-")]
    assert len(docs) == len(corpus_rows(generated)) + 1 and docs[added[0]] == "a passage found in no corpus"
    train = beir.load_split(folder, "train")
    by_text = {text: q for q, text in train.queries.items()}
    assert all(q.startswith("q-") for q in train.queries)
    assert train.qrels[by_text["a query of its own"]] == {added[0]: 1}
    # a positive given as text is the corpus document with that text, found without any id
    expected = {(r["query"], r["positive_id"]) for r in pair_rows(generated, "train")}
    got = {(train.queries[q], d) for q in train.qrels for d in train.qrels[q] if not d.startswith("gen-")}
    assert got == expected
    # the ids are stable: another file with the same texts, another cache, the same ids
    again = prepare(config(tmp_path / "again", corpus=corpus, pairs=write(tmp_path / "again.parquet", rows))).folder
    assert beir.read_qrels(again, "train")[0] == beir.read_qrels(folder, "train")[0]


def test_given_negatives_by_id_or_text_and_no_corpus_file(tmp_path: Path) -> None:
    rows = [
        {"query": "what lowers fever?", "positive": "Aspirin lowers fever.", "negatives": ["Ibuprofen eases pain.", "Statins lower cholesterol."]},
        {"query": "what lowers cholesterol?", "positive": "Statins lower cholesterol.", "negatives": None},
        {"query": "what lowers fever?", "positive": "Paracetamol lowers fever.", "negatives": ["Aspirin lowers fever."]},
    ]  # fmt: skip
    cfg = config(tmp_path, pairs=write(tmp_path / "train.parquet", rows), dev_fraction=0)
    prepared = prepare(cfg)
    docs = beir.read_corpus(prepared.folder)  # no data.corpus: the positives and negatives are the corpus
    assert sorted(docs.values()) == sorted(["Aspirin lowers fever.", "Ibuprofen eases pain.", "Statins lower cholesterol.",
                                            "Paracetamol lowers fever."])  # fmt: skip
    id_of = {text: d for d, text in docs.items()}
    given = pq.read_table(prepared.given_negatives).to_pylist()
    assert prepared.given_negatives.parent == prepared.folder
    assert [(g["positive_id"], g["negative_ids"]) for g in given] == [
        (id_of["Aspirin lowers fever."], [id_of["Ibuprofen eases pain."], id_of["Statins lower cholesterol."]]),
        (id_of["Paracetamol lowers fever."], [id_of["Aspirin lowers fever."]]),
    ]
    _, pairs = ensure_pairs(cfg)
    assert pq.read_table(pairs).num_rows == 3


def test_negatives_name_corpus_ids_and_csv_lists_are_json(tmp_path: Path) -> None:
    corpus = write(tmp_path / "corpus.csv", [{"doc": "7", "body": "Aspirin lowers fever."}, {"doc": "8", "body": "Statins."}])
    pairs = write(tmp_path / "train.csv", [{"q": "fever?", "pid": "7", "negatives": ["8", "A new negative."]}])
    prepared = prepare(config(tmp_path, corpus=corpus, pairs=pairs, doc_id_column="doc", text_column="body",
                              query_column="q", positive_id_column="pid"))
    (given,) = pq.read_table(prepared.given_negatives).to_pylist()
    assert given["positive_id"] == "7" and given["negative_ids"][0] == "8" and given["negative_ids"][1].startswith("gen-")


def test_dev_and_eval_pairs_become_qrels_and_the_dev_split(tmp_path: Path, generated: Path) -> None:
    files = {"corpus": write(tmp_path / "c.parquet", corpus_rows(generated)),
             "pairs": write(tmp_path / "train.parquet", pair_rows(generated, "train")),
             "dev_pairs": write(tmp_path / "dev.jsonl", pair_rows(generated, "dev")),
             "eval_pairs": write(tmp_path / "test.csv", pair_rows(generated, "test"))}  # fmt: skip
    cfg = config(tmp_path, **files)
    assert configured_dev_split(cfg) == "dev"
    prepared, pairs = ensure_pairs(cfg)
    assert qrels_of(prepared.folder, "dev") == qrels_of(generated, "dev")
    dev = json.loads((Path(cfg.run.run_dir) / schema.DEV_QRELS).read_text(encoding="utf-8"))
    assert {q: set(docs) for q, docs in dev.items()} == {q: set(docs) for q, docs in qrels_of(generated, "dev").items()}
    assert set(pq.read_table(pairs).column("query_id").to_pylist()) == set(qrels_of(generated, "train"))


def test_conversion_is_cached_by_content(tmp_path: Path, generated: Path) -> None:
    pairs = write(tmp_path / "train.jsonl", pair_rows(generated, "train"))
    cfg = config(tmp_path, corpus=write(tmp_path / "c.jsonl", corpus_rows(generated)), pairs=pairs)
    first = prepare(cfg).folder
    stamp = (first / "corpus.jsonl").stat().st_mtime_ns
    assert prepare(cfg).folder == first and (first / "corpus.jsonl").stat().st_mtime_ns == stamp
    write(pairs, pair_rows(generated, "train")[:-1])  # edited content: a new conversion
    assert prepare(cfg).folder != first


def test_config_of_user_data_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.corpus is set but data.pairs is not"):
        load_config(None, ["data.corpus=c.parquet"])
    with pytest.raises(ConfigError, match="leave data.eval_split unset"):
        load_config(None, ["data.pairs=p.parquet", "data.eval_split=other"])
    with pytest.raises(ConfigError, match="dev with data.dev_pairs set"):
        load_config(None, ["data.pairs=p.parquet", "data.dev_split=dev"])


# --------------------------------------------------------------------------- bad input


CORPUS = [{"_id": "d1", "text": "Aspirin lowers fever."}, {"_id": "d2", "text": "Statins lower cholesterol."}]
PAIRS = [{"query": "fever?", "positive_id": "d1"}, {"query": "cholesterol?", "positive_id": "d2"}]


def expect(tmp_path: Path, pattern: str, corpus=CORPUS, pairs=PAIRS, suffix: str = ".parquet", **data: str) -> str:
    files = {"pairs": write(tmp_path / f"train{suffix}", pairs)}
    if corpus is not None:
        files["corpus"] = write(tmp_path / f"corpus{suffix}", corpus)
    with pytest.raises(DataError, match=pattern) as info:
        prepare(config(tmp_path, **files, **data))
    assert not list((tmp_path / "cache" / "userdata").glob(".*tmp"))  # nothing half-written is left
    return one_line(info)


def test_missing_column_names_the_columns_found(tmp_path: Path) -> None:
    message = expect(tmp_path, r"corpus\.parquet: missing column 'text'; columns found: _id, body",
                     corpus=[{"_id": "d1", "body": "x"}])
    assert "data.text_column" in message
    expect(tmp_path / "b", r"train\.parquet: missing column 'query'; columns found: question, positive_id",
           pairs=[{"question": "fever?", "positive_id": "d1"}])
    expect(tmp_path / "c", r"train\.parquet: missing column 'positive' .* or 'positive_id'", pairs=[{"query": "fever?"}])
    expect(tmp_path / "d", r"missing column 'qid'; columns found: query, positive_id", query_id_column="qid")  # renamed: required


def test_empty_text_query_and_positive(tmp_path: Path) -> None:
    expect(tmp_path, r"corpus\.jsonl: row 2, column 'text': empty text", suffix=".jsonl",
           corpus=[CORPUS[0], {"_id": "d2", "text": "  "}])
    expect(tmp_path / "b", r"train\.csv: row 2, column 'query': empty query", suffix=".csv",
           pairs=[PAIRS[0], {"query": "", "positive_id": "d2"}])
    expect(tmp_path / "c", r"train\.parquet: row 1, column 'positive': empty text of the positive",
           pairs=[{"query": "fever?", "positive": None}])


def test_duplicate_document_id_names_its_second_row(tmp_path: Path) -> None:
    corpus = [*CORPUS, {"_id": "d3", "text": "a"}, {"_id": "d1", "text": "b"}]
    expect(tmp_path, r"corpus\.parquet: row 4, column '_id': duplicate document id 'd1'", corpus=corpus)


def test_positive_id_not_in_the_corpus(tmp_path: Path) -> None:
    expect(tmp_path, r"train\.parquet: row 2, column 'positive_id': document 'd9' is not in the corpus .*corpus\.parquet.*fix the id",
           pairs=[PAIRS[0], {"query": "x?", "positive_id": "d9"}])


def test_negatives_cell_that_is_not_a_list(tmp_path: Path) -> None:
    expect(tmp_path, r"train\.parquet: row 1, column 'negatives': the negatives cell is a str, not a list",
           pairs=[{**PAIRS[0], "negatives": "d2"}])
    expect(tmp_path / "b", r"train\.jsonl: row 2, column 'negatives': not a list", suffix=".jsonl",
           pairs=[{**PAIRS[0], "negatives": ["d2"]}, {**PAIRS[1], "negatives": "d1"}])
    expect(tmp_path / "c", r"train\.csv: row 1, column 'negatives': .* not a list; .*JSON list", suffix=".csv",
           pairs=[{**PAIRS[0], "negatives": "d2"}])


def test_unreadable_and_unsupported_files(tmp_path: Path) -> None:
    (tmp_path / "train.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"train\.xlsx: unsupported file type '\.xlsx'; give Parquet") as info:
        prepare(config(tmp_path, pairs=tmp_path / "train.xlsx"))
    one_line(info)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read as parquet \(.*\); fix the file") as info:
        prepare(config(tmp_path, pairs=tmp_path / "broken.parquet"))
    one_line(info)
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        prepare(config(tmp_path, pairs=tmp_path / "missing.jsonl"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder: a folder, but not one saved by datasets' save_to_disk"):
        prepare(config(tmp_path, pairs=tmp_path / "folder"))


def test_datasets_folder_without_the_package_names_it(tmp_path: Path, monkeypatch) -> None:
    import builtins

    (tmp_path / "pairs_ds").mkdir()
    (tmp_path / "pairs_ds" / "state.json").write_text("{}")
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(MissingExtraError, match="datasets is not installed.*pip install datasets") as info:
        prepare(config(tmp_path, pairs=tmp_path / "pairs_ds"))
    one_line(info)


def test_dataset_dict_folder_asks_for_one_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: a DatasetDict of splits \(train\); name one split's folder"):
        prepare(config(tmp_path, pairs=tmp_path / "dd"))


def test_beir_qrels_grade_that_is_not_an_integer(tmp_path: Path) -> None:
    for grade in ("1.5", "high"):
        folder = write_folder(tmp_path / grade, qrels=f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t{grade}\n")
        with pytest.raises(DataError, match=rf"qrels/train\.tsv:3: score '{grade}' is not an integer") as info:
            beir.read_qrels(folder, "train")
        one_line(info)
    headerless = write_folder(tmp_path / "headerless", qrels="q1\td1\t0.5\n")  # not taken for a header
    with pytest.raises(DataError, match=r"train\.tsv:1: score '0\.5' is not an integer"):
        beir.read_qrels(headerless, "train")


# --------------------------------------------------------------------------- evaluation


def test_run_skips_evaluation_without_eval_pairs(tmp_path: Path, caplog) -> None:
    from syneg_ray.pipeline import run_evaluate_pair

    cfg = config(tmp_path, corpus=write(tmp_path / "c.parquet", CORPUS), pairs=write(tmp_path / "p.parquet", PAIRS))
    with caplog.at_level(logging.INFO, logger="syneg_ray.pipeline"):
        assert run_evaluate_pair(cfg) == {}
    assert "evaluate: skipped, the data has no test qrels (set data.eval_pairs to evaluate)" in caplog.text
    assert userdata.SPLITS["eval_pairs"] == "test"


def test_workers_get_absolute_data_files_and_the_label_as_it_is(tmp_path: Path, monkeypatch) -> None:
    """Ray Train workers and Tune trials run elsewhere: relative data files are made absolute, the name is kept."""
    from syneg_ray.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-data").mkdir()  # a folder named like the label must not turn the label into a path
    cfg = load_config(None, ["data.dataset=my-data", "data.pairs=my-data/train.jsonl", "data.corpus=my-data/c.parquet"])
    data = with_absolute_paths(cfg).data
    assert data.dataset == "my-data"
    assert data.pairs == str(tmp_path / "my-data" / "train.jsonl") and data.corpus == str(tmp_path / "my-data" / "c.parquet")
    assert data.eval_pairs == ""


def test_files_in_object_storage_convert_like_local_ones(s3: str, tmp_path: Path, generated: Path) -> None:
    """data.pairs / data.corpus as s3:// URIs (uploaded by another tool, so without our markers) are
    fetched to this node's mirror and give the same BEIR folder; a missing object is one line."""
    import pyarrow.fs as pafs

    local = {"corpus": write(tmp_path / "corpus.parquet", corpus_rows(generated)),
             "pairs": write(tmp_path / "train.jsonl", pair_rows(generated, "train"))}  # fmt: skip
    fs, bucket = pafs.FileSystem.from_uri(s3)
    for path in local.values():
        pafs.copy_files(str(path), f"{bucket}/upload/{path.name}", destination_filesystem=fs)
    remote = prepare(config(tmp_path / "remote", corpus=f"{s3}/upload/corpus.parquet", pairs=f"{s3}/upload/train.jsonl"))
    here = prepare(config(tmp_path / "here", **{k: str(v) for k, v in local.items()}))
    assert beir.read_corpus(remote.folder) == beir.read_corpus(here.folder)
    assert qrels_of(remote.folder, "train") == qrels_of(here.folder, "train")
    with pytest.raises(DataError) as info:
        prepare(config(tmp_path / "missing", pairs=f"{s3}/upload/nothing.jsonl"))
    assert one_line(info).startswith(f"{s3}/upload/nothing.jsonl: not found in object storage; check data.pairs")
