"""`mix.guard_synthetic`: the false-negative guard on the LLM's negatives, encoded by real encoder actors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from syneg_ray.config import MixConfig, MixStrategy
from syneg_ray.dataset import ensure_pairs
from syneg_ray.services import embed
from syneg_ray.stages.mix import run_mix
from tests.stages.test_train_mix import write_inputs

UNRELATED = "The recipe folds two cups of flour into softened butter before the dough rests overnight in a cold kitchen."


def test_guard_drops_synthetic_negatives_that_restate_the_positive(ray_local, tiny_cfg, monkeypatch) -> None:
    cfg = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.SYNTHETIC, n_negatives=2, min_negatives=2, guard_synthetic=True),
                              encoder=dataclasses.replace(tiny_cfg.encoder, actors=1, cpus_per_actor=0.5))
    write_inputs(cfg, synthetic=False)
    _, pairs_path = ensure_pairs(cfg)
    pairs = pq.read_table(pairs_path).to_pylist()
    # each pair's "negatives": its own positive, copied (a false negative), and an unrelated passage
    rows = [{"key": f"k{i}", "query_id": p["query_id"], "positive_id": p["positive_id"], "status": "ok",
             "negatives": [p["positive"], f"{UNRELATED} ({i})"]} for i, p in enumerate(pairs)]  # fmt: skip
    (Path(cfg.run.run_dir) / schema.SYNTHETIC).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), Path(cfg.run.run_dir) / schema.SYNTHETIC)

    stats = run_mix(cfg)

    assert stats["synthetic_guarded_out"] == len(pairs)  # every copy of a positive, and nothing else
    assert stats["dropped_short"] == len(pairs)  # synthetic-only with n=2 and min 2: one negative left is too few
    guarded = dataclasses.replace(cfg, mix=dataclasses.replace(cfg.mix, n_negatives=1, min_negatives=1))
    # another mix of the same negatives (as a Tune trial at another R is) reads the cached flags
    monkeypatch.setattr(embed, "encode_on_pool", lambda *a, **k: pytest.fail("the guard encoded the same negatives again"))
    stats = run_mix(guarded)
    instances = pq.read_table(Path(cfg.run.run_dir) / schema.INSTANCES).to_pylist()
    assert stats["instances"] == len(pairs) and all(r["negatives"][0].startswith(UNRELATED) for r in instances)
    assert json.loads((Path(cfg.run.run_dir) / "mix" / "stats.json").read_text())["synthetic_guarded_out"] == len(pairs)
    assert not list((Path(cfg.run.run_dir) / "mix").glob("*.npy"))  # the guard's embeddings are not left behind


def test_encoder_actors_finish_when_they_fill_every_free_cpu(ray_local, tiny_cfg) -> None:
    """A Tune trial running the guard holds a share of the CPUs, so the encoder actors can fill what
    is left. Nothing else Ray Data runs may then need a CPU of its own: a repartition task did, and
    waited forever behind the actors."""
    import threading

    from ray.util.placement_group import placement_group, remove_placement_group

    from syneg_ray.registry import resolve_model
    from syneg_ray.services.embed import encode_with_ray

    cfg = dataclasses.replace(tiny_cfg, encoder=dataclasses.replace(tiny_cfg.encoder, actors=1, cpus_per_actor=1.0))
    free = ray_local.available_resources()["CPU"]
    held = placement_group([{"CPU": free - 1.0}])  # leaves the actor's one CPU and nothing more
    ray_local.get(held.ready())
    texts = [f"{UNRELATED} ({i})" for i in range(40)]
    result: dict = {}
    target = Path(cfg.run.run_dir) / "held.npy"
    worker = threading.Thread(target=lambda: result.setdefault(
        "embeddings", encode_with_ray(cfg, resolve_model(cfg.encoder.model, cfg.run.cache_dir), texts, "", target)), daemon=True)
    try:
        worker.start()
        worker.join(timeout=180)
        assert not worker.is_alive(), "encoding did not finish with every free CPU held by the encoder actor"
    finally:
        remove_placement_group(held)
    assert result["embeddings"].shape[0] == len(texts)
