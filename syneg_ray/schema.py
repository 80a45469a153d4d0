"""The data contract between stages: Parquet file names, column names and row shapes.

Every stage reads and writes Parquet in the run directory, so any stage can be replaced by a
small hand-written file (tests do this) or run alone on a cluster.

    run_dir/
      config.yaml                       resolved PipelineConfig of the latest invocation
      pairs/pairs.parquet               Pair rows (train queries minus the dev split)
      pairs/dev_qrels.json              the dev qrels: the dataset's dev split, or carved from train queries
      synthesize/negatives.parquet      SyntheticRow rows, one per pair (a folder of part files)
      synthesize/rounds/                the judge's record: one row per pair, attempt and round (synthetic_store.ROUND_SCHEMA)
      mine/negatives.parquet            MinedRow rows, one per pair
      mix/instances.parquet             Instance rows
      train/model/                      sentence-transformers folder
      evaluate/<model>-<split>/         metrics.json and run.trec of one model on one split
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    import pyarrow as pa

PAIRS = "pairs/pairs.parquet"
DEV_QRELS = "pairs/dev_qrels.json"
PAIRS_SOURCE = "pairs/source.json"  # the settings the pairs were built with
SYNTHETIC = "synthesize/negatives.parquet"
MINED = "mine/negatives.parquet"
INSTANCES = "mix/instances.parquet"
MODEL = "train/model"


class Pair(TypedDict):
    """One (query, positive) from a train qrels row with score > 0."""

    query_id: str
    positive_id: str
    query: str  # query text
    positive: str  # document text (title + " " + text)


class SyntheticRow(TypedDict):
    """LLM-written negatives for one pair, with everything needed to audit or resume them."""

    key: str  # sha256 of (query_id, positive_id, prompt_version, model, seed): the resume key
    query_id: str
    positive_id: str
    negatives: list[str]  # valid negatives only; empty when status == "failed"
    domain: str  # attribute draw
    difficulty: str
    length: str
    reasoning: str  # the model's reflection before writing
    model: str
    engine: str
    prompt_version: str
    seed: int
    attempts: int  # generations used (1 + retries)
    prompt_tokens: int
    output_tokens: int
    status: str  # "ok" | "failed"
    reject_reasons: list[str]  # one entry per rejected candidate (e.g. "too_short", "invalid_json", "false_negative")
    # Added with the judge (prompt syneg-v3); older files read them as nulls.
    negative_scores: list[float]  # per kept negative, cos(query, negative) under encoder.model; nan when not judged
    positive_score: float  # cos(query, positive); nan when not judged
    judge_rounds: int  # reflection rounds the pair went through (0 = its first answer was kept as judged)


class MinedRow(TypedDict):
    """Retrieved negatives for one pair, after the rank window and false-negative guard."""

    query_id: str
    positive_id: str
    positive_ids: list[str]  # all positives of the query (never mined)
    negative_ids: list[str]
    negative_scores: list[float]
    positive_score: float
    source: list[str]  # per negative: "dense" | "bm25" | "pyserini"


class Instance(TypedDict):
    """One training instance: a query, its positive, and its mixed negatives as text."""

    query_id: str
    positive_id: str
    query: str
    positive: str
    negatives: list[str]
    negative_sources: list[str]  # per negative: "synthetic" | "dense" | "bm25" | "random"
    negative_ids: list[str]  # corpus ids for retrieved/random, "<key>#<i>" for synthetic


INSTANCE_COLUMNS = tuple(Instance.__annotations__)


def arrow_schema(row: type) -> pa.Schema:
    """The Parquet schema of a row type above: its fields in order; str, int (int64), float (float32,
    the precision scores are kept in) and lists of them."""
    import pyarrow as pa

    scalars = {str: pa.string(), int: pa.int64(), float: pa.float32()}

    def arrow(hint: typing.Any) -> pa.DataType:
        if typing.get_origin(hint) is list:
            return pa.list_(arrow(typing.get_args(hint)[0]))
        return scalars[hint]

    return pa.schema([(name, arrow(hint)) for name, hint in typing.get_type_hints(row).items()])
