"""InfoNCE against loops written out here (in-batch negatives, known-positive mask, gathered at world size 1) and against
sentence-transformers' MNRL."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from syneg_ray import losses


def _batch(b: int = 5, n: int = 3, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, generator=g, requires_grad=True), torch.randn(b, 1 + n, h, generator=g, requires_grad=True)


def _naive(q: torch.Tensor, d: torch.Tensor, tau: float) -> float:
    b, k, _ = d.shape
    total = 0.0
    for i in range(b):
        pos = math.exp(F.cosine_similarity(q[i], d[i, 0], dim=0).item() / tau)
        denom = sum(math.exp(F.cosine_similarity(q[i], d[j, s], dim=0).item() / tau) for j in range(b) for s in range(k))
        total += -math.log(pos / denom)
    return total / b


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_info_nce_matches_explicit_loop(tau: float) -> None:
    q, d = _batch()
    assert losses.info_nce(q, d, tau).item() == pytest.approx(_naive(q, d, tau), rel=1e-5)


def test_info_nce_without_in_batch_uses_own_negatives_only() -> None:
    q, d = _batch()
    s = F.cosine_similarity(q[:, None], d, dim=-1) / 0.1  # (B, 1 + n)
    expected = -F.log_softmax(s, dim=-1)[:, 0].mean()
    assert losses.info_nce(q, d, 0.1, in_batch=False).item() == pytest.approx(expected.item(), rel=1e-6)


def test_info_nce_equals_sentence_transformers_mnrl() -> None:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    tau = 0.05
    q, d = _batch(b=8, n=4, h=32, seed=1)
    mnrl = MultipleNegativesRankingLoss(model=torch.nn.Identity(), scale=1.0 / tau)
    theirs = mnrl.compute_loss_from_embeddings([q, *d.unbind(dim=1)], labels=None)
    ours = losses.info_nce(q, d, tau)
    assert abs(ours.item() - theirs.item()) < 1e-5
    (g_ours,) = torch.autograd.grad(ours, q)
    (g_theirs,) = torch.autograd.grad(theirs, q)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-4)


def test_known_positives_marks_other_positives_of_the_same_query_and_repeated_positive_texts() -> None:
    q_ids = torch.tensor([1, 1, 2])  # rows 0 and 1: two positives of one query
    d_ids = torch.tensor([[10, 20], [11, 21], [10, 22]])  # row 2's positive is row 0's text again
    # columns, slot-major: 10, 11, 10 (the positives), then 20, 21, 22
    expected = torch.tensor([
        [False, True, True, False, False, False],  # 11 is its query's other positive; 10 again is its own text
        [True, False, True, False, False, False],
        [True, False, False, False, False, False],  # 10 in column 0 is its own positive's text
    ])  # fmt: skip
    assert torch.equal(losses.known_positives(q_ids, d_ids), expected)


def test_masked_info_nce_leaves_known_positives_out_of_the_softmax() -> None:
    q, d = _batch(b=3, n=1)
    q_ids, d_ids = torch.tensor([1, 1, 2]), torch.tensor([[10, 20], [11, 21], [10, 22]])
    logits = losses.scores(q, d, 0.05)
    keep = ~losses.known_positives(q_ids, d_ids)
    expected = torch.stack([-(logits[i, i] - torch.logsumexp(logits[i][keep[i]], dim=0)) for i in range(3)]).mean()
    masked = losses.info_nce(q, d, 0.05, q_ids=q_ids, d_ids=d_ids)
    assert masked.item() == pytest.approx(expected.item(), rel=1e-6)
    assert masked.item() < losses.info_nce(q, d, 0.05).item()  # fewer negatives, lower loss
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(masked, [q, d]))


def test_masked_info_nce_without_repeats_is_the_plain_loss() -> None:
    q, d = _batch()
    q_ids, d_ids = torch.arange(5), 100 + torch.arange(20).view(5, 4)
    assert losses.info_nce(q, d, 0.05, q_ids=q_ids, d_ids=d_ids).item() == losses.info_nce(q, d, 0.05).item()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _written_out(
    q: torch.Tensor, d: torch.Tensor, tau: float, in_batch: bool = True, q_ids: torch.Tensor | None = None,
    d_ids: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """InfoNCE written out per query, independent of `losses`: -(s(q_i, p_i) - logsumexp over the documents
    row i may use), s = cosine / tau. With in-batch negatives row i uses every document of the batch,
    except (given ids) the texts that are a positive of one of its query's instances, its own label apart."""
    b, k, _ = d.shape
    terms = []
    for i in range(b):
        candidates = [(j, s) for j in range(b) for s in range(k)] if in_batch else [(i, s) for s in range(k)]
        if in_batch and q_ids is not None and d_ids is not None:
            positives = {int(d_ids[r, 0]) for r in range(b) if int(q_ids[r]) == int(q_ids[i])}
            candidates = [(j, s) for j, s in candidates if (j, s) == (i, 0) or int(d_ids[j, s]) not in positives]
        logits = torch.stack([torch.dot(q[i], d[j, s]) / (q[i].norm() * d[j, s].norm()) / tau for j, s in candidates])
        terms.append(torch.logsumexp(logits, dim=0) - torch.dot(q[i], d[i, 0]) / (q[i].norm() * d[i, 0].norm()) / tau)
    return torch.stack(terms).mean()


