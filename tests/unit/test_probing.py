"""The ablation's probes (benchmarks/probing.py) on real SciFact text and the real base encoder:
copies of the positive are flagged, corpus documents are not, and only this config's LLM counts."""

import importlib.util
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import prompts
from syneg_ray.config import load_config
from syneg_ray.dataset import ensure_pairs, read_corpus

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probing.py"


@pytest.fixture(scope="module")
def probing():
    spec = importlib.util.spec_from_file_location("bench_probing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_copies_of_the_positive_are_flagged_and_corpus_documents_are_not(probing, tmp_path: Path, scifact_small: Path) -> None:
    cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"data.dataset={scifact_small}", f"run.cache_dir={tmp_path / 'cache'}",
                             "data.limit=12", "data.dev_fraction=0", "synthesize.negatives_per_pair=2"])  # fmt: skip
    prepared, pairs_path = ensure_pairs(cfg)
    pairs = pq.read_table(pairs_path).to_pylist()
    corpus = read_corpus(prepared)
    others = sorted(set(corpus) - {p["positive_id"] for p in pairs})
    synthetic, mined = [], []
    for i, p in enumerate(pairs):
        # the first half copies its positive (a false negative by construction), the rest are other documents
        texts = [p["positive"], p["positive"] + " "] if i < len(pairs) // 2 else [corpus[others[2 * i]], corpus[others[2 * i + 1]]]
        synthetic.append({"key": f"k{i}", "query_id": p["query_id"], "positive_id": p["positive_id"], "negatives": texts,
                          "status": "ok", "model": cfg.synthesize.model, "prompt_version": prompts.PROMPT_VERSION})
        mined.append({"query_id": p["query_id"], "positive_id": p["positive_id"], "negative_ids": others[-3 - i : len(others) - i],
                      "source": ["dense", "dense", "bm25"]})
    # a row of another LLM for the last pair: not what this config's mix would use
    synthetic.append(dict(synthetic[-1], key="other", model="another-llm", negatives=[pairs[-1]["positive"]] * 2))
    pq.write_table(pa.Table.from_pylist(synthetic), tmp_path / "synthetic.parquet")
    pq.write_table(pa.Table.from_pylist(mined), tmp_path / "mined.parquet")

    result = probing.measure(cfg, tmp_path / "synthetic.parquet", tmp_path / "mined.parquet")
    assert (result["pairs"], result["synthetic_negatives"]) == (12, 24)
    assert result["retrieved_negatives"] == 24  # two dense negatives a pair, as many as its synthetic ones; BM25's left out
    assert result["near_copies"] == result["guard_share_margin"] == 0.5  # exactly the copies
    assert result["guard_share_strict"] == 0.0  # a copy scores level with its positive, not above it
    assert 0.0 <= result["source_auc"] <= 1.0
