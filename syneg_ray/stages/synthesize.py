"""Synthesize stage: pairs -> prompts -> LLM engine -> judge (Ray Data) -> the k hardest negatives that pass.

Glue only: prompts.py builds the messages, engines/ generate, services/judge.py parses and scores
each answer on its own encoder actors (judging.py gives the verdicts), rounds.py decides what
follows (a reflection turn for the flagged negatives, or the kept ones), and synthetic_store.py
commits each batch exactly once: judged rounds first, then what follows from them. A pair left with
no passing negative, or (`synthesize.retry_short`) with fewer than k, is retried with a new seed up to
`synthesize.max_retries` times, keeping what passed; a pair that never keeps one is recorded as failed.
Rerunning skips every finished key and goes on from every pair's last committed round. With
`synthesize.answer_cache`, a request any synthesis already made is answered from the cache, not
sent to the engine (answer_cache.py).

The pairs are read in windows of `WINDOW`, and each engine pass (a round) takes what the last one
left to do (reflection turns, retries) topped up with the next windows' first answers to
`round_rows` requests (a window, more on a cluster of many replicas). So the engine and judge
actors, which each pass starts afresh, start about once a window, not once per round of every
window, and a window's last small rounds ride in the next one's. The driver holds the texts,
prompts and judged rounds of one round and one window at most, and of the other pairs only keys.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syneg_ray import answer_cache, attributes, dataset, engines, judging, parsing, prompts, rounds, schema
from syneg_ray import synthetic_store as store
from syneg_ray.config import Engine, PipelineConfig, SynthesizeConfig
from syneg_ray.engines.base import OUTPUT_SCHEMA, WORK_COLUMNS, WORK_SCHEMA, limits_of
from syneg_ray.errors import DataError, EngineError, SynegError
from syneg_ray.registry import resolve_model
from syneg_ray.runtime import init_ray, stage_dir
from syneg_ray.services import judge
from syneg_ray.services.judge import examine

logger = logging.getLogger(__name__)

ENGINE_ERROR = rounds.ENGINE_ERROR  # reject reason of a request the engine answered with an error
POOLS_FILE = "attribute_pools.yaml"
# Pairs planned and held in the driver at once. Large enough that a window's last reflection turns
# and retries (a fraction of its pairs) still fill the engine's batches; small enough that the
# window's texts, prompts and judged rounds stay in tens of MB whatever the number of pairs.
WINDOW = 4096
# A round is topped up with the next windows' first answers to a window's worth of requests, or to
# this many engine batches for every replica where that is more, so that on a large cluster every
# replica has work until near the round's end.
BATCHES_PER_REPLICA = 4
NO_CONTEXT = (math.nan, "")  # a pair's (off-topic floor, style reference) without mining output


def finished(row: dict[str, Any]) -> bool:
    """Whether a rerun skips a pair by its output row: ok, or failed on what the LLM wrote.

    A pair whose every attempt was an engine error (a server outage, a request refused) was never
    judged, so a rerun tries it again; its attempt count goes on from the log (one more attempt).
    Any row of a key decides alike: a pair gets a second output row only after a rerun found its
    first unfinished.
    """
    return row["status"] == "ok" or any(x != ENGINE_ERROR for x in row["reject_reasons"])


def finished_keys(parts: Path) -> store.KeySet:
    """The keys of the output `parts` that a rerun skips (`finished`)."""
    return store.keys_where(parts, store.SYNTHETIC_SCHEMA, ["status", "reject_reasons"], finished)


def plan(pairs: list[dict], cfg: PipelineConfig, pools: attributes.Pools, done: Container[str], attempts: dict[str, dict],
         context: dict[tuple[str, str], tuple[float, str]] | None = None) -> tuple[list[dict], int]:
    """First-answer work rows for every unfinished pair (continuing logged attempts) and the count of finished pairs.

    Args:
        context: (query_id, positive_id) -> (off-topic floor, style reference text), from mining output.
    """
    s = cfg.synthesize
    rows, finished = [], 0
    for pair in pairs:
        seed = attributes.pair_seed(cfg.run.seed, pair["query_id"], pair["positive_id"])
        key = store.pair_key(cfg, pair["query_id"], pair["positive_id"])
        if key in done:
            finished += 1
            continue
        draw = attributes.draw(pools, seed)
        floor, style = (context or {}).get((pair["query_id"], pair["positive_id"]), NO_CONTEXT)
        prior = attempts.get(key, {"attempts": 0, "prompt_tokens": 0, "output_tokens": 0, "reject_reasons": []})
        chat = prompts.build_messages(pair["query"], pair["positive"], draw, s.candidates, style if s.style_reference else "")
        base = {**pair, **draw, "key": key, "seed": seed, "chat": json.dumps(chat), "floor": floor if s.judge else math.nan}
        rows.append(rounds.first_work(base, s, min(prior["attempts"], s.max_retries), prior))
    return rows, finished


def follow(state: dict[str, Any], base: dict[str, Any], s: SynthesizeConfig) -> tuple[dict | None, rounds.Outcome | None]:
    """What follows from a judged state: (the next work row or None, the pair's outcome or None).

    A non-terminal state asks for a reflection turn; a terminal one gives the outcome, and a retry
    outcome also the first work row of the next attempt.
    """
    if not rounds.terminal(state, s):
        return rounds.reflection_work(base, state, s), None
    result = rounds.outcome(state, s, s.model)
    if result.retry:
        return rounds.first_work(base, s, result.row["attempts"], result.row), result
    return None, result


def finish(row: dict[str, Any], cfg: SynthesizeConfig, limits: parsing.Limits) -> tuple[dict, dict]:
    """The outcome row (status ok, failed or retry) of one unjudged first answer, and its state."""
    (judged,) = examine([row], limits, judging.Rule(), None)
    state = rounds.state_of(judged)
    return rounds.outcome(state, cfg, cfg.model).row, state


def commit(out: Path, states: list[dict], outcomes: list[rounds.Outcome]) -> None:
    """Commits judged rounds, then the retries and finished pairs that follow from them (a kill in
    between loses nothing: a rerun derives the same outcomes from the committed rounds)."""
    store.write_part(out / "rounds", states, store.ROUND_SCHEMA, id_columns=("key", "attempt", "round"))
    again = [o.row for o in outcomes if o.retry]
    store.write_part(out / "attempts", [{k: r[k] for k in store.ATTEMPT_SCHEMA.names} for r in again], store.ATTEMPT_SCHEMA)
    store.write_part(out / Path(schema.SYNTHETIC).name, [o.row for o in outcomes if not o.retry], store.SYNTHETIC_SCHEMA)


def resume(work: list[dict], states: dict[str, dict], s: SynthesizeConfig, out: Path) -> list[dict]:
    """The work rows with every pair that has a committed round of its current attempt carried on
    from it; outcomes that follow from a committed round with no generation are committed here."""
    carried, outcomes, resumed = [], [], 0
    for row in work:
        state = states.get(row["key"])
        if state is None or int(state["attempt"]) != int(row["attempt"]):
            carried.append(row)
            continue
        resumed += 1
        again, result = follow(state, {name: row[name] for name in WORK_COLUMNS}, s)
        carried += [again] if again else []
        outcomes += [result] if result else []
    commit(out, [], outcomes)
    if resumed:
        logger.info("synthesize: %d pairs go on from their last committed judge round (%d settled by it)",
                    resumed, sum(not o.retry for o in outcomes))
    return carried


def resolve_pools(cfg: PipelineConfig, model: str, out_dir: Path) -> attributes.Pools:
    """Pools from `synthesize.attribute_pools`, else built in, else derived once by the LLM and stored.

    Only pools the LLM proposed are stored: when its answer holds no usable domains, this run uses
    the generic pools and a rerun asks again. An engine that fails the request raises EngineError.
    """
    if cfg.synthesize.attribute_pools:
        return attributes.load_pools(cfg.synthesize.attribute_pools)
    builtin = attributes.pools_for(cfg.data.dataset)
    if builtin is not None:
        return builtin
    stored = out_dir / POOLS_FILE
    if stored.is_file():
        return attributes.load_pools(stored)
    with closing(dataset.open_docstore(dataset.prepare(cfg))) as docs:
        rows = random.Random(cfg.run.seed).sample(range(docs.n), min(12, docs.n))  # only the sample's texts are read
        sample = docs.texts(rows)
    text = engines.complete(cfg.synthesize, model, prompts.domain_messages(sample))
    domains = parsing.parse_domains(text)
    if len(domains) < 2:
        # not stored: a stored file is reused by every rerun, which would then never ask the LLM again
        logger.warning("the LLM proposed no usable domains (%r); using generic pools for this run (not saved; "
                       "name pools in synthesize.attribute_pools to choose them)", text[:200])
        return attributes.GENERIC
    pools = attributes.Pools(domains=tuple(domains))
    attributes.save_pools(pools, stored)
    logger.info("attribute pools derived by the LLM: %s (saved to %s; override with synthesize.attribute_pools)",
                ", ".join(pools.domains), stored)
    return pools


def work_dataset(work: list[dict], batch_size: int, schema: pa.Schema = WORK_SCHEMA):  # -> ray.data.Dataset
    """The work rows as a Dataset of one block per engine batch.

    A map task hands its output on only when its whole block is done, so a single block would
    commit nothing (and show no progress) until the round had finished.
    """
    import ray.data

    table = pa.Table.from_pylist(work, schema=schema)
    return ray.data.from_arrow([table.slice(i, batch_size) for i in range(0, len(work), batch_size)])


def answered(work: list[dict], reused: list[dict], step: engines.EngineFn, batch_size: int):  # -> ray.data.Dataset
    """The engine's answers to `work`, after the answers taken from the cache (`reused`, output rows)."""
    if not reused:
        return step(work_dataset(work, batch_size))
    stored = work_dataset(reused, batch_size, OUTPUT_SCHEMA)
    return stored.union(step(work_dataset(work, batch_size))) if work else stored


def count(row: dict[str, Any], totals: Counter) -> None:
    """Adds one judged generation to the invocation's counters."""
    totals["generations"] += 1
    totals["reflections"] += bool(row["round"])
    totals["engine_errors"] += bool(row.get("engine_error"))
    totals["output_tokens"] += int(row["output_tokens"])
    if not row["round"]:
        totals["invalid_json"] += parsing.INVALID_JSON in row["parse_reasons"]
        totals.update(f"reject:{r}" for r in row["parse_reasons"] if r)
    filled = [j for j, t in enumerate(row["candidates"]) if t]
    if row["round"]:  # a rewrite that repeats its original is no rewrite (rounds.reflected_state)
        prev = json.loads(row["pool"])
        originals = [prev["candidates"][i] for i in rounds.flagged(prev)]
        same = {j for j in filled if judging.repeats(originals[j], row["candidates"][j])}
        totals["unchanged"] += len(same)
        totals["rewritten"] += len(filled) - len(same)
        filled = [j for j in filled if j not in same]
    scored = [j for j in filled if not math.isnan(row["query_scores"][j])]
    totals["judged"] += len(scored)
    totals.update(f"flagged:{row['verdicts'][j]}" for j in scored if row["verdicts"][j] != judging.OK)


def run_round(work: list[dict], step: engines.EngineFn, judge_step: engines.EngineFn | None, cfg: SynthesizeConfig,
              out: Path, bar: Any, totals: Counter, fingerprint: str, cache: answer_cache.AnswerCache | None = None) -> list[dict]:
    """One pass of the engine (and the judge) over `work`; commits what each batch settles and logs
    its cost under the settings `fingerprint`; returns the next work. Work that `cache` holds an
    answer to is not sent to the engine, and the engine's new answers are stored in it."""
    limits = limits_of(cfg)
    last = time.perf_counter()
    split = cache.split(work) if cache is not None else answer_cache.Split(work, [], {}, {})
    ds = answered(split.todo, split.reused, step, cfg.batch_size)
    if judge_step is not None:
        ds = judge_step(ds)
    # One engine batch may outlast Ray Data's no-progress limit (30 minutes by default): 32 answers of
    # 1,500 tokens take about 40 minutes on 2 CPU cores, and Ray Data would fail the round as hung.
    # An engine that fails still ends the round with its error.
    ds.context.execution_no_progress_timeout_s = -1
    following: list[dict] = []
    # prefetch_batches=0: with prefetching, Ray Data hands a block on only once the next one has
    # arrived, so each batch would be committed one engine batch late (18 minutes with a 1.5B LLM
    # on 2 CPU cores), and a kill would lose the batch that had finished
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        rows = batch.to_pylist()
        if judge_step is None:
            rows = examine(rows, limits, judging.Rule(), None)
        states, outcomes = [], []
        for row in rows:
            count(row, totals)
            state = rounds.state_of(row)
            if cfg.judge and (state["round"] or state["candidates"]):
                states.append(state)
            again, result = follow(state, {name: row[name] for name in WORK_COLUMNS}, cfg)
            following += [again] if again else []
            outcomes += [result] if result else []
        commit(out, states, outcomes)
        now = time.perf_counter()
        # a batch's answers are new or reused; a reused one costs what it cost when it was generated
        old = [split.seconds.get(answer_cache.request_of(r)) for r in rows]
        new = [r for r, o in zip(rows, old) if o is None]
        if cache is not None and new:
            cache.add(new, now - last, split)
        totals["reused"] += len(rows) - len(new)
        totals["reused_output_tokens"] += sum(int(r["output_tokens"]) for r, o in zip(rows, old) if o is not None)
        store.log_cost(out, fingerprint, (now - last if new else 0.0) + sum(o for o in old if o is not None), len(rows),
                       sum(int(r["output_tokens"]) for r in rows), reused=len(rows) - len(new))
        if new:  # time spent while only reused answers came back (the engine starting) counts toward the next new batch
            last = now
        totals["kept"] += sum(o.kept for o in outcomes)
        bar.update(sum(not o.retry for o in outcomes))
    if totals["generations"] and totals["engine_errors"] == totals["generations"]:
        raise EngineError(f"{cfg.engine.value} engine answered every request with an error; check the server log")
    return following


def mined_context(cfg: PipelineConfig, pairs: list[dict]) -> dict[tuple[str, str], tuple[float, str]]:
    """(query_id, positive_id) -> (off-topic floor, style reference text) from `mine/negatives.parquet`.

    The floor (judge on) is the pair's k-th dense mined score (`judging.mined_floor`); the style
    reference (`synthesize.style_reference`) is the text of its first mined negative that is not a
    positive, read with `dataset.texts_of` (only the documents named). No mining output: none of either.

    Raises:
        DataError: the mining output lacks a column; rerun `syneg mine`.
    """
    s = cfg.synthesize
    if not (s.judge or s.style_reference):
        return {}
    path = Path(cfg.run.run_dir) / schema.MINED
    if not path.exists():
        logger.info("synthesize: no mining output at %s, so no off-topic floor%s; run `syneg mine` first to have them",
                    path, " and no style reference" if s.style_reference else "")
        return {}
    columns = ["query_id", "positive_id", "positive_ids", "negative_ids", "negative_scores", "source"]
    try:  # only the rows of these pairs' queries: `pairs` is one window of a stream of them
        table = pq.read_table(path, columns=columns, filters=pc.field("query_id").isin(sorted({p["query_id"] for p in pairs})))
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise DataError.at(path, None, f"cannot read columns {columns} ({' '.join(str(exc).split())[:200]}); "
                                       "rerun `syneg mine`") from None
    wanted = {(p["query_id"], p["positive_id"]) for p in pairs}
    floors, style_ids = {}, {}
    for row in table.to_pylist():
        pair = (row["query_id"], row["positive_id"])
        if pair not in wanted:
            continue
        floors[pair] = judging.mined_floor(row["negative_scores"] or [], row["source"] or [], s.negatives_per_pair) if s.judge else math.nan
        positives = set(row["positive_ids"] or ()) | {row["positive_id"]}
        style_ids[pair] = next((d for d in row["negative_ids"] or () if d not in positives), "")
    texts = dataset.texts_of(dataset.prepare(cfg), {d for d in style_ids.values() if d}) if s.style_reference else {}
    return {pair: (floors[pair], texts.get(style_ids[pair], "")) for pair in floors}


def pair_windows(path: Path, max_pairs: int, size: int, columns: list[str] | None = None) -> Iterator[list[dict]]:
    """The train pairs of `path` (the first `max_pairs` when set; `columns` of them, default all) in
    windows of `size` rows, read a record batch at a time."""
    left = max_pairs or math.inf
    window: list[dict] = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=size, columns=columns):
        window += batch.slice(0, min(batch.num_rows, left)).to_pylist()
        left -= batch.num_rows
        while len(window) >= size:
            yield window[:size]
            window = window[size:]
        if left <= 0:
            break
    if window:
        yield window


