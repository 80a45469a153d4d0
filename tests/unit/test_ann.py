"""ann.py: Flat / IVF / HNSW against a brute-force reference, per-shard merge, recall. No Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from syneg_ray import ann


def _clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(q: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :k]


def test_flat_is_exact_and_blocked():
    corpus, queries = _clustered(500), _clustered(37, seed=1)
    scores, indices = ann.search(ann.build_index(corpus, ann.IndexSpec(kind="flat")), queries, k=10, block=8)
    assert (indices == _brute(queries, corpus, 10)).mean() > 0.99  # ties may swap
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


@pytest.mark.parametrize(
    "spec", [ann.IndexSpec(kind="ivf", nlist=8, nprobe=8), ann.IndexSpec(kind="hnsw", hnsw_m=16, ef_search=64)]
)
def test_approximate_indexes_reach_high_recall(spec):
    corpus, queries = _clustered(2000), _clustered(50, seed=2)
    _, indices = ann.search(ann.build_index(corpus, spec), queries, k=10)
    assert ann.recall_at_k(indices, _brute(queries, corpus, 10), 10) >= 0.95


def test_merge_topk_of_shards_equals_global_search():
    corpus, queries = _clustered(300), _clustered(20, seed=3)
    parts = []
    for start in range(0, 300, 100):  # three shards with global offsets
        s, i = ann.search(ann.build_index(corpus[start : start + 100], ann.IndexSpec()), queries, k=7)
        parts.append((s, i + start))
    _, merged = ann.merge_topk(parts, k=7)
    assert (merged == _brute(queries, corpus, 7)).mean() > 0.99


def test_merge_pads_when_shards_have_fewer_than_k():
    s, i = ann.merge_topk([(np.array([[0.5]], np.float32), np.array([[4]]))], k=3)
    assert i.tolist() == [[4, -1, -1]] and np.isinf(s[0, 1:]).all()


def test_unknown_kind_names_choices():
    with pytest.raises(ValueError, match="flat, ivf or hnsw"):
        ann.build_index(_clustered(10), ann.IndexSpec(kind="pq"))


def test_default_nlist_respects_training_ratio():
    assert ann.default_nlist(1_000_000) == 4000 and ann.default_nlist(100) == 2 and ann.default_nlist(5) == 1


@pytest.mark.skipif(any(os.path.exists(n) for n in ("/dev/nvidiactl", "/dev/kfd")), reason="a GPU node: torch is the right search path")
def test_exact_search_on_a_cpu_machine_does_not_import_torch():
    """The mining driver searches with faiss on CPU; importing torch only to learn there is no GPU cost it about 180 MB."""
    script = (
        "import sys, numpy as np\n"
        "from syneg_ray.index import search_exact\n"
        "x = np.eye(4, dtype=np.float32)\n"
        "scores, indices = search_exact(x, x, 1)\n"
        "assert indices[:, 0].tolist() == [0, 1, 2, 3]\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_exact_search_block_by_block_over_a_memory_mapped_corpus_matches_one_pass(tmp_path):
    """A corpus beyond one block is read and searched a block at a time, the top-k merged across blocks."""
    from syneg_ray.index import search_exact

    corpus, queries = _clustered(2_500, seed=2), _clustered(40, seed=3)
    np.save(tmp_path / "corpus.npy", corpus)
    mapped = np.load(tmp_path / "corpus.npy", mmap_mode="r")
    whole_scores, whole = search_exact(queries, mapped, 25, device="cpu")
    scores, indices = search_exact(queries, mapped, 25, device="cpu", corpus_block=300)  # 9 blocks, the last one short
    assert (indices == whole).mean() > 0.99 and (indices == _brute(queries, corpus, 25)).mean() > 0.99  # ties may swap
    np.testing.assert_allclose(scores, whole_scores, atol=1e-6)
    assert indices.max() >= 2_400  # hits from the last block carry their offset
    assert np.all(np.diff(scores, axis=1) <= 1e-6) and indices.dtype == np.int64
