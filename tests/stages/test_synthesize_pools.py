"""Attribute pools of a dataset with no built-in pool: proposed by the LLM (here a stand-in), stored only when usable."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import attributes, dataset
from syneg_ray.config import load_config
from syneg_ray.errors import EngineError
from syneg_ray.stages import synthesize as stage


@pytest.fixture
def proposer(tmp_path, monkeypatch) -> list:
    """Replaces the corpus and the LLM; returns the answers the stand-in LLM gives, in order."""
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "text": ["tidal energy in estuaries", "bridge load tests"]}), corpus)
    monkeypatch.setattr(dataset, "prepare", lambda cfg: dataset.Prepared(tmp_path, corpus, "f"))
    answers: list = []

    def complete(cfg, model, messages, max_new_tokens=160):
        shown = messages[-1]["content"]
        assert "tidal energy in estuaries" in shown and "bridge load tests" in shown  # the corpus's texts, as a sample
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(stage.engines, "complete", complete)
    return answers


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", "data.dataset=no-such-pool-corpus"])


def test_unusable_answer_uses_generic_pools_without_storing_them(proposer, cfg, tmp_path, caplog) -> None:
    proposer.extend(["", '{"domains": ["Hydrology", "Civil Engineering"]}'])
    with caplog.at_level(logging.WARNING, logger=stage.__name__):
        assert stage.resolve_pools(cfg, "m", tmp_path) == attributes.GENERIC
    assert "generic pools" in caplog.text
    # stored, the generic pools would be reused by every rerun and the LLM never asked again
    assert not (tmp_path / stage.POOLS_FILE).exists()
    proposed = stage.resolve_pools(cfg, "m", tmp_path)
    assert proposed.domains == ("Hydrology", "Civil Engineering")
    assert attributes.load_pools(tmp_path / stage.POOLS_FILE) == proposed
    assert stage.resolve_pools(cfg, "m", tmp_path) == proposed and proposer == []  # read back, not asked again


def test_engine_failure_raises_and_stores_nothing(proposer, cfg, tmp_path) -> None:
    proposer.append(EngineError("openai engine: request to http://x/v1/chat/completions failed"))
    with pytest.raises(EngineError, match="chat/completions failed"):
        stage.resolve_pools(cfg, "m", tmp_path)
    assert not (tmp_path / stage.POOLS_FILE).exists()
