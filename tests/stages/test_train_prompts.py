"""Training sees what evaluation sees: encoder.query_prompt and encoder.document_prompt reach the model's
tokenizer alike in mining/evaluation encoding, in both training steps (plain and GradCache) and in
the per-epoch dev scoring. No Ray.

A spy on the tokenizing module of the SentenceTransformer (its first module's `preprocess`, which
`SentenceTransformer.preprocess` calls for encoding and training alike) records every text it gets.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from syneg_ray.config import load_config
from syneg_ray.encoder import encode
from syneg_ray.model import build_tiny, load_model
from syneg_ray.registry import resolve_model
from syneg_ray.services.embed import encode_options
from syneg_ray.stages.train.devset import DevSet
from syneg_ray.stages.train.local import dev_scores, fit_epochs, session_prompts, train_local
from syneg_ray.stages.train.step import Data, build_session, cached_step, plain_step
from tests.stages.test_train_step import _rows

Q, P = "query: ", "passage: "


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "st", resolve_model("minilm")))


@pytest.fixture
def cfg():
    base = load_config(None, ["train.batch_size=4", "train.epochs=1", "train.max_seq_length=32", "train.log_every=100"])
    return dataclasses.replace(base, encoder=dataclasses.replace(base.encoder, query_prompt=Q, document_prompt=P))


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the model's tokenizer is given, with the prompt it is given (if any) in front."""
    from sentence_transformers.sentence_transformer.modules import Transformer

    texts: list[str] = []
    original = Transformer.preprocess

    def spy(self, inputs, prompt=None, **kwargs):
        texts.extend((prompt or "") + t for t in inputs)
        return original(self, inputs, prompt=prompt, **kwargs)

    monkeypatch.setattr(Transformer, "preprocess", spy)
    return texts


def _split(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    queries, docs = [r["query"] for r in rows], [[r["positive"], *r["negatives"]] for r in rows]
    return queries, docs, [t for row in docs for t in row]


def _devset() -> DevSet:
    queries = ["dev question on protein folding", "dev question on river erosion", "dev question on solar cells"]
    docs = ["folding of proteins, a dev passage", "erosion by rivers, a dev passage", "solar cell efficiency", "bird routes"]
    return DevSet(["q0", "q1", "q2"], queries, ["d0", "d1", "d2", "d3"], docs, {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1}})


def _mined(cfg, st, queries: list[str], documents: list[str], seen: list[str]) -> list[str]:
    """What the tokenizer gets when mining and evaluation encode `queries` and `documents` (services/embed.py's options)."""
    seen.clear()
    encode(st, queries, encode_options(cfg.encoder, cfg.encoder.query_prompt))
    encode(st, documents, encode_options(cfg.encoder, cfg.encoder.document_prompt))
    got = list(seen)
    seen.clear()
    return got


def test_mining_and_evaluation_encode_each_side_after_its_prompt(cfg, tiny_model_dir: str, seen: list[str]) -> None:
    """The reference the other places are held to (and proof the spy sees encoding at all)."""
    queries, _, documents = _split(_rows(4, 2))
    got = _mined(cfg, load_model(tiny_model_dir).eval(), queries, documents, seen)
    assert Counter(got) == Counter([Q + q for q in queries] + [P + d for d in documents])


@pytest.mark.parametrize("chunk", [0, 3], ids=["plain", "grad_cache"])
def test_the_training_step_tokenizes_what_mining_encodes(cfg, tiny_model_dir: str, seen: list[str], chunk: int) -> None:
    queries, docs, documents = _split(_rows(4, 2))
    st = load_model(tiny_model_dir).eval()
    mined = _mined(cfg, st, queries, documents, seen)
    sess = build_session(st, dataclasses.replace(cfg.train, grad_cache_chunk=chunk), 4, torch.device("cpu"),
                         query_prompt=Q, document_prompt=P)  # fmt: skip
    seen.clear()
    loss = (cached_step if chunk else plain_step)(sess, queries, docs)
    assert torch.isfinite(loss)
    assert seen == [Q + q for q in queries] + [P + d for d in documents]  # each side once, in order, prompt once
    assert Counter(seen) == Counter(mined)


