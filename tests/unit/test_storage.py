"""storage.py against a real S3-compatible server on loopback: mirrors, publish and fetch across
"nodes" (two node folders that share nothing but the bucket), staleness, and run-directory sync."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from syneg_ray import storage


def _other_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(storage.NODE_DIR_ENV, str(tmp_path / "node-b"))


def _objects(uri: str) -> dict[str, bytes]:
    fs, root = pafs.FileSystem.from_uri(uri)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                out[info.path[len(root) + 1 :]] = stream.read()
    return out


def test_a_uri_has_one_local_path_that_names_it_back(s3: str, tmp_path: Path) -> None:
    mirror = storage.local_path(f"{s3}/runs/a")
    assert mirror == tmp_path / "node-a" / "mirror" / "s3" / s3.removeprefix("s3://") / "runs" / "a"
    assert storage.uri_of(mirror / "train" / "model") == f"{s3}/runs/a/train/model"
    assert storage.uri_of(tmp_path / "elsewhere") is None
    assert storage.local_path("relative/x") == Path.cwd() / "relative" / "x"
    with pytest.raises(ValueError, match="options in the URI"):
        storage.local_path("s3://bucket/x?endpoint_override=127.0.0.1")


def test_a_published_folder_is_fetched_whole_on_another_node(s3: str, tmp_path: Path, monkeypatch) -> None:
    folder = storage.local_path(f"{s3}/cache/models/m")
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    storage.publish(folder)

    _other_node(monkeypatch, tmp_path)
    there = storage.local_path(f"{s3}/cache/models/m")
    assert there != folder and not there.exists()
    assert storage.fetch(there) == there
    assert (there / "config.json").read_text() == "{}" and (there / "sub" / "weights.bin").stat().st_size == 1000
    assert not (there / storage.PUBLISHED).exists()  # the marker is bookkeeping, not content


def test_a_folder_without_its_marker_is_not_taken_for_whole(s3: str, tmp_path: Path, monkeypatch) -> None:
    fs, key = pafs.FileSystem.from_uri(f"{s3}/cache/models/half")
    with fs.open_output_stream(f"{key}/config.json") as out:  # objects of a publish cut before its marker
        out.write(b"{}")
    _other_node(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match="not published yet"):
        storage.fetch(storage.local_path(f"{s3}/cache/models/half"))
    with pytest.raises(FileNotFoundError, match="not found"):
        storage.fetch(storage.local_path(f"{s3}/cache/models/none"))
    # data uploaded by other tools has no marker: fetched when asked for unmarked
    assert (storage.fetch(storage.local_path(f"{s3}/cache/models/half"), marked=False) / "config.json").is_file()


def test_a_stale_copy_is_fetched_again_and_a_node_own_file_is_kept(s3: str, tmp_path: Path, monkeypatch) -> None:
    folder = storage.local_path(f"{s3}/runs/a/train/model")
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"old")
    storage.publish(folder)
    file = storage.local_path(f"{s3}/runs/a/dev_qrels.json")
    file.write_text("v1")
    storage.publish(file)

    _other_node(monkeypatch, tmp_path)
    assert (storage.fetch(storage.local_path(f"{s3}/runs/a/train/model")) / "w.bin").read_bytes() == b"old"
    assert storage.fetch(storage.local_path(f"{s3}/runs/a/dev_qrels.json")).read_text() == "v1"

    monkeypatch.setenv(storage.NODE_DIR_ENV, str(tmp_path / "node-a"))  # the writer retrains and rewrites
    (folder / "w.bin").write_bytes(b"new")
    storage.publish(folder)
    file.write_text("v2, longer")
    storage.publish(file)

    _other_node(monkeypatch, tmp_path)
    assert (storage.fetch(storage.local_path(f"{s3}/runs/a/train/model")) / "w.bin").read_bytes() == b"new"
    assert storage.fetch(storage.local_path(f"{s3}/runs/a/dev_qrels.json")).read_text() == "v2, longer"
    own = storage.local_path(f"{s3}/runs/a/own.txt")  # written on this node, never published: used as it is
    own.write_text("mine")
    assert storage.fetch(own).read_text() == "mine"


def test_ensure_builds_once_in_the_cluster(s3: str, tmp_path: Path, monkeypatch) -> None:
    built: list[Path] = []

    def build(path: Path) -> None:
        built.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("corpus")

    target = f"{s3}/cache/corpus/abc.parquet"
    assert storage.ensure(storage.local_path(target), build).read_text() == "corpus"
    _other_node(monkeypatch, tmp_path)
    assert storage.ensure(storage.local_path(target), build).read_text() == "corpus"
    assert len(built) == 1  # the second node fetched what the first one built


def test_a_path_outside_every_mirror_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(storage.NODE_DIR_ENV, str(tmp_path / "node"))
    local = tmp_path / "run" / "x.txt"
    local.parent.mkdir()
    local.write_text("here")
    storage.publish(local)  # nothing to upload to
    assert storage.fetch(local) == local and storage.published(local)
    assert not storage.published(tmp_path / "missing")
    assert storage.storage_location(local) == (str(local), None)


def test_push_sends_what_changed_with_markers_last_and_pull_mirrors_the_remote(s3: str, tmp_path: Path, monkeypatch) -> None:
    run = f"{s3}/runs/r"
    local = storage.local_path(run)
    (local / "mix").mkdir(parents=True)
    (local / "mix" / "instances.parquet").write_bytes(b"rows")
    (local / "mix" / "_COMPLETE.json").write_text("{}")
    order: list[str] = []
    real_copy = pafs.copy_files
    monkeypatch.setattr(pafs, "copy_files", lambda src, dst, **kw: (order.append(dst.rpartition("/")[2]), real_copy(src, dst, **kw)))
    assert storage.push_tree(local, last=lambda rel: rel.endswith("_COMPLETE.json")) == 2
    assert order == ["instances.parquet", "_COMPLETE.json"]
    assert storage.push_tree(local) == 0  # nothing changed since
    monkeypatch.setattr(pafs, "copy_files", real_copy)
    assert set(_objects(run)) == {"mix/instances.parquet", "mix/_COMPLETE.json"}

    _other_node(monkeypatch, tmp_path)  # a resubmission lands on another node
    there = storage.local_path(run)
    (there / "stale").mkdir(parents=True)
    (there / "stale" / "old.txt").write_text("from a run deleted since")
    (there / "train" / "ray").mkdir(parents=True)
    (there / "train" / "ray" / "state").write_text("Ray's own")
    storage.pull_tree(there, skip=("train/ray",))
    assert (there / "mix" / "instances.parquet").read_bytes() == b"rows"
    assert not (there / "stale" / "old.txt").exists()  # the remote is the truth
    assert (there / "train" / "ray" / "state").exists()  # skipped prefixes are left alone


def test_a_folder_published_inside_a_synced_run_directory_is_not_pushed_again(s3: str, monkeypatch) -> None:
    run = f"{s3}/runs/m"
    local = storage.local_path(run)
    storage.pull_tree(local)  # a run directory under sync, as remote.py keeps it
    model = local / "train" / "model"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"w" * 100)
    (model / "config.json").write_text("{}")
    storage.publish(model)  # for evaluate's actors, before the stage's push
    (local / "train" / "_COMPLETE.json").write_text("{}")
    sent: list[str] = []
    real_copy = pafs.copy_files
    monkeypatch.setattr(pafs, "copy_files", lambda src, dst, **kw: (sent.append(dst.rpartition("/")[2]), real_copy(src, dst, **kw)))
    assert storage.push_tree(local) == 1 and sent == ["_COMPLETE.json"]  # the model went up once
    (model / "config.json").write_text('{"changed": true}')
    assert storage.push_tree(local) == 1 and sent[-1] == "config.json"  # a later change still goes up


def test_a_folder_goes_up_several_objects_at_a_time_and_its_marker_after_all(s3: str, tmp_path: Path, monkeypatch) -> None:
    """Uploads overlap (a folder of many small files is latency per object), bounded by UPLOADS, and
    the folder arrives whole with its marker."""
    import threading
    import time

    folder = storage.local_path(f"{s3}/cache/embeddings/many")
    folder.mkdir(parents=True)
    for i in range(12):
        (folder / f"part-{i:02d}.bin").write_bytes(bytes([i]) * 100)
    running, most, lock = 0, 0, threading.Lock()
    real_copy = pafs.copy_files

    def slow_copy(src, dst, **kw):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        real_copy(src, dst, **kw)
        with lock:
            running -= 1

    monkeypatch.setattr(pafs, "copy_files", slow_copy)
    storage.publish(folder)
    assert 1 < most <= storage.UPLOADS
    assert set(_objects(f"{s3}/cache/embeddings/many")) == {f"part-{i:02d}.bin" for i in range(12)} | {storage.PUBLISHED}
