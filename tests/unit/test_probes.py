import numpy as np
import pytest

from syneg_ray.probes import guard_flags, source_auc


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_guard_flags_negatives_scored_above_the_positive() -> None:
    query = _unit(np.array([[1.0, 0.0], [0.0, 1.0]]))
    positive = _unit(np.array([[1.0, 1.0], [0.0, 1.0]]))  # scores 0.707 and 1.0
    negatives = np.stack([
        _unit(np.array([[1.0, 0.1], [0.0, 1.0]])),  # pair 0: 0.995 > 0.707 flagged; 0.0 kept
        _unit(np.array([[0.0, 1.0], [1.0, 0.0]])),  # pair 1: 1.0 is not above 1.0; 0.0 kept
    ])
    negatives[1, 1] = np.nan  # padding is never flagged
    flags = guard_flags(query, positive, negatives)
    assert flags.tolist() == [[True, False], [False, False]]


def test_guard_margin_flags_negatives_just_below_the_positive() -> None:
    query = np.array([[1.0, 0.0]])
    positive = np.array([[1.0, 0.0]])
    negatives = _unit(np.array([[[0.98, 0.2]]]))  # score ~0.98: below 1.0, inside a 5% margin
    assert not guard_flags(query, positive, negatives).any()
    assert guard_flags(query, positive, negatives, relative_margin=0.05).all()


def test_source_auc_separable_vs_indistinguishable() -> None:
    rng = np.random.default_rng(0)
    n = 400
    groups = np.repeat(np.arange(n // 4), 4)
    labels = np.tile([0, 1], n // 2)
    noise = rng.normal(size=(n, 8))
    separable = noise + labels[:, None] * 3.0
    auc, _ = source_auc(separable, labels, groups)
    assert auc > 0.95
    chance, spread = source_auc(noise, labels, groups)
    assert abs(chance - 0.5) < 0.1 and spread < 0.15


def test_source_auc_needs_both_labels() -> None:
    with pytest.raises(ValueError, match="both labels"):
        source_auc(np.zeros((10, 2)), np.ones(10), np.arange(10))
