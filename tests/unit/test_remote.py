"""A run directory on a real S3-compatible server (loopback): the CLI mirrors it locally and pushes the results back, also after a failure."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from syneg_ray.cli import main
from tests.unit.test_beir import write_folder

TEST_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def _objects(uri: str) -> set[str]:
    fs, root = pafs.FileSystem.from_uri(uri)
    return {i.path[len(root) + 1 :] for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File}


def test_a_uri_run_dir_is_mirrored_and_copied_back(tmp_path: Path, s3: str) -> None:
    folder = write_folder(tmp_path / "data")
    (folder / "qrels" / "test.tsv").write_text(TEST_QRELS, encoding="utf-8")
    argv = ["evaluate", "--model", "bm25", "--dataset", str(folder), "--split", "test", "--run-dir", f"{s3}/runs/x",
            f"run.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(argv) == 0
    assert "evaluate/bm25-test/metrics.json" in _objects(f"{s3}/runs/x")
    assert not (Path("s3:") / "bucket").exists()  # no local folder named after the URI


def test_what_a_failed_stage_wrote_is_copied_back_too(tmp_path: Path, s3: str) -> None:
    """Mix before mine: the stage fails after writing the run's pairs, which must reach the bucket."""
    folder = write_folder(tmp_path / "data")
    argv = ["mix", "--dataset", str(folder), "--run-dir", f"{s3}/runs/y", "mix.strategy=retrieved",
            f"run.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(argv) == 2
    assert "pairs/pairs.parquet" in _objects(f"{s3}/runs/y")
