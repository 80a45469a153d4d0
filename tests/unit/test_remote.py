"""A run directory on object storage: the CLI mirrors it locally and copies the results back, also after a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from syneg_ray import remote
from syneg_ray.cli import main
from tests.unit.test_beir import write_folder

TEST_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch) -> Path:
    """s3://bucket/<path> stands for tmp_path/bucket/<path>: pull and push copy folders, as pyarrow's copy_files would."""
    root = tmp_path / "bucket"

    def where(uri: str) -> Path:
        return root / uri.split("://", 1)[1]

    def pull(uri: str, local: Path) -> None:
        if where(uri).is_dir():
            shutil.copytree(where(uri), local, dirs_exist_ok=True)

    def push(local: Path, uri: str) -> None:
        shutil.copytree(local, where(uri), dirs_exist_ok=True)

    monkeypatch.setattr(remote, "pull", pull)
    monkeypatch.setattr(remote, "push", push)
    return root


def test_a_uri_run_dir_is_mirrored_and_copied_back(tmp_path: Path, bucket: Path) -> None:
    folder = write_folder(tmp_path / "data")
    (folder / "qrels" / "test.tsv").write_text(TEST_QRELS, encoding="utf-8")
    argv = ["evaluate", "--model", "bm25", "--dataset", str(folder), "--split", "test", "--run-dir", "s3://bucket/runs/x",
            f"run.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(argv) == 0
    assert (bucket / "bucket" / "runs" / "x" / "evaluate" / "bm25-test" / "metrics.json").is_file()
    assert not (Path("s3:") / "bucket").exists()  # no local folder named after the URI


def test_what_a_failed_stage_wrote_is_copied_back_too(tmp_path: Path, bucket: Path) -> None:
    """Mix before mine: the stage fails after writing the run's pairs, which must reach the bucket."""
    folder = write_folder(tmp_path / "data")
    argv = ["mix", "--dataset", str(folder), "--run-dir", "s3://bucket/runs/y", "mix.strategy=retrieved",
            f"run.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(argv) == 2
    assert (bucket / "bucket" / "runs" / "y" / "pairs" / "pairs.parquet").is_file()