def _repeating() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of 5 with repeated texts, embedded alike, each positive near its query: rows 0 and 3 are one
    query (two positives), row 2's positive is row 0's text again, row 4's last hard negative is row 3's positive."""
    q, d = _batch()
    q_ids, d_ids = torch.tensor([1, 2, 3, 1, 5]), 100 + torch.arange(20).view(5, 4)
    with torch.no_grad():
        d[:, 0] = q + 0.5 * d[:, 0]  # positives score high, so leaving one out of a softmax shows in the loss
        q[3] = q[0]
        d[2, 0], d_ids[2, 0] = d[0, 0], d_ids[0, 0]
        d[4, 3], d_ids[4, 3] = d[3, 0], d_ids[3, 0]
    return q, d, q_ids, d_ids


def test_written_out_loss_is_the_library_loss_and_the_mask_matters() -> None:
    q, d, q_ids, d_ids = _repeating()
    masked = _written_out(q, d, 0.05, q_ids=q_ids, d_ids=d_ids)
    assert masked.item() < _written_out(q, d, 0.05).item() - 0.1  # the repeats change the loss: the mask is tested
    assert losses.info_nce(q, d, 0.05, q_ids=q_ids, d_ids=d_ids).item() == pytest.approx(masked.item(), rel=1e-5)
    assert losses.info_nce(q, d, 0.05, in_batch=False).item() == pytest.approx(_written_out(q, d, 0.05, in_batch=False).item(), rel=1e-5)


@pytest.mark.parametrize(("in_batch", "gather", "masked"), [(True, True, False), (True, True, True), (True, False, True), (False, True, False)],
                         ids=["gathered", "gathered-masked", "local-masked", "own-negatives"])  # fmt: skip
def test_gathered_loss_at_world_size_one_is_the_written_out_loss(in_batch: bool, gather: bool, masked: bool) -> None:
    """In a real gloo group of one, the loss the training step calls, and its gradient, are InfoNCE as written out."""
    q, d, q_ids, d_ids = _repeating()
    if not masked:
        q_ids = d_ids = None
    expected = _written_out(q, d, 0.05, in_batch, q_ids, d_ids)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)  # a real gloo group, not a shortcut
    try:
        assert losses.world_size() == 1
        gathered = losses.gathered_info_nce(q, d, 0.05, in_batch, gather, q_ids, d_ids)
    finally:
        dist.destroy_process_group()
    assert gathered.item() == pytest.approx(expected.item(), rel=1e-5)
    g_expected = torch.autograd.grad(expected, [q, d])
    g_gathered = torch.autograd.grad(gathered, [q, d])
    assert all(g.abs().sum() > 0 for g in g_expected)  # both inputs get a gradient to compare
    for a, b in zip(g_expected, g_gathered, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("in_batch", [True, False])
def test_empty_slots_are_left_out_of_every_softmax(in_batch: bool) -> None:
    """An instance with fewer negatives: its empty slots (masked) weigh nothing, whatever they hold,
    and the loss equals the written-out one over the documents that are there."""
    q, d = _batch(b=4, n=3)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1, 2:] = False  # instance 1 holds one negative of three
    mask[3, 1:] = False  # instance 3 holds none: in-batch negatives only
    a = losses.info_nce(q, d, 0.1, in_batch, d_mask=mask)
    d_other = d.detach().clone()
    d_other[~mask] = torch.randn(int((~mask).sum()), d.shape[-1])  # other content in the empty slots
    assert losses.info_nce(q, d_other, 0.1, in_batch, d_mask=mask).item() == pytest.approx(a.item(), rel=1e-6)
    expected = 0.0
    for i in range(4):
        docs = [(j, s) for j in range(4) for s in range(4) if mask[j, s]] if in_batch else [(i, s) for s in range(4) if mask[i, s]]
        logits = torch.stack([F.cosine_similarity(q[i], d[j, s], dim=0) for j, s in docs]) / 0.1
        expected += -F.log_softmax(logits, dim=0)[docs.index((i, 0))].item()
    assert a.item() == pytest.approx(expected / 4, rel=1e-5)
    assert losses.info_nce(q, d, 0.1, in_batch).item() != pytest.approx(a.item(), rel=1e-3)  # the mask matters
