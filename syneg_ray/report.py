"""The run report: a Markdown page with the metrics table, stage timings and plots.

Besides the training curves (written by the train stage), it draws how close each kind of
negative sits to its query under the base encoder, next to the positive: the picture that says
whether the synthetic negatives are hard, trivially easy, or false negatives.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from syneg_ray import schema
from syneg_ray.config import PipelineConfig, to_yaml
from syneg_ray.metrics import METRICS
from syneg_ray.plots import plot_similarity

logger = logging.getLogger(__name__)

MAX_INSTANCES = 256  # instances encoded for the similarity plot: enough for a histogram, cheap on a laptop


def similarity_by_source(query: np.ndarray, positive: np.ndarray, negatives: np.ndarray, owner: np.ndarray, sources: list[str]) -> dict[str, np.ndarray]:
    """Cosine similarity to the query of positives and of each negative source.

    Args:
        query: (n, dim) normalized query embeddings.
        positive: (n, dim) normalized positive embeddings.
        negatives: (m, dim) normalized negative embeddings.
        owner: (m,) index of the instance each negative belongs to.
        sources: (m,) source name of each negative.

    Returns:
        {"positive": (n,), "<source>": (k,) ...} similarities.
    """
    out = {"positive": np.einsum("nd,nd->n", query, positive)}
    neg_sim = np.einsum("md,md->m", query[owner], negatives)
    labels = np.asarray(sources)
    for source in sorted(set(sources)):
        out[source] = neg_sim[labels == source]
    return out


def similarity_plot(cfg: PipelineConfig, run_dir: Path) -> Path | None:
    """Encodes a sample of the mixed instances with the base encoder and plots similarity by source."""
    instances_path = run_dir / schema.INSTANCES
    if not instances_path.exists():
        return None
    from syneg_ray.encoder import encode
    from syneg_ray.registry import resolve_model
    from syneg_ray.services.embed import encode_options, local_encoder

    batches = pq.ParquetFile(instances_path).iter_batches(batch_size=MAX_INSTANCES)  # the first rows, not the whole file
    rows = next((batch.to_pylist() for batch in batches), [])
    encoder = local_encoder(cfg, resolve_model(cfg.encoder.model, cfg.run.cache_dir or None))
    as_query, as_document = encode_options(cfg.encoder, cfg.encoder.query_prompt), encode_options(cfg.encoder, cfg.encoder.document_prompt)
    query = encode(encoder, [r["query"] for r in rows], as_query)
    positive = encode(encoder, [r["positive"] for r in rows], as_document)
    owner = np.array([i for i, r in enumerate(rows) for _ in r["negatives"]], dtype=np.int64)
    negatives = encode(encoder, [n for r in rows for n in r["negatives"]], as_document)
    sources = [s for r in rows for s in r["negative_sources"]]
    sims = similarity_by_source(query, positive, negatives, owner, sources)
    return plot_similarity(sims, run_dir / "similarity.png")


def _value(v: Any) -> str:
    # four significant digits: a summary cell is read, not parsed (the full values stay in each stage's files)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _realized(mix: dict | None) -> str:
    """", realized R = x (y where the LLM wrote negatives)" from the mix summary, or "" without one."""
    if not isinstance(mix, dict) or "realized_ratio" not in mix:
        return ""
    return (f" (realized R = {mix['realized_ratio']:.3f} over all instances, {mix.get('realized_ratio_with_synthetic', 0.0):.3f} "
            f"over the {mix.get('with_synthetic', 0):,} with synthetic negatives)")


def _ratio_warning(cfg: PipelineConfig, mix: dict | None) -> str:
    from syneg_ray.mixing import MixStats
    from syneg_ray.stages.mix import realized_ratio_warning

    if not isinstance(mix, dict) or "realized_ratio" not in mix:
        return ""
    fields = {k: v for k, v in mix.items() if k in MixStats.__dataclass_fields__}
    return realized_ratio_warning(cfg, MixStats(**fields))


def metrics_table(evaluation: dict[str, dict[str, float]]) -> str:
    """The retrieval metrics of each evaluated model as an aligned Markdown table ("" for none):
    the report's table, and the last thing `syneg run` prints.

    Args:
        evaluation: {label: {metric: value}}, e.g. the pipeline's {"base": ..., "trained": ...}.

    Example:
        >>> print(metrics_table({"base": {"ndcg@10": 0.6451, "recall@100": 0.925, "mrr@10": 0.6102, "map@100": 0.5998}}))
        | model | ndcg@10 | recall@100 | mrr@10 | map@100 |
        |-------|---------|------------|--------|---------|
        | base  |  0.6451 |     0.9250 | 0.6102 |  0.5998 |
    """
    if not evaluation:
        return ""
    names = list(METRICS)
    width = max(len("model"), *(len(label) for label in evaluation))
    lines = ["| " + " | ".join(["model".ljust(width), *names]) + " |",
             "|" + "|".join("-" * (w + 2) for w in [width, *map(len, names)]) + "|"]
    for label, scores in evaluation.items():
        cells = [label.ljust(width), *(f"{scores[n]:.4f}".rjust(len(n)) for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(cfg: PipelineConfig, summaries: dict[str, Any], timings: dict[str, float]) -> Path:
    """Writes run_dir/report.md and returns its path."""
    run_dir = Path(cfg.run.run_dir)
    lines = [f"# syneg-ray run: {run_dir.name}", ""]
    table = metrics_table(summaries.get("evaluate") or {})
    if table:
        lines += [f"## Retrieval on {cfg.data.dataset} / {cfg.evaluate.split or cfg.data.eval_split}", "", table, ""]
    lines += ["## Stages", "", "| stage | seconds | summary |", "|---|---|---|"]
    for stage, seconds in timings.items():
        summary = summaries.get(stage)
        text = ", ".join(f"{k}: {_value(v)}" for k, v in summary.items() if not isinstance(v, dict | list)) if isinstance(summary, dict) else ""
        lines.append(f"| {stage} | {seconds:.0f} | {text} |")
    lines += ["", (f"LLM: `{cfg.synthesize.model}` ({cfg.synthesize.engine.value}); encoder: `{cfg.encoder.model}`; "
              f"mix: {cfg.mix.strategy.value}, R = {cfg.mix.ratio}{_realized(summaries.get('mix'))}; tau = {cfg.train.temperature}"), ""]
    warning = _ratio_warning(cfg, summaries.get("mix"))
    if warning:
        lines += [f"**Note:** {warning}.", ""]
    try:
        plot = similarity_plot(cfg, run_dir)
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished run
        logger.warning("similarity plot skipped: %s", exc)
        plot = None
    pictures = ([plot] if plot else []) + sorted((run_dir / "train").glob("*.png"))
    if pictures:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in pictures] + [""]
    lines += ["## Config", "", "```yaml", to_yaml(cfg).rstrip(), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
