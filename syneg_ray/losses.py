"""InfoNCE over hard and in-batch negatives, optionally gathered across workers. Pure torch, no Ray.

Layout: the documents of a batch come as `d (B, 1 + n, H)`, slot 0 the positive, slots 1..n the
instance's hard negatives. With in-batch negatives the score matrix is queries x every document of
the (gathered) batch, ordered slot-major `[positives; negatives_1; ...; negatives_n]`, which is the
layout of sentence-transformers' MultipleNegativesRankingLoss, so query i's label is i.

Gathering (`gather=True` under torch.distributed): queries AND documents of every worker are
gathered, the local slice replaced by the local tensor so gradients flow into it, and each worker
computes the SAME loss over all W x B queries. Its gradient with respect to the local tensors is
then complete (it includes the other workers' queries scoring our documents). DDP averages the
gradients of the W workers, which divides that gradient by W; the training step multiplies the
loss by `world_size()` before backward, in one place (`train/step.py`), and nowhere else.

Known positives are not negatives: given ids of the query and document texts, a column that holds
a positive of the row's query (another instance of the same query, or the same positive text
again) is left out of that row's softmax. Datasets with several positives per query put such
pairs in one batch routinely; without the mask each positive is pushed away from its own query.

Empty slots: an instance may hold fewer than n hard negatives (the guard left its pair short). Its
empty slots carry a zero vector and `d_mask` False; they are left out of every row's softmax, so
the instance trains on the negatives it has plus the batch's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    """Workers in the default process group (1 when torch.distributed is not initialized)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad_local(x: torch.Tensor) -> torch.Tensor:
    """all_gather along dim 0, with this rank's slice being `x` itself so gradients flow through it.

    The other ranks' slices are constants here; their gradients are computed on their own ranks.
    Every rank must pass the same shape.
    """
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x  # keep the local tensor so gradients flow back to this rank
    return torch.cat(parts, dim=0)  # (W * B, ...)


def scores(q: torch.Tensor, d: torch.Tensor, temperature: float, in_batch: bool = True) -> torch.Tensor:
    """Cosine scores divided by tau.

    Args:
        q: (B, H) query embeddings.
        d: (B, 1 + n, H) documents; slot 0 is each query's positive.
        temperature: tau > 0.
        in_batch: score every document of the batch (else only the instance's own 1 + n).

    Returns:
        (B, B * (1 + n)) slot-major when in_batch (label of row i is i), else (B, 1 + n) (label 0).
    """
    q = F.normalize(q.float(), dim=-1)
    d = F.normalize(d.float(), dim=-1)
    if not in_batch:
        return torch.einsum("bh,bkh->bk", q, d) / temperature  # (B, 1 + n)
    docs = d.transpose(0, 1).reshape(-1, d.shape[-1])  # (1 + n) * B rows: [pos; neg_1; ...]
    return q @ docs.T / temperature  # (B, B * (1 + n))


def known_positives(q_ids: torch.Tensor, d_ids: torch.Tensor) -> torch.Tensor:
    """Where a column of the in-batch score matrix holds a positive of the row's query, other than its label.

    Args:
        q_ids: (B,) ids of the query texts.
        d_ids: (B, 1 + n) ids of the document texts, slot 0 each query's positive.

    Returns:
        (B, B * (1 + n)) bool, in `scores`' slot-major column order; never True at a label (i, i).
    """
    same_query = q_ids[:, None] == q_ids[None, :]  # (B, B): rows r whose positives are row i's too
    columns = d_ids.T.reshape(-1)  # (B * (1 + n),) slot-major
    holds_positive_of = d_ids[:, 0, None] == columns[None, :]  # (B, C): column c holds row r's positive
    mask = (same_query.float() @ holds_positive_of.float()) > 0  # (B, C)
    mask.fill_diagonal_(False)
    return mask


def info_nce(
    q: torch.Tensor, d: torch.Tensor, temperature: float, in_batch: bool = True,
    q_ids: torch.Tensor | None = None, d_ids: torch.Tensor | None = None, d_mask: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Mean InfoNCE over the B queries: -log softmax(s / tau) at each query's own positive.

    Args:
        q: (B, H) query embeddings.
        d: (B, 1 + n, H) positive then hard negatives per query.
        temperature: tau.
        in_batch: also use every other document of the batch as a negative.
        q_ids, d_ids: (B,) and (B, 1 + n) text ids; with them, in-batch columns holding a known
            positive of the row's query are left out of its softmax (`known_positives`).
        d_mask: (B, 1 + n) bool, False at an empty slot (never slot 0); such documents are left
            out of every softmax.

    Returns:
        Scalar loss (float32).
    """
    logits = scores(q, d, temperature, in_batch)
    if not in_batch:
        if d_mask is not None:
            logits = logits.masked_fill(~d_mask, float("-inf"))
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
    if q_ids is not None and d_ids is not None:
        logits = logits.masked_fill(known_positives(q_ids, d_ids), float("-inf"))
    if d_mask is not None:
        logits = logits.masked_fill(~d_mask.T.reshape(1, -1), float("-inf"))  # slot-major columns, as `scores`
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def gathered_info_nce(
    q: torch.Tensor, d: torch.Tensor, temperature: float, in_batch: bool = True, gather: bool = True,
    q_ids: torch.Tensor | None = None, d_ids: torch.Tensor | None = None, d_mask: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """InfoNCE over the queries and documents of all workers (see the module docstring for the scale).

    At world size 1, or with `gather=False`, this is exactly `info_nce(q, d, ...)`.

    Args:
        q: (B, H) this worker's queries.
        d: (B, 1 + n, H) this worker's documents.
        temperature: tau.
        in_batch: use in-batch negatives (without them gathering changes nothing and is skipped).
        gather: gather across workers.
        q_ids, d_ids: text ids for the known-positive mask (see `info_nce`); gathered like q and d.
        d_mask: empty slots (see `info_nce`); gathered like d. Every worker must pass it or none.

    Returns:
        Scalar loss: the mean over all W * B queries, identical on every worker.
    """
    if gather and in_batch and world_size() > 1:
        q = gather_with_grad_local(q)  # (W * B, H)
        d = gather_with_grad_local(d)  # (W * B, 1 + n, H)
        if q_ids is not None and d_ids is not None:
            q_ids, d_ids = gather_with_grad_local(q_ids), gather_with_grad_local(d_ids)
        if d_mask is not None:  # as bytes: not every backend gathers bool tensors
            d_mask = gather_with_grad_local(d_mask.to(torch.uint8)).bool()
    return info_nce(q, d, temperature, in_batch, q_ids, d_ids, d_mask)
