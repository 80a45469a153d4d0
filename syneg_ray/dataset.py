"""The pipeline's view of a BEIR dataset: pairs, the dev split and a Parquet copy of the corpus.

The corpus is read and validated once, then written as Parquet into the cache keyed by the
corpus file's content hash, so Ray stages read it in parallel shards and every later run skips
the JSON parse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from syneg_ray import beir, schema
from syneg_ray.config import PipelineConfig, default_cache_dir
from syneg_ray.runtime import read_json, write_parquet_atomic, write_text_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A resolved dataset: where it is, its corpus as Parquet, and a fingerprint for cache keys."""

    folder: Path
    corpus_parquet: Path
    fingerprint: str  # sha256 prefix of corpus.jsonl


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, streamed; remembered per (path, size, modification time) in this process,
    since every stage fingerprints the same corpus (gigabytes for the large BEIR sets)."""
    stat = path.stat()
    seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if seen not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        _DIGESTS[seen] = digest.hexdigest()
    return _DIGESTS[seen]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def prepare(cfg: PipelineConfig) -> Prepared:
    """Resolves `data.dataset` and makes sure its validated Parquet corpus is in the cache."""
    folder = beir.resolve_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
    fingerprint = file_digest(folder / "corpus.jsonl")[:16]
    target = default_cache_dir(cfg) / "corpus" / f"{fingerprint}.parquet"
    if not target.is_file():
        ids, texts = [], []
        for doc_id, text in beir.iter_corpus(folder / "corpus.jsonl"):
            ids.append(doc_id)
            texts.append(text)
        write_parquet_atomic(target, pa.table({"doc_id": ids, "text": texts}))
        logger.info("corpus: %s documents validated and cached as %s", f"{len(ids):,}", target)
    return Prepared(folder=folder, corpus_parquet=target, fingerprint=fingerprint)


def read_corpus(prepared: Prepared) -> dict[str, str]:
    """doc_id -> text from the cached Parquet (fast: no JSON parse)."""
    table = pq.read_table(prepared.corpus_parquet)
    return dict(zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist(), strict=True))


def split_dev(query_ids: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Seeded split of train query ids into (train, dev). Dev queries never contribute pairs."""
    ordered = sorted(query_ids)
    random.Random(seed).shuffle(ordered)
    n_dev = round(len(ordered) * fraction)
    return set(ordered[n_dev:]), set(ordered[:n_dev])


def build_pairs(cfg: PipelineConfig, prepared: Prepared, corpus: dict[str, str]) -> tuple[list[schema.Pair], beir.Qrels]:
    """Pairs of the train split (dev queries removed, `data.limit` applied) and the dev qrels."""
    split = beir.load_split(prepared.folder, cfg.data.train_split, corpus=corpus)
    train_ids, dev_ids = split_dev(list(split.qrels), cfg.data.dev_fraction, cfg.data.split_seed)
    train_qrels = {q: split.qrels[q] for q in train_ids}
    pairs: list[schema.Pair] = [
        {"query_id": q, "positive_id": d, "query": split.queries[q], "positive": corpus[d]}
        for q, d in beir.positive_pairs(train_qrels)
    ]
    if cfg.data.limit:
        pairs = pairs[: cfg.data.limit]
    return pairs, {q: split.qrels[q] for q in dev_ids}


def write_pairs(run_dir: Path, pairs: list[schema.Pair], dev_qrels: beir.Qrels) -> Path:
    """Writes pairs.parquet and dev_qrels.json into the run directory."""
    path = run_dir / schema.PAIRS
    write_parquet_atomic(path, pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA))
    write_text_atomic(run_dir / schema.DEV_QRELS, json.dumps(dev_qrels, sort_keys=True))
    return path


def ensure_pairs(cfg: PipelineConfig) -> tuple[Prepared, Path]:
    """Prepares the dataset and writes the run's pairs unless pairs of the same settings exist.

    Pairs written for other settings (another `data.limit`, split, dev share, seed, corpus, or an
    edited queries or qrels file) are rebuilt, so a resumed run never trains or synthesizes on a stale list.
    """
    prepared = prepare(cfg)
    run_dir = Path(cfg.run.run_dir)
    path = run_dir / schema.PAIRS
    source = pairs_source(cfg, prepared)
    if not path.is_file() or read_json(run_dir / schema.PAIRS_SOURCE) != source:
        pairs, dev = build_pairs(cfg, prepared, read_corpus(prepared))
        # the old record goes first: a run killed before the new one is written rebuilds, whatever it resumes with
        (run_dir / schema.PAIRS_SOURCE).unlink(missing_ok=True)
        write_pairs(run_dir, pairs, dev)
        write_text_atomic(run_dir / schema.PAIRS_SOURCE, json.dumps(source, sort_keys=True))
        logger.info("pairs: %s train pairs, %s dev queries", f"{len(pairs):,}", f"{len(dev):,}")
    return prepared, path


def pairs_source(cfg: PipelineConfig, prepared: Prepared) -> dict:
    """Everything the pair list depends on: the settings and the content of corpus, queries and train qrels."""
    d = cfg.data
    queries, qrels = prepared.folder / "queries.jsonl", prepared.folder / "qrels" / f"{d.train_split}.tsv"
    return {"corpus": prepared.fingerprint, "folder": prepared.folder.name, "train_split": d.train_split,
            "queries": _digest_if_file(queries), "qrels": _digest_if_file(qrels),
            "dev_fraction": d.dev_fraction, "split_seed": d.split_seed, "limit": d.limit}  # fmt: skip


def _digest_if_file(path: Path) -> str:
    # a missing file gets "" here, so that build_pairs reports it as a DataError naming the split
    return file_digest(path)[:16] if path.is_file() else ""


PAIR_SCHEMA = schema.arrow_schema(schema.Pair)
