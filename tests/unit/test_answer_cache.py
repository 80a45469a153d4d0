"""The answer cache: what names a request, and answers stored by one synthesis and found by another."""

from __future__ import annotations

from dataclasses import replace

import pytest

from syneg_ray import answer_cache, attributes, pipeline
from syneg_ray.config import load_config
from syneg_ray.engines.base import Generation, with_generation
from syneg_ray.errors import ConfigError
from syneg_ray.stages import synthesize as stage

PAIR = {"query_id": "q1", "positive_id": "d1", "query": "Does vitamin D prevent fractures?",
        "positive": "Vitamin D supplementation reduced hip fractures in a randomized trial of older adults. " * 4}


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"synthesize.answer_cache={tmp_path / 'answers'}"])


def first_work(cfg) -> dict:
    rows, _ = stage.plan([PAIR], cfg, attributes.POOLS["scifact"], set(), {})
    return rows[0]


def test_a_request_is_named_by_what_decides_its_answer_and_not_by_the_judge(cfg) -> None:
    row, s = first_work(cfg), cfg.synthesize
    digest = answer_cache.request_digest(row, s)
    # what the judge does with an answer, and how the engine is laid out, ask nothing new
    for same in (replace(s, reflect_rounds=3), replace(s, judge_max_positive_similarity=0.5), replace(s, batch_size=1),
                 replace(s, max_retries=0), replace(s, answer_cache="elsewhere")):
        assert answer_cache.request_digest(row, same) == digest
    # the chat, the seed, the token budget, the number of negatives, the sampling and the LLM do
    changed = [{**row, "chat": row["chat"].replace("vitamin", "Vitamin")}, {**row, "gen_seed": row["gen_seed"] + 1},
               {**row, "max_tokens": row["max_tokens"] + 1}, {**row, "k": row["k"] + 1}]
    assert all(answer_cache.request_digest(r, s) != digest for r in changed)
    for other in (replace(s, temperature=0.3), replace(s, model="qwen2.5-1.5b"), replace(s, presence_penalty=0.5),
                  replace(s, schema_min_length_cap=64)):
        assert answer_cache.request_digest(row, other) != digest


def test_answers_stored_by_one_synthesis_are_found_by_the_next(cfg, tmp_path) -> None:
    row = first_work(cfg)
    retry = {**row, "attempt": 1, "gen_seed": row["gen_seed"] + 1}
    failed = {**row, "attempt": 2, "gen_seed": row["gen_seed"] + 2}
    cache = answer_cache.AnswerCache(tmp_path / "answers", cfg.synthesize)
    split = cache.split([row, retry, failed])
    assert len(cache) == 0 and split.todo == [row, retry, failed] and not split.reused
    cache.add([with_generation(row, Generation('{"negatives": ["a"]}', 900, 120)),
               with_generation(retry, Generation('{"negatives": ["b"]}', 900, 80)),
               with_generation(failed, Generation("", 0, 0, error="HTTP 500"))], seconds=30.0, split=split)
    # a later synthesis (another instance, reading the folder) with the judge set otherwise
    later = answer_cache.AnswerCache(tmp_path / "answers", replace(cfg.synthesize, reflect_rounds=0))
    assert len(later) == 2  # an engine error is no answer: it is not stored
    unseen = {**row, "key": "unseen", "gen_seed": row["gen_seed"] + 9}
    split = later.split([row, unseen, failed, retry])
    assert split.todo == [unseen, failed]
    assert split.digests == {answer_cache.request_of(r): answer_cache.request_digest(r, cfg.synthesize) for r in (unseen, failed)}
    assert [(r["generated_text"], r["prompt_tokens"], r["output_tokens"], r["engine_error"]) for r in split.reused] == [
        ('{"negatives": ["a"]}', 900, 120, ""), ('{"negatives": ["b"]}', 900, 80, "")]
    assert all(r["key"] == row["key"] for r in split.reused) and [r["attempt"] for r in split.reused] == [0, 1]  # the asking rows' own columns
    assert split.seconds == {(row["key"], 0, 0): 15.0, (row["key"], 1, 0): 15.0}  # each stored answer's share of its batch's 30 s


