"""The dev split's corpus (per-epoch dev scores, Tune): which documents it searches, and that only
their texts are read. On the SciFact subset; no Ray."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from syneg_ray import beir, schema
from syneg_ray.dataset import ensure_pairs
from syneg_ray.stages.train.devset import load_devset


def test_the_dev_corpus_is_the_dev_positives_and_a_seeded_sample_or_the_whole_corpus(tiny_cfg) -> None:
    cfg = replace(tiny_cfg, data=replace(tiny_cfg.data, dev_fraction=0.25))
    prepared, _ = ensure_pairs(cfg)
    corpus = beir.read_corpus(prepared.folder)
    qrels = json.loads((Path(cfg.run.run_dir) / schema.DEV_QRELS).read_text(encoding="utf-8"))
    positives = sorted({d for docs in qrels.values() for d in docs if d in corpus})
    assert 0 < len(positives) < 100 < len(corpus)

    sampled = load_devset(replace(cfg, train=replace(cfg.train, dev_max_docs=100)))
    assert len(sampled.doc_ids) == 100 == len(set(sampled.doc_ids))
    assert sampled.doc_ids[: len(positives)] == positives  # every dev positive is searched, whatever the sample
    rest = sampled.doc_ids[len(positives):]
    order = {d: i for i, d in enumerate(corpus)}
    assert [order[d] for d in rest] == sorted(order[d] for d in rest)  # the sample keeps corpus order
    assert sampled.doc_texts == [corpus[d] for d in sampled.doc_ids]
    assert load_devset(replace(cfg, run=replace(cfg.run, seed=cfg.run.seed + 1), train=replace(cfg.train, dev_max_docs=100))) == sampled
    other_split_seed = load_devset(replace(cfg, data=replace(cfg.data, split_seed=cfg.data.split_seed + 1),
                                           train=replace(cfg.train, dev_max_docs=100)))  # fmt: skip
    assert other_split_seed.doc_ids[len(positives):] != rest

    whole = load_devset(replace(cfg, train=replace(cfg.train, dev_max_docs=0)))
    assert whole.doc_ids == list(corpus) and whole.doc_texts == list(corpus.values())
    assert sorted(whole.query_ids) == whole.query_ids == sorted(q for q, docs in qrels.items() if docs)