def test_dev_scoring_encodes_what_evaluation_encodes(cfg, tiny_model_dir: str, seen: list[str]) -> None:
    dev = _devset()
    st = load_model(tiny_model_dir)
    mined = _mined(cfg, st, dev.query_texts, dev.doc_texts, seen)
    scores = dev_scores(st, dev, cfg)
    assert 0.0 <= scores["ndcg@10"] <= 1.0
    assert st.training  # dev scoring runs in eval mode and restores the mode
    assert Counter(seen) == Counter(mined)
    assert all(t.startswith(Q) for t in seen[: len(dev.query_texts)]) and all(t.startswith(P) for t in seen[len(dev.query_texts) :])


@pytest.mark.parametrize("chunk", [0, 3], ids=["plain", "grad_cache"])
def test_a_local_run_trains_and_scores_dev_with_the_prompts(cfg, tiny_model_dir: str, tmp_path, seen: list[str], chunk: int) -> None:
    """train_local, the path the steps and the per-epoch dev scoring share with the Ray worker (fit_epochs)."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_cache_chunk=chunk))
    rows, dev = _rows(8, 2), _devset()
    queries, _, documents = _split(rows)
    result = train_local(cfg, rows, tiny_model_dir, tmp_path / "model", dev=dev)
    assert len(result["steps"]) == 2 and "dev_ndcg@10" in result["epochs"][0]
    got = Counter(t for t in seen if t != "probe")  # build_session's probe for unused parameters
    # one epoch: every training row once (8 rows, 2 steps of 4), then the dev queries and documents once
    expected = [Q + q for q in queries + dev.query_texts] + [P + d for d in documents + dev.doc_texts]
    assert got == Counter(expected)


def test_dev_is_scored_at_the_epochs_dev_every_picks(cfg, tiny_model_dir: str, tmp_path) -> None:
    rows, dev = _rows(8, 2), _devset()
    for every, scored in ((2, [False, True, True]), (0, [False, False, True])):
        run = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3, dev_every=every))
        epochs = train_local(run, rows, tiny_model_dir, tmp_path / f"model{every}", dev=dev)["epochs"]
        assert ["dev_ndcg@10" in e for e in epochs] == scored


def test_dev_scoring_in_training_truncates_where_evaluation_and_the_base_models_scoring_do(cfg, tiny_model_dir: str, tmp_path,
                                                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Training reads 32 tokens (train.max_seq_length); evaluation reads the model's declared limit, and
    so must every dev score: Tune ranks its trials, scored in training, against the base model loaded
    from disk, and a trial read at the training limit would lose to the base model by truncation alone."""
    from sentence_transformers.sentence_transformer.modules import Transformer

    limits: list[tuple[str, int]] = []  # (text, the limit in force when the tokenizer got it)
    original = Transformer.preprocess

    def spy(self, inputs, prompt=None, **kwargs):
        limits.extend(((prompt or "") + t, self.max_seq_length) for t in inputs)
        return original(self, inputs, prompt=prompt, **kwargs)

    monkeypatch.setattr(Transformer, "preprocess", spy)
    declared = load_model(tiny_model_dir).max_seq_length
    assert declared > cfg.train.max_seq_length  # else the test could not tell the two apart
    rows, dev = _rows(8, 2), _devset()
    train_local(cfg, rows, tiny_model_dir, tmp_path / "model", dev=dev)
    dev_texts = {Q + q for q in dev.query_texts} | {P + d for d in dev.doc_texts}
    in_training = {limit for text, limit in limits if text in dev_texts}
    trained = {limit for text, limit in limits if text not in dev_texts and text != "probe"}
    assert in_training == {declared} and trained == {cfg.train.max_seq_length}
    limits.clear()
    dev_scores(load_model(str(tmp_path / "model")), dev, cfg)  # how Tune scores the base model
    assert {limit for _, limit in limits} == {declared}
    limits.clear()
    short = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, max_seq_length=16))
    dev_scores(load_model(str(tmp_path / "model")), dev, short)  # encoder.max_seq_length, as evaluation reads it
    assert {limit for _, limit in limits} == {16}


def test_fit_epochs_refuses_a_session_without_the_runs_prompts(cfg, tiny_model_dir: str) -> None:
    """A worker that built its session without `session_prompts(cfg)` would train on other inputs than it is searched with."""
    rows = _rows(4, 1)
    sess = build_session(load_model(tiny_model_dir), cfg.train, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="session_prompts"):
        fit_epochs(sess, Data.from_rows(rows), cfg, [])
    assert sess.step == 0
    sess = build_session(load_model(tiny_model_dir), cfg.train, 1, torch.device("cpu"), **session_prompts(cfg))
    assert len(fit_epochs(sess, Data.from_rows(rows), cfg, [])) == 1