def round_rows(s: SynthesizeConfig) -> int:
    """The requests a round is topped up to: a window, or `BATCHES_PER_REPLICA` batches a replica."""
    return max(WINDOW, BATCHES_PER_REPLICA * s.replicas * s.batch_size)


def run_rounds(windows: Iterable[list[dict]], run: Callable[[list[dict]], list[dict]], fill: int) -> int:
    """Runs `run` (one engine pass over work rows, which returns the work that follows from them)
    until no work is left, and returns how many passes it made.

    Each pass takes what the last one left (reflection turns, retries), topped up with the next
    windows' work while it holds fewer than `fill` rows. The windows are read as the passes need
    them, so at most one window more than `fill` rows is held.
    """
    windows = iter(windows)
    work: list[dict] = []
    passes = 0
    while True:
        while len(work) < fill and (more := next(windows, None)) is not None:
            work += more
        if not work:
            return passes
        work = run(work)
        passes += 1


def pair_keys(cfg: PipelineConfig, path: Path, done: store.KeySet) -> tuple[store.KeySet, int, int]:
    """Every train pair's key (the first `synthesize.max_pairs` when set), how many pairs, and how
    many of them `done` holds: read from the id columns a record batch at a time."""
    sets, n, finished = [], 0, 0
    for window in pair_windows(path, cfg.synthesize.max_pairs, WINDOW, columns=["query_id", "positive_id"]):
        keys = [store.pair_key(cfg, p["query_id"], p["positive_id"]) for p in window]
        sets.append(store.KeySet.of(keys))
        n, finished = n + len(keys), finished + int(done.holds(keys).sum())
    return store.KeySet.union(sets), n, finished


