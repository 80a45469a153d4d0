"""Epoch checkpoints of a training session: model (sentence-transformers folder), optimizer, schedule, history. No Ray."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from syneg_ray.stages.train.step import Session

MODEL_DIR = "model"  # a checkpoint's sentence-transformers folder
STATE_FILE = "state.pt"
META_FILE = "meta.json"


def save_state(sess: Session, folder: str | Path, epochs: list[dict], config: dict) -> Path:
    """Writes everything needed to continue after the epochs in `epochs` (the last one is complete)."""
    folder = Path(folder)
    sess.encoder.save(folder / MODEL_DIR)
    torch.save(
        {"optimizer": sess.optimizer.state_dict(), "scheduler": sess.scheduler.state_dict(), "step": sess.step},
        folder / STATE_FILE,
    )
    meta = {"next_epoch": epochs[-1]["epoch"] + 1, "epochs": epochs, "steps": sess.history, "config": config}
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return folder


def load_state(sess: Session, folder: str | Path) -> dict:
    """Restores optimizer, schedule, step and history into `sess`; returns the checkpoint's meta.

    The weights are not loaded here: build the session from `folder / MODEL_DIR` instead, so the
    model is exactly what was saved (a strict load, with no key remapping to get wrong).
    """
    folder = Path(folder)
    state = torch.load(folder / STATE_FILE, map_location=sess.device, weights_only=False)
    sess.optimizer.load_state_dict(state["optimizer"])
    sess.scheduler.load_state_dict(state["scheduler"])
    sess.step = state["step"]
    meta = read_meta(folder)
    sess.history = list(meta["steps"])
    return meta


def read_meta(folder: str | Path) -> dict:
    return json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))
