"""`syneg mix`: join the synthetic and mined negatives of each pair into training instances (mixing.py rules).

Inputs are plain Parquet in the run directory, so a test (or a user) can replace synthesis or
mining by a small hand-written file:
    synthesize/negatives.parquet  {key, query_id, positive_id, negatives: list<str>, status?}  (file or folder)
                                  (rows that `syneg synthesize` wrote under another LLM or prompt
                                  version are ignored; this seed's row of a pair wins over another seed's)
    mine/negatives.parquet        {query_id, positive_id, negative_ids: list<str>, source: list<str>, positive_ids?}
Output: mix/instances.parquet (schema.Instance rows) and mix/stats.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syneg_ray import mixing, probes, prompts, schema, synthetic_store
from syneg_ray.config import MixStrategy, PipelineConfig
from syneg_ray.dataset import ensure_pairs, read_corpus, texts_of
from syneg_ray.errors import DataError
from syneg_ray.runtime import write_parquet_atomic, write_text_atomic

logger = logging.getLogger(__name__)

SYNTHETIC_COLUMNS = ("key", "query_id", "positive_id", "negatives")
MINED_COLUMNS = ("query_id", "positive_id", "negative_ids", "source")
INSTANCE_SCHEMA = schema.arrow_schema(schema.Instance)
INSTANCE_ROW_GROUP = 4096  # instances per Parquet row group


def _read(path: Path, required: tuple[str, ...], hint: str) -> list[dict]:
    if not path.exists():
        raise DataError.at(path, None, f"not found; {hint}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:  # an interrupted write, or not Parquet at all
        raise DataError.at(path, None, f"not a readable Parquet file ({' '.join(str(exc).split())}); "
                                       f"delete the damaged file and rerun `syneg {path.parent.name}` to rewrite it") from None
    missing = set(required) - set(table.column_names)
    if missing:
        raise DataError.at(path, None, f"missing columns {sorted(missing)}; expected {list(required)}")
    optional = ("status", "positive_ids", "model", "prompt_version")
    return table.select(list(required) + [c for c in optional if c in table.column_names]).to_pylist()


def read_synthetic(path: Path, llm: tuple[str, str] | None = None,
                   current_keys: frozenset[str] = frozenset()) -> dict[mixing.PairKey, mixing.SyntheticNegs]:
    """(query_id, positive_id) -> valid synthetic negatives; failed rows count as none.

    Rows that `syneg synthesize` wrote carry their LLM and prompt version. When `llm` (model,
    prompt version) is given, rows of another LLM or prompt are skipped: after such a change the old
    rows stay on disk (nothing written is lost) but must not be mixed in. Of the rest, a pair's row
    under `current_keys` (this run's seed and generation settings) wins over one written under
    another key, which is used only when the pair has no row at all under this run's keys, not
    even a failed one (runs at several training seeds may share one synthesis). A hand-written
    file without those columns is read whole.
    """
    current, other, stale = {}, {}, 0
    judged: set[mixing.PairKey] = set()  # pairs with a row under this run's keys, failed ones included
    for row in _read(path, SYNTHETIC_COLUMNS, "run `syneg synthesize` first, or use mix.strategy=retrieved"):
        if llm is not None and row.get("prompt_version") and (row.get("model"), row["prompt_version"]) != llm:
            stale += 1
            continue
        pair = (row["query_id"], row["positive_id"])
        if row["key"] in current_keys:
            judged.add(pair)
        texts = tuple(t for t in (row["negatives"] or ()) if t and t.strip())
        if row.get("status", "ok") == "ok" and texts:
            into = current if row["key"] in current_keys else other
            into[pair] = mixing.SyntheticNegs(row["key"], texts)
    if stale:
        logger.info("%s: %d rows of another LLM or prompt version ignored", path, stale)
    return {**{pair: negs for pair, negs in other.items() if pair not in judged}, **current}


def _mined_ids(path: Path) -> set[str]:
    """Every document id the mined negatives name (none when there is no readable mine output:
    read_mined reports that, where it is needed)."""
    try:
        column = pq.read_table(path, columns=["negative_ids"]).column("negative_ids")
    except (OSError, pa.ArrowInvalid, KeyError):
        return set()
    return set(pc.list_flatten(column).to_pylist())


def read_mined(path: Path, corpus: dict[str, str]) -> tuple[dict[mixing.PairKey, list[tuple[str, str]]], dict[str, set[str]]]:
    """(query_id, positive_id) -> [(doc_id, source)] and query_id -> positives recorded by mining.

    Raises:
        DataError: a negative id not in the corpus, or negative_ids and source of unequal length (file and row).
    """
    mined, positives = {}, {}
    for number, row in enumerate(_read(path, MINED_COLUMNS, "run `syneg mine` first, or use mix.strategy=synthetic"), start=1):
        ids, sources = list(row["negative_ids"] or ()), list(row["source"] or ())
        if len(ids) != len(sources):
            raise DataError.at(path, number, f"{len(ids)} negative_ids but {len(sources)} source entries")
        unknown = [d for d in ids if d not in corpus]
        if unknown:
            raise DataError.at(path, number, f"unknown negative id {unknown[0]!r}: not in the corpus (mined on another dataset?)")
        mined[(row["query_id"], row["positive_id"])] = list(zip(ids, sources, strict=True))
        positives.setdefault(row["query_id"], set()).update(row.get("positive_ids") or ())
    return mined, positives


def sources_needed(cfg: PipelineConfig) -> tuple[bool, bool]:
    """(reads synthetic negatives, reads retrieved negatives) for the strategy and R.

    Hybrid reads both at every R: a source that runs short is topped up from the other one
    (mixing.py), so even at R = 0 or 1 the other source keeps a pair from being dropped.
    """
    s, r = cfg.mix.strategy, cfg.mix.ratio
    if s is MixStrategy.RANDOM:
        return False, False
    if s is MixStrategy.HYBRID:
        return True, True
    if s is MixStrategy.SYNTHETIC or (s is MixStrategy.DIRECT and r == 1.0):
        return True, False
    if s is MixStrategy.RETRIEVED or r == 0.0:
        return False, True
    return True, True


def _missing_top_up(cfg: PipelineConfig, run_dir: Path) -> str:
    """The source a hybrid mix at R = 0 or 1 reads only to top up the other, when its file is
    missing ("" otherwise): the mix then goes on without it rather than failing."""
    if cfg.mix.strategy is not MixStrategy.HYBRID or 0.0 < cfg.mix.ratio < 1.0:
        return ""
    source, path = ("synthetic", run_dir / schema.SYNTHETIC) if cfg.mix.ratio == 0.0 else ("retrieved", run_dir / schema.MINED)
    if path.exists():
        return ""
    logger.info("hybrid R=%g: no %s negatives to top up from (%s missing)", cfg.mix.ratio, source, path)
    return source


def guard_synthetic(cfg: PipelineConfig, pairs: list[dict], synthetic: dict[mixing.PairKey, mixing.SyntheticNegs],
                    folder: Path) -> tuple[dict[mixing.PairKey, mixing.SyntheticNegs], int]:
    """Drops the synthetic negatives the false-negative guard flags; returns what is left and the count dropped.

    The base encoder (`encoder.model`) scores each negative against its query, as the miner scores a
    retrieved candidate; a negative above the positive's score less `mine.relative_margin` is dropped.
    Documents and queries are encoded on the encoder actors, in one pass. The flags
    are cached (`<cache>/guard/`) by the texts, the encoder and the margin.
    """
    from syneg_ray.config import default_cache_dir
    from syneg_ray.registry import resolve_model

    guarded = [p for p in pairs if (p["query_id"], p["positive_id"]) in synthetic]
    if not guarded:
        return synthetic, 0
    negatives = [synthetic[(p["query_id"], p["positive_id"])].texts for p in guarded]
    model_path = resolve_model(cfg.encoder.model, default_cache_dir(cfg))
    # The flags depend on the texts, the encoder and the margin only, not on R, tau or the seed:
    # cached, so Tune's trials and reruns with another R score the negatives once.
    cached = _guard_cache_path(cfg, model_path, guarded, negatives)
    if cached.is_file():
        flags = np.array(json.loads(cached.read_text(encoding="utf-8")), dtype=bool)
    else:
        flags = _guard_flags(cfg, model_path, guarded, negatives, folder)
        write_text_atomic(cached, json.dumps(flags.tolist()))  # makes the folder
    kept = dict(synthetic)
    for p, texts, flagged in zip(guarded, negatives, flags, strict=True):
        key = (p["query_id"], p["positive_id"])
        left = tuple(t for t, bad in zip(texts, flagged, strict=False) if not bad)
        if left:
            kept[key] = mixing.SyntheticNegs(synthetic[key].key, left)
        else:
            del kept[key]
    return kept, int(flags.sum())


def _guard_cache_path(cfg: PipelineConfig, model_path: str, guarded: list[dict], negatives: list[tuple[str, ...]]) -> Path:
    from syneg_ray.config import default_cache_dir
    from syneg_ray.stages.embed import backend_of, model_fingerprint

    e = cfg.encoder
    key = json.dumps([model_fingerprint(model_path), e.dtype.value, e.max_seq_length, e.query_prompt, e.document_prompt,
                      backend_of(e, model_path).value, cfg.mine.relative_margin,
                      [(p["query"], p["positive"], list(n)) for p, n in zip(guarded, negatives, strict=True)]])  # fmt: skip
    return default_cache_dir(cfg) / "guard" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _guard_flags(cfg: PipelineConfig, model_path: str, guarded: list[dict], negatives: list[tuple[str, ...]],
                 folder: Path) -> np.ndarray:  # fmt: skip
    """(pairs, k) True where a negative scores above its positive less the margin; texts encoded on the encoder actors."""
    from syneg_ray.stages.embed import encode_on_pool

    k = max(len(n) for n in negatives)
    documents = [p["positive"] for p in guarded] + [t for n in negatives for t in n]
    encoded = encode_on_pool(cfg, model_path, documents, folder / "guard-documents.npy", [p["query"] for p in guarded])
    doc_emb, query_emb = np.asarray(encoded.documents), encoded.queries
    (folder / "guard-documents.npy").unlink()  # scores are all it was for
    neg_emb = np.full((len(guarded), k, doc_emb.shape[1]), np.nan, dtype=np.float32)  # nan pads pairs with fewer than k
    row = len(guarded)
    for i, texts in enumerate(negatives):
        neg_emb[i, : len(texts)] = doc_emb[row : row + len(texts)]
        row += len(texts)
    return probes.guard_flags(query_emb, doc_emb[: len(guarded)], neg_emb, cfg.mine.relative_margin)


def run_mix(cfg: PipelineConfig) -> dict:
    """Writes mix/instances.parquet for the run's pairs; returns the mix statistics.

    Raises:
        DataError: an input the strategy needs is missing or malformed.
    """
    started = time.perf_counter()
    run_dir = Path(cfg.run.run_dir)
    prepared, pairs_path = ensure_pairs(cfg)
    pairs = pq.read_table(pairs_path).to_pylist()
    # the texts of the mined negatives only; the random strategy draws from every document
    corpus = read_corpus(prepared) if cfg.mix.strategy is MixStrategy.RANDOM else texts_of(prepared, _mined_ids(run_dir / schema.MINED))
    need_syn, need_ret = sources_needed(cfg)
    missing = _missing_top_up(cfg, run_dir)
    need_syn, need_ret = need_syn and missing != "synthetic", need_ret and missing != "retrieved"
    llm = (cfg.synthesize.model, prompts.PROMPT_VERSION)
    current = frozenset(synthetic_store.pair_key(cfg, p["query_id"], p["positive_id"]) for p in pairs)
    synthetic = read_synthetic(run_dir / schema.SYNTHETIC, llm, current) if need_syn else {}
    out = run_dir / schema.INSTANCES
    out.parent.mkdir(parents=True, exist_ok=True)
    guarded_out = 0
    if cfg.mix.guard_synthetic and synthetic:
        before = sum(len(s.texts) for s in synthetic.values())
        synthetic, guarded_out = guard_synthetic(cfg, pairs, synthetic, out.parent)
        logger.info("false-negative guard dropped %d of %d synthetic negatives (%.1f%%)", guarded_out, before,
                    100 * guarded_out / max(before, 1))
    mined, positives = read_mined(run_dir / schema.MINED, corpus) if need_ret else ({}, {})
    instances, stats = mixing.mix(pairs, synthetic, mined, corpus, cfg.mix, cfg.run.seed, positives)
    # row groups of INSTANCE_ROW_GROUP: the unit Ray Data reads into a training block and the
    # driver validates at once, so neither grows with the number of instances
    write_parquet_atomic(out, pa.Table.from_pylist(instances, schema=INSTANCE_SCHEMA), row_group_size=INSTANCE_ROW_GROUP)
    record = {"strategy": cfg.mix.strategy.value, "ratio": cfg.mix.ratio, "n_negatives": cfg.mix.n_negatives,
              "synthetic_guarded_out": guarded_out, **stats.as_dict()}
    write_text_atomic(out.parent / "stats.json", json.dumps(record, indent=2))
    logger.info(
        "mixed %s instances (%s R=%.2f, n=%d) from %s pairs in %.1f s: realized R %.3f (%.3f over the %s instances "
        "with synthetic negatives); %s kept short of n, %s dropped (fewer than %d); %d synthetic / %d retrieved slots borrowed -> %s",
        f"{stats.instances:,}", cfg.mix.strategy.value, cfg.mix.ratio, cfg.mix.n_negatives, f"{stats.pairs:,}",
        time.perf_counter() - started, stats.realized_ratio, stats.realized_ratio_with_synthetic, f"{stats.with_synthetic:,}",
        f"{stats.short:,}", f"{stats.dropped_short:,}", cfg.mix.min_negatives, stats.borrowed_synthetic,
        stats.borrowed_retrieved, out,
    )  # fmt: skip
    warning = realized_ratio_warning(cfg, stats)
    if warning:
        logger.warning(warning)
    return record


def realized_ratio_warning(cfg: PipelineConfig, stats: mixing.MixStats) -> str:
    """A line saying the run trains on far fewer synthetic negatives than mix.ratio asks for, or ""."""
    if cfg.mix.strategy not in (MixStrategy.HYBRID, MixStrategy.DIRECT) or stats.realized_ratio >= cfg.mix.ratio / 2:
        return ""
    return (f"realized R {stats.realized_ratio:.3f} is below half of mix.ratio = {cfg.mix.ratio}: most pairs have no "
            f"(guarded) synthetic negatives ({stats.with_synthetic:,} of {stats.instances:,} instances have any); "
            "raise synthesize.max_pairs to synthesize more pairs")
