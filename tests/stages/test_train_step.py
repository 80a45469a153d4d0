"""The bare training step (no Ray) on a tiny 2-layer BERT: GradCache == plain step, the loop learns, the model saves."""

from __future__ import annotations

import pytest
import torch

from syneg_ray.config import Dtype, TrainConfig, load_config
from syneg_ray.model import build_tiny, load_model
from syneg_ray.registry import resolve_model
from syneg_ray.stages.train.gradvar import GradVariance
from syneg_ray.stages.train.local import train_local
from syneg_ray.stages.train.step import build_session, cached_step, epoch_batches, plain_step


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "st", resolve_model("minilm")))


def _rows(n: int = 12, k: int = 2) -> list[dict]:
    topics = ["protein folding", "vaccine trials", "gut bacteria", "solar cells", "river erosion", "bird migration"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        rows.append({"query": f"what is known about {t} {i}", "positive": f"{t} {i} studies report results",
                     "negatives": [f"unrelated note {i}.{j} on {topics[(i + j + 1) % len(topics)]}" for j in range(k)]})  # fmt: skip
    return rows


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_cached_step_gives_the_plain_gradient(tiny_model_dir: str) -> None:
    rows = _rows(8, 3)
    queries, docs = [r["query"] for r in rows], [[r["positive"], *r["negatives"]] for r in rows]
    results = []
    for chunk in (0, 3):
        cfg = TrainConfig(temperature=0.05, grad_cache_chunk=chunk, batch_size=8)
        st = load_model(tiny_model_dir).eval()  # no dropout: chunking changes the dropout draws, not the math
        sess = build_session(st, cfg, 10, torch.device("cpu"))
        loss = (cached_step if chunk else plain_step)(sess, queries, docs)
        results.append((loss.item(), _grads(sess.model)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-3)


def test_epoch_batches_are_seeded_disjoint_and_sharded() -> None:
    a = epoch_batches(23, 4, 2, 0, seed=1, epoch=0)
    b = epoch_batches(23, 4, 2, 1, seed=1, epoch=0)
    assert len(a) == len(b) == 2 and all(len(x) == 4 for x in a + b)
    seen = [int(i) for x in a + b for i in x]
    assert len(set(seen)) == 16
    assert [list(x) for x in epoch_batches(23, 4, 2, 0, 1, 0)] == [list(x) for x in a]
    assert [list(x) for x in epoch_batches(23, 4, 2, 0, 1, 1)] != [list(x) for x in a]


def test_grad_variance_is_trace_of_covariance() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    gv = GradVariance(window=4)
    vectors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 2.0]])
    for v in vectors:
        p.grad = v.clone()
        gv.update([p])
    expected = vectors.var(dim=0, unbiased=True).sum().item()
    assert gv.ended and gv.last == pytest.approx(expected)


def test_train_local_learns_and_saves_a_sentence_transformer(tiny_model_dir: str, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    cfg = load_config(None, ["train.epochs=3", "train.batch_size=4", "train.learning_rate=0.001", "train.grad_var_window=2",
                             "train.max_seq_length=32", "train.dev_eval=false"])  # fmt: skip
    result = train_local(cfg, _rows(12), tiny_model_dir, tmp_path / "model")
    losses = [e["loss"] for e in result["epochs"]]
    assert len(result["steps"]) == 9 and losses[-1] < losses[0]
    # every epoch closes a window of 2 steps (3 steps each), and two batches never have the same gradient
    assert len(result["epochs"]) == 3 and all(0 < e["grad_var"] < float("inf") for e in result["epochs"])
    assert sum(bool(r["window_end"]) for r in result["steps"]) == 4
    saved = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert saved.encode(["a query"]).shape == (1, 32)


def test_training_truncates_texts_but_the_saved_model_keeps_its_own_limit(tiny_model_dir: str, tmp_path) -> None:
    """train.max_seq_length is a training cost, not a property of the result: a model saved with the
    training limit would be evaluated on shorter texts than its base, and compare worse for it."""
    from sentence_transformers import SentenceTransformer

    cfg = load_config(None, ["train.batch_size=4", "train.max_seq_length=16", "train.dev_eval=false"])
    base = load_model(tiny_model_dir)
    assert base.max_seq_length == 128
    sess = build_session(base, cfg.train, 3, torch.device("cpu"))
    long_text = " ".join(["protein"] * 60)
    assert sess.encoder.tokenize([long_text], "cpu")["input_ids"].shape[1] == 16
    train_local(cfg, _rows(12), tiny_model_dir, tmp_path / "model")
    assert SentenceTransformer(str(tmp_path / "model"), device="cpu").max_seq_length == 128
    sess.encoder.save(tmp_path / "checkpoint")  # a checkpoint mid-training: same limit, training goes on at 16
    assert SentenceTransformer(str(tmp_path / "checkpoint"), device="cpu").max_seq_length == 128
    assert sess.encoder.st.max_seq_length == 16


def test_bf16_autocast_step_runs_and_keeps_fp32_weights(tiny_model_dir: str) -> None:
    rows = _rows(4, 2)
    cfg = TrainConfig(batch_size=4, dtype=Dtype.BF16)
    sess = build_session(load_model(tiny_model_dir), cfg, 4, torch.device("cpu"))
    loss = plain_step(sess, [r["query"] for r in rows], [[r["positive"], *r["negatives"]] for r in rows])
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in sess.model.parameters())


