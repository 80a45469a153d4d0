"""Two diagnostics of synthetic negatives, as plain functions over embeddings.

`guard_flags` asks of each synthetic negative what the miner's false-negative guard asks of a
retrieved one: does the retriever score it at least as close to the query as the positive (less a
margin)? A high share means the LLM often wrote passages the retriever cannot tell from a positive:
either true hard negatives or, too often, paraphrased positives.

`source_auc` asks whether the retriever can tell synthetic from retrieved negatives at all: a
logistic regression on the base model's embeddings, cross-validated with folds split by query so a
probe cannot win by recognising topics. An AUC near 1.0 means synthetic negatives carry a style
signature the model can learn instead of relevance (the cause CausalNeg names for synthetic
negatives hurting); near 0.5 means they look like corpus text.
"""

from __future__ import annotations

import numpy as np


def guard_flags(query: np.ndarray, positive: np.ndarray, negatives: np.ndarray, relative_margin: float = 0.0) -> np.ndarray:
    """Which negatives the false-negative guard would drop.

    Args:
        query: [n, d] normalized query embeddings, one row per (query, positive) pair.
        positive: [n, d] normalized embeddings of each pair's positive.
        negatives: [n, k, d] normalized embeddings of each pair's negatives (pad rows with nan).
        relative_margin: the miner's margin: a negative is kept only if score <= s_pos - |s_pos| * margin.

    Returns:
        [n, k] bool: True where a negative scores above that bound (nan rows are False).
    """
    return flags_from_scores(np.einsum("nd,nd->n", query, positive), np.einsum("nd,nkd->nk", query, negatives), relative_margin)


def flags_from_scores(positive_score: np.ndarray | float, negative_scores: np.ndarray | tuple[float, ...],
                      relative_margin: float = 0.0) -> np.ndarray:  # fmt: skip
    """`guard_flags` from scores already computed (e.g. the judge's, recorded in synthesis): [..., k]
    True where a negative scores above its positive's score less |that| x margin (nan scores are False).

    Args:
        positive_score: [n] (or one pair's scalar) cos(query, positive).
        negative_scores: [n, k] (or one pair's [k]) cos(query, negative).
    """
    bound = np.asarray(positive_score) - np.abs(positive_score) * relative_margin
    with np.errstate(invalid="ignore"):
        return np.asarray(negative_scores) > np.expand_dims(bound, -1)


def source_auc(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Cross-validated ROC AUC of a linear probe telling label 1 from label 0.

    Args:
        features: [n, d] embeddings.
        labels: [n] 0/1 (1 = synthetic).
        groups: [n] query ids: a query's rows never sit on both sides of a fold.
        folds: number of group folds.
        seed: for the fold assignment.

    Returns:
        (mean AUC over folds, standard deviation over folds).
    """
    from syneg_ray.extras import require

    require("sklearn", minimum="1.6")  # GroupKFold(shuffle=...) is new in 1.6; sentence-transformers brings any >= 1.1
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    labels = np.asarray(labels)
    if len(np.unique(labels)) != 2:
        raise ValueError("source_auc needs examples of both labels")
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    aucs = []
    for train, test in splitter.split(features, labels, groups):
        if len(np.unique(labels[test])) < 2:
            continue  # a fold of one class has no AUC
        probe = LogisticRegression(max_iter=2000, C=1.0).fit(features[train], labels[train])
        aucs.append(roc_auc_score(labels[test], probe.decision_function(features[test])))
    return float(np.mean(aucs)), float(np.std(aucs))