def run_synthesize(cfg: PipelineConfig) -> dict:
    """Writes judged synthetic negatives for every train pair into `run_dir/synthesize/negatives.parquet`.

    Returns:
        Summary: pairs, ok, failed, valid_rate, valid_json_rate, negatives, generations, reflections,
        judged, flagged (per verdict), rewritten, unchanged (rewrites that repeat their original), kept, output_tokens, seconds,
        generated_pairs (sent to the LLM by this invocation), rounds (its engine passes), reused (generations answered from
        `synthesize.answer_cache`), tokens_per_s (of the new ones), output_tokens_per_kept, seconds_per_kept, rejects.

    Raises:
        EngineError: the engine failed as a whole (model cannot load, server unreachable).
    """
    from tqdm.auto import tqdm

    s = cfg.synthesize
    _, pairs_path = dataset.ensure_pairs(cfg)  # a bad dataset or split fails here, before Ray starts
    judge_step = judge.build(cfg, limits_of(s)) if s.judge else None  # before Ray: an ONNX export runs apart from it
    init_ray(cfg)
    out = stage_dir(cfg, "synthesize")
    model = s.model if s.engine is Engine.OPENAI else resolve_model(s.model, cfg.run.cache_dir or None)
    pools = resolve_pools(cfg, model, out)
    fingerprint = store.settings_fingerprint(cfg)
    parts = Path(cfg.run.run_dir) / schema.SYNTHETIC
    done = finished_keys(parts)
    keys, n_pairs, finished = pair_keys(cfg, pairs_path, done)
    logger.info("synthesize: %d pairs, %d already done, %d to generate with %s %s (prompt %s; judge %s, %d reflection rounds)",
                n_pairs, finished, n_pairs - finished, s.engine.value, s.model, prompts.PROMPT_VERSION,
                cfg.encoder.model if s.judge else "off", s.reflect_rounds if s.judge else 0)
    totals: Counter = Counter()
    start = time.perf_counter()
    cache = answer_cache.AnswerCache(Path(s.answer_cache), s) if s.answer_cache else None
    if finished < n_pairs:
        # where unfinished pairs left off: logged attempts and (judge on) committed rounds. Only the
        # pairs of the windows a kill interrupted have rounds that are not finished, so these stay small.
        attempts = store.latest_attempts(out / "attempts", skip=done)
        states = store.latest_rounds(out / "rounds", skip=done) if s.judge else {}

        def window_work() -> Iterator[list[dict]]:
            """Each window's first answers, and the turns of pairs that go on from a committed round."""
            for window in pair_windows(pairs_path, s.max_pairs, WINDOW):
                window = [p for p in window if store.pair_key(cfg, p["query_id"], p["positive_id"]) not in done]
                if not window:
                    continue  # finished by an earlier run: not even its mining output is read
                work, _ = plan(window, cfg, pools, done, attempts, mined_context(cfg, window))
                work = resume(work, states, s, out)
                totals["generated_pairs"] += len(work)
                yield work

        step = None

        def one_round(work: list[dict]) -> list[dict]:
            nonlocal step
            step = step or engines.build(s, model)
            turns = sum(int(r["round"]) > 0 for r in work)
            again = sum(int(r["round"]) == 0 and int(r["attempt"]) > 0 for r in work)
            logger.info("synthesize: round %d: %d requests (%d first answers, %d reflection turns, %d retries)",
                        totals["rounds"] + 1, len(work), len(work) - turns - again, turns, again)
            totals["rounds"] += 1
            try:
                return run_round(work, step, judge_step, s, out, bar, totals, fingerprint, cache)
            except SynegError:
                raise
            except Exception as exc:  # Ray wraps engine crashes; say which engine and what to do
                raise EngineError(engines.describe_failure(s, exc)) from exc

        with tqdm(total=n_pairs, initial=finished, desc="synthesize", unit="pair") as bar:
            run_rounds(window_work(), one_round, round_rows(s))
    logged = store.logged_cost(out, fingerprint)
    return summarize(keys, n_pairs, parts, totals, time.perf_counter() - start, logged)


