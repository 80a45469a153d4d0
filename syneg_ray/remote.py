"""A run directory in object storage (s3://, gs://), for `syneg` and `ray job submit`.

The driver works on the run directory's mirror (`storage.local_path`): it pulls the remote folder
first, so a rerun resumes from what an earlier submission wrote, and pushes what changed after every
stage and when the command ends, also when it fails or is stopped (SIGTERM unwinds, see signals.py),
so nothing a stage finished is lost. Completion markers go last in every push.

Actors and train workers on other nodes do not read the driver's mirror: they fetch what they read
from the URI (`storage.fetch`), and Ray Train keeps checkpoints at the URI itself
(`storage.storage_location`), so a multi-node run needs no shared disk.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from syneg_ray import storage
from syneg_ray.config import PipelineConfig

logger = logging.getLogger(__name__)

# Ray Train and Tune keep their state at the URI itself and read it from there; the driver never
# mirrors it. Tune's trial folders (each trial's instances and checkpoints) are its scratch: a later
# command needs none of them, and pulling them would copy every trial's model.
RAY_STORAGE = ("train/ray", "tune/ray", "tune/trials/")
COMPLETION_MARKERS = ("_COMPLETE.json", "summary.json")


def is_uri(path: str) -> bool:
    return storage.is_uri(path)


def _is_marker(relative: str) -> bool:
    return relative.rpartition("/")[2] in COMPLETION_MARKERS


def push(cfg: PipelineConfig) -> None:
    """Uploads what changed in a mirrored run directory (nothing for a local one); markers last."""
    local = Path(cfg.run.run_dir)
    if storage.uri_of(local) is None:
        return
    sent = storage.push_tree(local, last=_is_marker)
    if sent:
        logger.info("pushed %d file(s) to %s", sent, storage.uri_of(local))


@contextlib.contextmanager
def local_run_dir(cfg: PipelineConfig) -> Iterator[PipelineConfig]:
    """Yields `cfg` with a local run directory: the same one, or the mirror of a URI, pulled first and
    pushed when the block ends, also when it fails or is interrupted."""
    if not storage.is_uri(cfg.run.run_dir):
        yield cfg
        return
    local = storage.local_path(cfg.run.run_dir)
    logger.info("run directory %s, mirrored in %s", cfg.run.run_dir, local)
    storage.pull_tree(local, skip=RAY_STORAGE)
    cfg = replace(cfg, run=replace(cfg.run, run_dir=str(local)))
    try:
        yield cfg
    finally:
        push(cfg)
