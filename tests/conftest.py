"""Shared fixtures: the real SciFact folder, a small BEIR subset of it, a local Ray, tiny configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_scifact() -> Path:
    """$SYNEG_SCIFACT, else scifact/ under $SYNEG_DATA_DIR, ../shared/datasets or ./datasets (the first that exists)."""
    if os.environ.get("SYNEG_SCIFACT"):
        return Path(os.environ["SYNEG_SCIFACT"])
    roots = [os.environ.get("SYNEG_DATA_DIR"), REPO.parent / "shared" / "datasets", REPO / "datasets"]
    candidates = [Path(r) / "scifact" for r in roots if r]
    return next((c for c in candidates if (c / "corpus.jsonl").is_file()), candidates[0])


SCIFACT = _find_scifact()

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-all", action="store_true", help="also run tests marked slow (not gpu)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--run-all"):
        config.option.markexpr = "not gpu"


@pytest.fixture(scope="session")
def scifact() -> Path:
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT}; set SYNEG_SCIFACT or SYNEG_DATA_DIR")
    return SCIFACT


@pytest.fixture(scope="session")
def scifact_small(scifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real BEIR folder cut from SciFact: 40 train and 20 test queries, their positives plus 300 other documents."""
    from syneg_ray import beir

    out = tmp_path_factory.mktemp("scifact_small")
    (out / "qrels").mkdir()
    keep_docs: set[str] = set()
    keep_queries: set[str] = set()
    for split, n in (("train", 40), ("test", 20)):
        lines = (scifact / "qrels" / f"{split}.tsv").read_bytes().split(b"\r\n")
        header, rows = lines[0], [r for r in lines[1:] if r]
        queries = sorted({r.split(b"\t")[0] for r in rows})[:n]
        chosen = [r for r in rows if r.split(b"\t")[0] in queries]
        keep_queries |= {q.decode() for q in queries}
        keep_docs |= {r.split(b"\t")[1].decode() for r in chosen}
        (out / "qrels" / f"{split}.tsv").write_bytes(b"\r\n".join([header, *chosen]) + b"\r\n")
    with (scifact / "corpus.jsonl").open(encoding="utf-8") as src, (out / "corpus.jsonl").open("w", encoding="utf-8") as dst:
        extra = 0
        for line in src:
            doc_id = json.loads(line)["_id"]
            if doc_id in keep_docs or extra < 300:
                extra += doc_id not in keep_docs
                dst.write(line)
    with (scifact / "queries.jsonl").open(encoding="utf-8") as src, (out / "queries.jsonl").open("w", encoding="utf-8") as dst:
        dst.writelines(line for line in src if json.loads(line)["_id"] in keep_queries)
    assert beir.load_split(out, "train").qrels  # the cut is itself a valid BEIR folder
    return out


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray, started the way the product starts it, with fractional-CPU-friendly sizing; shut down after the module."""
    import ray

    from syneg_ray.config import load_config
    from syneg_ray.runtime import init_ray

    init_ray(load_config(None, ["ray.num_cpus=4", "ray.object_store_gb=1"]))
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_cfg(tmp_path: Path, scifact_small: Path):
    """A PipelineConfig on the SciFact subset writing into a temporary run directory."""
    from syneg_ray.config import load_config

    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"data.dataset={scifact_small}", f"run.cache_dir={tmp_path / 'cache'}"])


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback for the whole session; yields its endpoint URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto_server did not start; install the dev extra (moto[server])")
            time.sleep(0.2)
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback S3 server, its credentials in the environment, and a node folder
    of this test's own (storage.NODE_DIR_ENV); yields `s3://<bucket>`."""
    import uuid

    import pyarrow.fs as pafs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SYNEG_NODE_DIR", str(tmp_path / "node-a"))
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True).create_dir(bucket)
    return f"s3://{bucket}"