def output_counts(parts: Path, keys: store.KeySet) -> dict[str, int]:
    """ok, failed, negatives and output_tokens of the output rows of `keys` (the row `read_synthetic`
    keeps for each), read a record batch at a time: a million pairs' negatives would be gigabytes in
    the driver, where it holds one batch's and a digest and four numbers a row."""
    tables = []
    for batch in store.part_batches(parts, store.SYNTHETIC_SCHEMA, ["key", "status", "attempts", "negatives", "output_tokens"]):
        table = batch.filter(pa.array(keys.holds(batch.column("key").to_pylist())))
        tables.append(pa.table({
            "key": pa.array(store.digest(table.column("key").to_pylist()), pa.binary(16)),
            "status": table.column("status"),
            "attempts": table.column("attempts"),
            "negatives": pc.list_value_length(table.column("negatives")).fill_null(0),
            "output_tokens": table.column("output_tokens").fill_null(0),
        }))
    if not tables:
        return {"ok": 0, "failed": 0, "negatives": 0, "output_tokens": 0}
    rows = store.one_per_key(pa.concat_tables(tables))
    ok = int(pc.sum(pc.equal(rows.column("status"), "ok")).as_py() or 0)
    return {"ok": ok, "failed": rows.num_rows - ok, "negatives": int(pc.sum(rows.column("negatives")).as_py() or 0),
            "output_tokens": int(pc.sum(rows.column("output_tokens")).as_py() or 0)}