def test_a_round_reads_the_texts_of_only_the_parts_that_hold_its_requests(cfg, tmp_path, monkeypatch) -> None:
    rows = [{**first_work(cfg), "key": f"pair{i}", "gen_seed": i} for i in range(3)]
    cache = answer_cache.AnswerCache(tmp_path / "answers", cfg.synthesize)
    for row in rows:  # one engine batch, so one part, per answer
        cache.add([with_generation(row, Generation(f'{{"negatives": ["{row["key"]}"]}}', 9, 9))], 1.0, cache.split([row]))
    read = []
    real_read = answer_cache.pq.read_table
    monkeypatch.setattr(answer_cache.pq, "read_table", lambda path, **kw: read.append((path, kw.get("columns"))) or real_read(path, **kw))
    split = cache.split([rows[1]])
    assert [r["generated_text"] for r in split.reused] == ['{"negatives": ["pair1"]}']
    texts_read = [path for path, columns in read if columns != ["request"]]
    assert len(read) == 4 and len(texts_read) == 1  # every part's digests, one part's texts


def test_the_cache_is_a_local_folder_and_no_part_of_any_fingerprint(tmp_path) -> None:
    with pytest.raises(ConfigError, match="synthesize.answer_cache .* is a URI"):
        load_config(None, ["synthesize.answer_cache=s3://bucket/answers"])
    plain = pipeline.fingerprints(load_config(None, []))
    assert pipeline.fingerprints(load_config(None, [f"synthesize.answer_cache={tmp_path}"])) == plain


def test_an_index_stands_in_for_the_parts_it_lists(cfg, tmp_path, monkeypatch) -> None:
    """Every INDEX_EVERY parts go into an index file, and more than INDEX_FILES index files into one;
    a round then opens the index and only the parts that hold its requests."""
    monkeypatch.setattr(answer_cache, "INDEX_EVERY", 2)
    monkeypatch.setattr(answer_cache, "INDEX_FILES", 2)
    rows = [{**first_work(cfg), "key": f"pair{i}", "gen_seed": i} for i in range(7)]
    cache = answer_cache.AnswerCache(tmp_path / "answers", cfg.synthesize)
    index_files = []
    for row in rows:  # one engine batch, so one part, per answer; each split indexes what it can
        cache.add([with_generation(row, Generation(f'{{"negatives": ["{row["key"]}"]}}', 9, 9))], 1.0, cache.split([row]))
        index_files.append(len(list((tmp_path / "answers" / "index").glob("*.parquet"))))
    # parts 1-2 indexed at the 3rd split, 3-4 at the 5th, 5-6 at the 7th, and then the three files merged
    assert index_files == [0, 0, 1, 1, 2, 2, 1]
    read = []
    real_read = answer_cache.pq.read_table
    monkeypatch.setattr(answer_cache.pq, "read_table", lambda path, **kw: read.append(path) or real_read(path, **kw))
    split = cache.split([rows[2], rows[6], {**rows[0], "key": "unseen", "gen_seed": 99}])
    assert sorted(r["generated_text"] for r in split.reused) == ['{"negatives": ["pair2"]}', '{"negatives": ["pair6"]}']
    assert [r["key"] for r in split.todo] == ["unseen"]
    # the merged index, the one part outside it (its digests, then its text), and pair2's part
    assert sum(p.parent.name == "index" for p in read) == 1 and len(read) == 4


def test_parts_listed_twice_or_gone_read_right(cfg, tmp_path, monkeypatch) -> None:
    """A kill between a merged index file's commit and the removal of what it merged lists parts
    twice; a part deleted by hand is a miss, not an error."""
    monkeypatch.setattr(answer_cache, "INDEX_EVERY", 2)
    rows = [{**first_work(cfg), "key": f"pair{i}", "gen_seed": i} for i in range(3)]
    cache = answer_cache.AnswerCache(tmp_path / "answers", cfg.synthesize)
    for row in rows:
        cache.add([with_generation(row, Generation(f'{{"negatives": ["{row["key"]}"]}}', 9, 9))], 1.0, cache.split([row]))
    (index_file,) = (tmp_path / "answers" / "index").glob("*.parquet")
    answer_cache.pq.write_table(answer_cache.pq.read_table(index_file), index_file.with_name("part-copy.parquet"))
    split = cache.split(rows)
    assert [r["key"] for r in split.reused] == ["pair0", "pair1", "pair2"] and not split.todo
    listed = answer_cache.pq.read_table(index_file).column("part").to_pylist()
    (tmp_path / "answers" / listed[0]).unlink()
    split = cache.split(rows)
    assert len(split.todo) == 1 and len(split.reused) == 2
