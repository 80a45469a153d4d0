"""Run directories on any pyarrow filesystem (local path, s3://, gs://, hdfs://), for `syneg` and `ray job submit`.

Stages read and write a local folder. A command or job whose run directory is a URI mirrors it
into a local working folder of the driver first and copies the results back after, so the same
stage code runs on a laptop and in a job. Ray Train workers placed on other nodes read the run directory by path
and do not see that folder: a multi-node run needs the run directory on a shared filesystem.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from syneg_ray.config import PipelineConfig

logger = logging.getLogger(__name__)


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)  # (filesystem, path inside it)


def pull(uri: str, local: Path) -> None:
    """Copies everything under `uri` into `local` (nothing when the remote folder does not exist yet)."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return
    pafs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def push(local: Path, uri: str) -> None:
    """Copies the local run folder back to `uri`, overwriting files of the same name."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(uri)
    fs.create_dir(root, recursive=True)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def localized(cfg: PipelineConfig) -> tuple[PipelineConfig, Path | None]:
    """A config whose run_dir is local: the same one, or a fresh folder mirroring the remote one."""
    if not is_uri(cfg.run.run_dir):
        return cfg, None
    local = Path(tempfile.mkdtemp(prefix="syneg-run-"))
    logger.info("mirroring %s into %s", cfg.run.run_dir, local)
    pull(cfg.run.run_dir, local)
    return replace(cfg, run=replace(cfg.run, run_dir=str(local))), local


@contextlib.contextmanager
def local_run_dir(cfg: PipelineConfig) -> Iterator[PipelineConfig]:
    """Yields `cfg` with a local run directory; a URI's mirror is copied back when the stage ends,
    also when it fails or is interrupted, so a rerun resumes from what was written."""
    remote_dir = cfg.run.run_dir
    cfg, local = localized(cfg)
    try:
        yield cfg
    finally:
        if local is not None:
            logger.info("copying %s back to %s", local, remote_dir)
            push(local, remote_dir)