def summarize(keys: store.KeySet, n_pairs: int, parts: Path, totals: Counter, seconds: float, logged: dict[str, float]) -> dict:
    """Counts over the whole output (not just this invocation) and the one summary line.

    The cost per kept negative, over the whole output (every attempt and round of every pair, failed
    ones too, over every invocation): output tokens, and seconds from the cost log (`logged`, the
    sums of `synthetic_store.logged_cost`) when the log accounts for every output token; a log
    begun after the output or cut by a kill does not, and then `seconds_per_kept` is None (this
    invocation's own are `seconds` over `kept`).

    Args:
        keys: this config's pairs (`pair_keys`); `n_pairs` of them.
    """
    counts = output_counts(parts, keys)
    ok, negatives, tokens = counts["ok"], counts["negatives"], counts["output_tokens"]
    gens = totals["generations"]
    new_tokens = totals["output_tokens"] - totals["reused_output_tokens"]
    whole = logged["output_tokens"] == tokens and negatives > 0
    summary = {
        "pairs": n_pairs, "ok": ok, "failed": counts["failed"], "valid_rate": ok / n_pairs if n_pairs else 0.0,
        "negatives": negatives, "generations": gens, "reflections": totals["reflections"],
        "valid_json_rate": (gens - totals["invalid_json"] - totals["engine_errors"]) / gens if gens else None,
        "judged": totals["judged"],
        "flagged": {k.split(":", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("flagged:")},
        "rewritten": totals["rewritten"], "unchanged": totals["unchanged"], "kept": totals["kept"],
        "output_tokens": totals["output_tokens"], "seconds": round(seconds, 1), "generated_pairs": totals["generated_pairs"],
        "rounds": totals["rounds"],
        "reused": totals["reused"],  # of the generations, answers taken from synthesize.answer_cache
        "tokens_per_s": new_tokens / seconds if seconds > 0 and new_tokens else None,
        "output_tokens_per_kept": tokens / negatives if negatives else None,
        "seconds_per_kept": logged["seconds"] / negatives if whole else None,
        "logged_seconds": round(logged["seconds"], 1), "logged_output_tokens": logged["output_tokens"],
        "rejects": {k.split(":", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("reject:")},
        "output": str(parts),
    }  # fmt: skip
    tps = f"{summary['tokens_per_s']:.1f} output tok/s" if summary["tokens_per_s"] else "nothing generated"
    if summary["reused"]:
        tps += f", {summary['reused']} answers taken from the answer cache"
    cost = (f"{summary['output_tokens_per_kept']:.0f} output tokens" if summary["output_tokens_per_kept"] else "n/a") + (
        f", {summary['seconds_per_kept']:.1f} s" if summary["seconds_per_kept"] else
        f"; seconds unknown: the cost log holds {logged['output_tokens']:,} of the output's {tokens:,} tokens" if negatives else "")
    logger.info("synthesized %d pairs: %d ok (valid rate %.1f%%), %d failed, %d negatives; %s; judged %d, flagged %s, "
                "%d reflection turns, %d rewritten (%d handed back unchanged), %d kept; per kept negative %s; rejects %s",
                n_pairs, ok, 100 * summary["valid_rate"], summary["failed"], negatives, tps, summary["judged"],
                summary["flagged"] or "none", summary["reflections"], summary["rewritten"], summary["unchanged"], summary["kept"], cost,
                summary["rejects"] or "none")
    return summary
