"""Run, data and cache directories in object storage (s3://, gs://), for clusters whose nodes share no disk.

Every process works on local files. A URI `s3://bucket/key` has one local path on every node, its
mirror `<node dir>/mirror/s3/bucket/key` (`local_path`), and that path names the URI back
(`uri_of`), so any actor or train worker given a path from the driver knows where the file lives
even when its own node never saw it:

- the process that writes a file or folder publishes it (`publish`, `ensure`);
- a process about to read one fetches it (`fetch`): a no-op where the path exists because this node
  wrote it, a download where it does not, a fresh download where the copy fetched earlier is stale.

Object stores have no atomic rename, so nothing is renamed there: a file is one object, written
whole by a single put; a folder is complete when its marker object (`PUBLISHED`, holding a token
unique to that publication) is there, and the marker is written after every other object of it.
Local writes stay atomic (a temporary sibling renamed into place). A path outside the mirror (a
local disk, or a mount every node shares) is used as it is.

Credentials and endpoints come from the usual environment variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...), which Ray's workers inherit from their node or the job's runtime_env.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

NODE_DIR_ENV = "SYNEG_NODE_DIR"  # this node's working folder for mirrors; must be the same path on every node
PUBLISHED = ".syneg-published"  # a folder's completion marker, written last
FETCHED = ".syneg-fetched"  # beside a fetched copy: the remote version it holds
SYNCED = ".syneg-synced.json"  # in a mirrored run directory: what was last pulled and pushed


def is_uri(location: str | Path) -> bool:
    """True for an object-store or remote filesystem URI (`s3://`, `gs://`, `hdfs://`), false for a local path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def node_dir() -> Path:
    """This node's folder for mirrors of remote locations ($SYNEG_NODE_DIR, else <tmp>/syneg-node).

    The default is the same path on every node of a cluster whose nodes run one image, which is what
    lets a path sent from the driver name the same remote file on another node.
    """
    return Path(os.environ.get(NODE_DIR_ENV) or Path(tempfile.gettempdir()) / "syneg-node")


def local_path(location: str | Path) -> Path:
    """The local path of `location`: its mirror for a URI, else the absolute path itself.

    Example:
        >>> local_path("s3://bucket/runs/a")  # doctest: +SKIP
        PosixPath('/tmp/syneg-node/mirror/s3/bucket/runs/a')
    """
    text = str(location)
    if not is_uri(text):
        return Path(os.path.abspath(Path(text.removeprefix("file://")).expanduser()))
    scheme, _, rest = text.partition("://")
    if "?" in rest:
        raise ValueError(f"{text}: options in the URI are not supported; set them in the environment "
                         "(AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ...)")  # fmt: skip
    return node_dir() / "mirror" / scheme / rest.strip("/")


def uri_of(path: str | Path) -> str | None:
    """The URI a local path mirrors, or None for a path outside every mirror."""
    root = node_dir() / "mirror"
    try:
        relative = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        return None
    if len(relative.parts) < 2:
        return None
    return f"{relative.parts[0]}://{'/'.join(relative.parts[1:])}"


