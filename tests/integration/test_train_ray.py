"""Ray Train end to end on CPU: 2 real workers (gloo), and a worker SIGKILLed mid-epoch that resumes. Slow."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from syneg_ray.config import MixConfig, MixStrategy
from syneg_ray.model import build_tiny
from syneg_ray.registry import resolve_model
from syneg_ray.stages.mix import run_mix
from syneg_ray.stages.train.trainer import run_train
from tests.stages.test_train_mix import write_inputs

pytestmark = pytest.mark.slow
# Ray Train V2's controller collects reports every 2 s by default: a worker killed sooner after a
# report loses that checkpoint. Poll faster so the test's kill lands after registration.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "st", resolve_model("minilm")))


def _cfg(tiny_cfg, model: str, **train):
    base = {"model": model, "workers": 2, "batch_size": 2, "epochs": 2, "learning_rate": 1e-3, "max_seq_length": 64, "grad_var_window": 2,
                "log_every": 5}  # fmt: skip
    return dataclasses.replace(
        tiny_cfg,
        mix=MixConfig(strategy=MixStrategy.RETRIEVED, ratio=0.0, n_negatives=3),
        train=dataclasses.replace(tiny_cfg.train, **{**base, **train}),
    )


def _attempts(cfg) -> list[dict]:
    from syneg_ray.stages.train.loop import ATTEMPTS_DIR, worker_records

    return worker_records(Path(cfg.run.run_dir) / "train", ATTEMPTS_DIR)


def test_two_workers_train_evaluate_and_save(tiny_cfg, ray_local, tiny_model) -> None:
    from sentence_transformers import SentenceTransformer

    cfg = _cfg(tiny_cfg, tiny_model)
    write_inputs(cfg, synthetic=False)
    run_mix(cfg)
    summary = run_train(cfg)
    epochs = summary["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(0.0 <= e["dev_ndcg@10"] <= 1.0 and e["loss"] > 0 for e in epochs)
    assert sorted(a["rank"] for a in _attempts(cfg)) == [0, 1]
    model = SentenceTransformer(summary["model"], device="cpu")
    assert model.encode(["a query"]).shape == (1, 32)
    assert Path(summary["curves"]).stat().st_size > 10_000
    assert run_train(cfg) == summary  # a finished run with the same config is not trained again


def test_killed_worker_resumes_from_last_checkpoint(tiny_cfg, ray_local, tiny_model) -> None:
    cfg = _cfg(tiny_cfg, tiny_model, epochs=3, max_failures=1, batch_size=1)
    write_inputs(cfg, synthetic=False)
    run_mix(cfg)
    progress = Path(cfg.run.run_dir) / "train" / "progress.json"
    killed: dict = {}

    def kill_in_second_epoch() -> None:
        deadline, seen = time.time() + 300, None
        while time.time() < deadline and not killed:
            try:
                state = json.loads(progress.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("epoch", 0) >= 1 and seen is None:
                seen = time.time()
            if seen is not None and (time.time() - seen > 1.0 or state["epoch"] >= 2):
                os.kill(state["pid"], signal.SIGKILL)  # a real worker death, mid-epoch
                killed.update(state)
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_in_second_epoch, daemon=True)
    watcher.start()
    summary = run_train(cfg)
    watcher.join(timeout=1)
    assert killed, "the worker was never killed"
    rank0 = [a for a in _attempts(cfg) if a["rank"] == 0]
    assert len(rank0) == 2 and rank0[0]["start_epoch"] == 0
    assert 1 <= rank0[1]["start_epoch"] <= killed["epoch"]  # restarted from a checkpoint, not from scratch
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1, 2]
    history = json.loads((Path(cfg.run.run_dir) / "train" / "history.json").read_text())["steps"]
    assert [s["step"] for s in history] == list(range(1, len(history) + 1))  # no step lost or repeated