def test_a_model_without_normalize_is_saved_with_one(tiny_model_dir: str, tmp_path) -> None:
    """Training scores by cosine; evaluation and mining search by inner product. A saved model that
    ends in Normalize makes the two the same."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from syneg_ray.model import save_model

    normalized = load_model(tiny_model_dir)
    unnormalized = SentenceTransformer(modules=list(normalized)[:-1], device="cpu")
    save_model(unnormalized, tmp_path / "saved")
    assert len(list(unnormalized)) == 2  # the model being trained is not changed
    back = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert [type(m).__name__ for m in back] == ["Transformer", "Pooling", "Normalize"]
    raw = unnormalized.encode(["protein folding", "river erosion"])
    saved = back.encode(["protein folding", "river erosion"])
    np.testing.assert_allclose(saved, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_the_step_masks_known_positives_unless_told_not_to(tiny_model_dir: str) -> None:
    """Two instances of one query in a batch: each positive is the other's known positive, not its negative."""
    rows = _rows(4, 1)
    rows[1]["query"] = rows[0]["query"]  # a query with two positives, as datasets with several per query have
    queries, docs = [r["query"] for r in rows], [[r["positive"], *r["negatives"]] for r in rows]
    got = {}
    for mask in (True, False):
        sess = build_session(load_model(tiny_model_dir).eval(), TrainConfig(batch_size=4, mask_known_positives=mask), 4,
                             torch.device("cpu"))  # fmt: skip
        got[mask] = plain_step(sess, queries, docs).item()
    assert got[True] < got[False]


@pytest.mark.parametrize("chunk", [0, 3])
def test_an_instance_with_fewer_negatives_trains_on_what_it_has(tiny_model_dir: str, chunk: int) -> None:
    """Empty slots are not encoded, and the loss is the one over the present documents: padding a
    short instance with None gives the loss of the batch without those slots at all."""
    from syneg_ray import losses
    from syneg_ray.stages.train.step import Data

    rows = _rows(6, 3)
    rows[2]["negatives"] = rows[2]["negatives"][:1]
    rows[4]["negatives"] = []
    data = Data.from_rows(rows)
    assert [len(r) for r in data.docs] == [4] * 6 and data.docs[4][1:] == [None, None, None]
    cfg = TrainConfig(temperature=0.05, grad_cache_chunk=chunk, batch_size=6)
    st = load_model(tiny_model_dir).eval()
    sess = build_session(st, cfg, 10, torch.device("cpu"))
    encoded = []
    tokenize = sess.encoder.tokenize_documents
    sess.encoder.tokenize_documents = lambda texts, device: encoded.extend(texts) or tokenize(texts, device)
    loss = (cached_step if chunk else plain_step)(sess, data.queries, data.docs)
    assert None not in encoded and len(encoded) == 6 + 3 * 4 + 1  # positives and the negatives present
    with torch.no_grad():  # the same loss, written out over the present documents
        q = sess.model(sess.encoder.tokenize_queries(data.queries, sess.device))
        d = torch.zeros(6, 4, q.shape[1])
        mask = torch.tensor([[t is not None for t in row] for row in data.docs])
        d[mask] = sess.model(tokenize([t for row in data.docs for t in row if t is not None], sess.device))
        expected = losses.info_nce(q, d, 0.05, d_mask=mask)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