def _remote(path: str | Path):  # -> (pyarrow FileSystem, path inside it) | None
    uri = uri_of(path)
    if uri is None:
        return None
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """One process of this node at a time fetches `path` (the others then find it there)."""
    locks = node_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    with open(locks / name, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _version(fs, key: str, marked: bool = True) -> str | None:
    """What identifies the remote object's current content: a folder's marker token, a file's size
    and mtime; for a folder written by other tools (`marked=False`, e.g. a dataset uploaded with
    `aws s3 cp`), a digest of its listing."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(key)
    if info.type == pafs.FileType.File:
        return f"file:{info.size}:{info.mtime_ns}"
    if info.type == pafs.FileType.Directory and not marked:
        listing = sorted((i.path, i.size, i.mtime_ns) for i in fs.get_file_info(pafs.FileSelector(key, recursive=True)))
        return "listing:" + hashlib.sha256(repr(listing).encode()).hexdigest()[:32]
    if info.type == pafs.FileType.Directory:
        marker = fs.get_file_info(f"{key}/{PUBLISHED}")
        if marker.type != pafs.FileType.File:
            return "folder:unpublished"
        with fs.open_input_stream(f"{key}/{PUBLISHED}") as stream:
            return "folder:" + stream.read().decode()
    return None


def _stamp(path: Path) -> Path:
    return path / FETCHED if path.is_dir() else path.with_name(f".{path.name}{FETCHED}")


def fetch(path: str | Path, marked: bool = True) -> Path:
    """Makes `path` readable on this node and returns it.

    A path this node wrote, or one outside every mirror, is returned as it is. A mirrored path is
    downloaded (once per node: other processes wait and then find it), and downloaded again when
    the remote copy changed since. `marked=False` takes a folder without a marker as complete (data
    that other tools uploaded).

    Raises:
        FileNotFoundError: neither here nor published under its URI (a folder counts as published
            once its marker is written).
    """
    path = Path(path)
    remote = _remote(path)
    if remote is None or (path.exists() and not _stamp(path).exists()):
        return path  # a local path, or this node wrote it
    fs, key = remote
    with _node_lock(path):
        version = _version(fs, key, marked)
        if version is None or version == "folder:unpublished":
            if path.exists():  # fetched before, since removed or being rewritten remotely: keep what we have
                return path
            state = "not published yet (its marker is missing)" if version else "not found"
            raise FileNotFoundError(f"{uri_of(path)}: {state}; the stage that writes it must run first")
        if path.exists() and _stamp(path).read_text() == version:
            return path
        _download(fs, key, path, version)
    return path


def _download(fs, key: str, path: Path, version: str) -> None:
    import pyarrow.fs as pafs

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    folder = not version.startswith("file:")
    logger.info("fetching %s", uri_of(path))
    if folder:
        tmp.mkdir()  # copy_files makes the subfolders, not the top one
    pafs.copy_files(key, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)
    _stamp(path).write_text(version)
    if folder:
        (path / PUBLISHED).unlink(missing_ok=True)  # the marker is the remote's bookkeeping, not content


def published(path: str | Path) -> bool:
    """True when the mirrored `path` exists remotely in full (a file, or a folder with its marker)."""
    remote = _remote(path)
    if remote is None:
        return Path(path).exists()
    version = _version(*remote)
    return version is not None and version != "folder:unpublished"


def publish(path: str | Path) -> None:
    """Uploads a mirrored file or folder to its URI (nothing for a path outside every mirror).

    A folder's objects go first and its marker last, so a reader never takes half a folder for
    a whole one; a file is one put.
    """
    path = Path(path)
    remote = _remote(path)
    if remote is None:
        return
    fs, key = remote
    logger.debug("publishing %s", uri_of(path))
    if path.is_dir():
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_file(f"{key}/{PUBLISHED}")  # a reader must not take the old marker for the new content
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in (FETCHED, PUBLISHED))
        sent = [(file, f"{key}/{file.relative_to(path).as_posix()}") for file in files]
        _upload(fs, sent)
        with fs.open_output_stream(f"{key}/{PUBLISHED}") as out:  # after every object is in
            out.write(uuid.uuid4().hex.encode())
    else:
        fs.create_dir(key.rpartition("/")[0], recursive=True)
        sent = [(path, key)]
        _upload(fs, sent)
    _note_pushed(path, fs, sent)


UPLOADS = 8  # files sent at once: object stores serve parallel puts, and a folder is mostly latency per object


def _upload(fs, files: list[tuple[Path, str]]) -> None:
    """Puts each (local file, key) on `fs`, UPLOADS at a time; returns when all are in (the first
    failure is raised once the others have finished)."""
    import pyarrow.fs as pafs

    local = pafs.LocalFileSystem()

    def put(item: tuple[Path, str]) -> None:
        pafs.copy_files(str(item[0]), item[1], source_filesystem=local, destination_filesystem=fs)

    with ThreadPoolExecutor(max_workers=UPLOADS) as pool:
        for done in [pool.submit(put, item) for item in files]:
            done.result()


def _note_pushed(path: Path, fs, sent: list[tuple[Path, str]]) -> None:
    """Records files published inside a mirrored run directory in its sync state, so the driver's
    next `push_tree` does not upload them again (a trained model is published for evaluate's actors,
    then the run directory is pushed). A lost update, from two processes writing the state at once,
    costs only that second upload."""
    root = next((p for p in path.parents if (p / SYNCED).is_file()), None)
    if root is None:
        return
    state = _synced(root)
    for file, key in sent:
        stat, info = file.stat(), fs.get_file_info(key)
        state[file.relative_to(root).as_posix()] = {"remote": [info.size, info.mtime_ns], "local": [stat.st_size, stat.st_mtime_ns]}
    _write_synced(root, state)


def ensure(path: str | Path, build: Callable[[Path], object]) -> Path:
    """`path` made readable here: found on this node, fetched from its URI, or built by `build(path)` and published.

    For content-addressed cache entries (a converted model, a validated corpus, embeddings): built
    once in the cluster, fetched by every other node that needs it.
    """
    path = Path(path)
    if path.exists() and not _stamp(path).exists():
        return path
    if _remote(path) is not None and published(path):
        return fetch(path)
    build(path)
    publish(path)
    return path


def remove(path: str | Path) -> None:
    """Deletes a file or folder here and, for a mirrored path, at its URI too: pushes upload, never
    delete, so without this a later pull would bring the removed outputs back."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    remote = _remote(path)
    if remote is None:
        return
    import pyarrow.fs as pafs

    fs, key = remote
    kind = fs.get_file_info(key).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(key)
    elif kind == pafs.FileType.File:
        fs.delete_file(key)


# --------------------------------------------------------------------------- a mirrored run directory


def _synced(local: Path) -> dict:
    try:
        return json.loads((local / SYNCED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_synced(local: Path, state: dict) -> None:
    tmp = local / f"{SYNCED}.partial"
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, local / SYNCED)


def _skip(relative: str, skip: tuple[str, ...]) -> bool:
    return relative == SYNCED or relative.endswith(FETCHED) or any(relative.startswith(s) for s in skip)


def pull_tree(local: Path, skip: tuple[str, ...] = ()) -> None:
    """Makes the mirror `local` equal its remote folder: changed objects downloaded, local files the
    remote lacks removed (the remote is the run's truth: a folder deleted there starts over).

    `skip`: relative prefixes left alone, such as Ray Train's storage, read from the URI by Ray itself.
    """
    import pyarrow.fs as pafs

    fs, root = _remote(local)
    state = _synced(local)
    infos = [] if fs.get_file_info(root).type == pafs.FileType.NotFound else fs.get_file_info(pafs.FileSelector(root, recursive=True))
    remote_files = {i.path[len(root) + 1 :]: i for i in infos if i.type == pafs.FileType.File}
    remote_files = {rel: i for rel, i in remote_files.items() if not _skip(rel, skip)}
    for rel, info in remote_files.items():
        target = local / rel
        seen = [info.size, info.mtime_ns]
        if target.is_file() and state.get(rel, {}).get("remote") == seen:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        pafs.copy_files(info.path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        os.replace(tmp, target)
        stat = target.stat()
        state[rel] = {"remote": seen, "local": [stat.st_size, stat.st_mtime_ns]}
    if local.exists():
        for file in [p for p in local.rglob("*") if p.is_file()]:
            rel = file.relative_to(local).as_posix()
            if not _skip(rel, skip) and rel not in remote_files:
                file.unlink()
                state.pop(rel, None)
    local.mkdir(parents=True, exist_ok=True)
    _write_synced(local, state)


def push_tree(local: Path, last: Callable[[str], bool] = lambda rel: False) -> int:
    """Uploads the files of the mirror `local` that changed since the last pull or push; returns how many.

    Files for which `last(relative path)` holds (completion markers) go after all others, so a
    marker never names outputs that are not there yet.
    """

    fs, root = _remote(local)
    state = _synced(local)
    changed: list[tuple[Path, str, os.stat_result]] = []
    for file in (p for p in local.rglob("*") if p.is_file()):
        rel = file.relative_to(local).as_posix()
        if _skip(rel, ()) or file.name.endswith(".partial"):
            continue
        stat = file.stat()
        if state.get(rel, {}).get("local") != [stat.st_size, stat.st_mtime_ns]:
            changed.append((file, rel, stat))
    for final in (False, True):  # the others, then the markers
        batch = sorted((c for c in changed if last(c[1]) == final), key=lambda c: c[1])
        _upload(fs, [(file, f"{root}/{rel}") for file, rel, _ in batch])
        for _, rel, stat in batch:
            info = fs.get_file_info(f"{root}/{rel}")
            state[rel] = {"remote": [info.size, info.mtime_ns], "local": [stat.st_size, stat.st_mtime_ns]}
    _write_synced(local, state)
    return len(changed)


def storage_location(path: str | Path):  # -> (str, pyarrow FileSystem | None)
    """Where Ray Train and Tune should keep `path`'s contents: (URI path, its filesystem) for a
    mirrored path, so workers on any node write there; else (the local path, None)."""
    remote = _remote(path)
    if remote is None:
        return str(path), None
    fs, key = remote
    return key, fs
