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


def test_the_mirror_leaves_ray_state_and_tune_trials_in_the_bucket(s3: str) -> None:
    """Ray's state and Tune's trial folders (every trial's checkpoints) are read at the URI, never pulled."""
    from syneg_ray.config import load_config
    from syneg_ray.remote import local_run_dir

    fs, root = pafs.FileSystem.from_uri(f"{s3}/runs/z")
    kept = ("pairs/pairs.parquet", "tune/trials.csv", "tune/best.yaml")
    left = ("train/ray/train/checkpoint_000000/model.safetensors", "tune/ray/tune/experiment_state.json",
            "tune/trials/a1b2_00000/train/ray/train/checkpoint_000000/model.safetensors")  # fmt: skip
    for relative in kept + left:
        with fs.open_output_stream(f"{root}/{relative}") as out:
            out.write(b"x")
    with local_run_dir(load_config(None, [f"run.run_dir={s3}/runs/z"])) as cfg:
        local = Path(cfg.run.run_dir)
        pulled = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert pulled == set(kept)
