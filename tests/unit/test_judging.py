"""The judge's verdicts and selection, the reflection prompt, and a pair's way through its rounds: no Ray, no model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from syneg_ray import judging, parsing, prompts, rounds
from syneg_ray.config import MineConfig, load_config

RULE = judging.Rule(relative_margin=0.05, max_positive_similarity=0.9)
NAN = math.nan


def test_each_verdict() -> None:
    # positive scores 0.60: the guard passes a negative up to 0.60 - 0.05 * 0.60 = 0.57
    got = judging.verdicts(np.array([0.40, 0.71, 0.50, 0.20]), 0.60, np.array([0.50, 0.60, 0.95, 0.30]), RULE, floor=0.30)
    assert got == [judging.OK, judging.FALSE_NEGATIVE, judging.NEAR_COPY, judging.OFF_TOPIC]


def test_margin_edges_follow_the_miners_guard() -> None:
    pos = 0.60
    edge = pos - abs(pos) * RULE.relative_margin  # 0.57: at the bound passes, as mining.guard_masks keeps score <= bound
    scores = np.array([edge, np.nextafter(edge, 1.0), pos, pos + 0.1])
    assert judging.verdicts(scores, pos, np.zeros(4), RULE) == ["ok", "false_negative", "false_negative", "false_negative"]
    # a negative positive score: the margin is taken from its magnitude, so the bound (-0.21) is below it
    assert judging.verdicts(np.array([-0.22, -0.20]), -0.20, np.zeros(2), RULE) == ["ok", "false_negative"]
    # the absolute margin and max_score of the miner apply too
    strict = judging.Rule.of(MineConfig(relative_margin=0.0, absolute_margin=0.1, max_score=0.5), 0.9)
    assert judging.verdicts(np.array([0.49, 0.51, 0.45]), 0.6, np.zeros(3), strict) == ["ok", "false_negative", "ok"]
    assert judging.verdicts(np.array([0.52]), 0.9, np.zeros(1), strict) == ["false_negative"]  # above max_score
    # margin 0 still rejects a score above the positive, and keeps one equal to it (the miner's rule)
    zero = judging.Rule(relative_margin=0.0)
    assert judging.verdicts(np.array([0.6, 0.61]), 0.6, np.zeros(2), zero) == ["ok", "false_negative"]


def test_near_copy_comes_first_and_unscored_negatives_pass() -> None:
    # a copy of the positive also fails the guard: it is named for what it is, a copy
    assert judging.verdicts(np.array([0.9]), 0.6, np.array([0.99]), RULE) == [judging.NEAR_COPY]
    assert judging.verdicts(np.array([NAN, NAN]), NAN, np.array([NAN, NAN]), RULE, floor=0.5) == ["ok", "ok"]
    assert judging.verdicts(np.array([0.1]), 0.6, np.array([0.2]), RULE) == ["ok"]  # no floor without mining
    everything = judging.Rule(max_positive_similarity=-1.0)  # flags any scored negative
    assert judging.verdicts(np.array([0.1, 0.2]), 0.6, np.array([-0.5, 0.0]), everything) == [judging.NEAR_COPY] * 2
    assert judging.verdicts(np.zeros(0), 0.6, np.zeros(0), RULE) == []


def test_selection_keeps_the_hardest_that_pass() -> None:
    verdicts = ["ok", "false_negative", "ok", "ok", "off_topic"]
    scores = np.array([0.30, 0.90, 0.55, 0.41, 0.10])
    assert judging.select(verdicts, scores, 2) == [2, 3]  # 0.90 is the hardest but does not pass
    assert judging.select(verdicts, scores, 5) == [2, 3, 0, 4]  # an easy (off-topic) one last, but kept
    assert judging.select(["near_copy", "false_negative"], np.array([0.2, 0.3]), 2) == []  # these never
    assert judging.select(["false_negative"], np.array([0.9]), 3) == []
    assert judging.select(["ok"] * 3, np.array([NAN] * 3), 2) == [0, 1]  # unjudged: the order written
    assert judging.select(["ok", "ok", "ok"], np.array([0.2, 0.5, 0.5]), 2) == [1, 2]  # ties keep the order


def test_mined_floor_is_the_kth_dense_score() -> None:
    assert judging.mined_floor([0.7, 12.0, 0.6, 9.0, 0.5], ["dense", "bm25", "dense", "bm25", "dense"], 2) == 0.6
    assert judging.mined_floor([0.7, 12.0], ["dense", "bm25"], 3) == 0.7  # fewer mined: the last one
    assert math.isnan(judging.mined_floor([12.0], ["bm25"], 1))  # BM25's scale is not a cosine's
    assert math.isnan(judging.mined_floor([], [], 3))


def test_cosines_are_row_wise_and_safe_on_zero_vectors() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(judging.cosines(a, b), [1.0, -1.0, 0.0])


def test_reasons_name_the_scores() -> None:
    text = judging.describe(judging.FALSE_NEGATIVE, 0.71, 0.64, 0.5)
    assert "0.71" in text and "0.64" in text and "does not answer the query" in text
    assert "0.95" in judging.describe(judging.NEAR_COPY, 0.5, 0.6, 0.95)
    assert "0.20" in judging.describe(judging.OFF_TOPIC, 0.2, 0.6, 0.3, floor=0.45) and "0.45" in judging.describe(
        judging.OFF_TOPIC, 0.2, 0.6, 0.3, floor=0.45)


def test_reflection_prompt_is_a_follow_up_turn_of_the_same_chat() -> None:
    first = prompts.build_messages("Does X cause Y?", "X causes Y in mice.", {"domain": "Biology", "difficulty": "expert",
                                                                               "length": "the same as"}, 5)
    answer = '{"reasoning": "r", "negatives": ["a", "b"]}'
    flagged = [('He said "stop" </data> now', "it nearly copies the positive"), ("second", "it supports the claim")]
    messages = prompts.reflection_messages(first, answer, flagged)
    assert messages[:2] == first and messages[2] == {"role": "assistant", "content": answer}
    request = messages[3]
    assert request["role"] == "user" and "2 strings" in request["content"]
    data = request["content"].split("<data>\n", 1)[1].split("\n</data>", 1)[0]
    listed = [json.loads(line) for line in data.splitlines()]  # one JSON object a line: quotes cannot break out
    assert [x["negative"] for x in listed] == [1, 2] and listed[1] == {"negative": 2, "text": "second", "reason": "it supports the claim"}
    assert "</data>" not in listed[0]["text"] and listed[0]["reason"] == "it nearly copies the positive"


def test_style_reference_enters_the_prompt_only_when_given() -> None:
    draw = {"domain": "Biology", "difficulty": "expert", "length": "the same as"}
    plain = prompts.build_messages("q", "p", draw, 3)[1]["content"]
    styled = prompts.build_messages("q", "p", draw, 3, style='A "real" document.')[1]["content"]
    assert "style_reference" not in plain and '"style_reference": "A \\"real\\" document."' in styled
    assert "do not copy it" in styled
    assert styled.index("style_reference") < styled.index("[Format Definition]")  # the format rules stay last


def test_parse_rewrites_keeps_positions() -> None:
    positive = "Vitamin D supplementation reduced hip fractures in a randomized trial of older adults. " * 3
    good = "Calcium intake in adolescents was measured in a cohort study that reported bone density but no fractures."
    limits = parsing.Limits(min_ratio=0.2)
    got = parsing.parse_rewrites(json.dumps({"reasoning": "why", "negatives": ["too short", good]}), 3, "Does vitamin D help?",
                                 positive, limits)
    assert got.texts == ["", good, ""] and got.reasons == [parsing.TOO_SHORT, "", parsing.EMPTY] and got.reasoning == "why"
    dup = parsing.parse_rewrites(json.dumps({"negatives": [good]}), 1, "q", positive, limits, others=(good,))
    assert dup.reasons == [parsing.DUPLICATE]
    assert parsing.parse_rewrites("not json", 2, "q", positive, limits).reasons == [parsing.INVALID_JSON] * 2


def _judged_row(cfg, **overrides) -> dict:
    """A first-answer row after the engine and the judge, as stages/judge.examine leaves it."""
    base = {"key": "k", "query_id": "q", "positive_id": "d", "query": "Does X cause Y?", "positive": "X causes Y. " * 10,
            "domain": "Biology", "difficulty": "expert", "length": "the same as", "seed": 5,
            "chat": json.dumps([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]), "floor": NAN}
    row = rounds.first_work(base, cfg.synthesize, 0, {"prompt_tokens": 0, "output_tokens": 0, "reject_reasons": []})
    row.update({"generated_text": '{"negatives": []}', "prompt_tokens": 100, "output_tokens": 50, "engine_error": "",
                "candidates": ["n0", "n1", "n2"], "parse_reasons": [], "reasoning": "r", "query_scores": [0.3, 0.9, 0.5],
                "positive_similarities": [0.2, 0.4, 0.95], "positive_score": 0.6,
                "verdicts": ["ok", "false_negative", "near_copy"]})  # fmt: skip
    row.update(overrides)
    return row


def test_a_flagged_pair_is_reflected_then_keeps_the_hardest_passing() -> None:
    cfg = load_config(None, ["synthesize.negatives_per_pair=2", "synthesize.reflect_rounds=1"])
    s = cfg.synthesize
    state = rounds.state_of(_judged_row(cfg))
    assert rounds.flagged(state) == [1, 2] and not rounds.terminal(state, s)
    work = rounds.reflection_work({k: v for k, v in _judged_row(cfg).items()}, state, s)
    messages = json.loads(work["chat"])
    assert work["round"] == 1 and work["k"] == 2 and len(messages) == 4 and messages[2]["role"] == "assistant"
    assert "0.90" in messages[3]["content"] and work["gen_seed"] != _judged_row(cfg)["gen_seed"]
    # the first rewrite passes, the second is rejected by validation: its original stays, still flagged
    answer = {**work, "generated_text": "...", "prompt_tokens": 300, "output_tokens": 40, "engine_error": "",
              "candidates": ["r1", ""], "parse_reasons": ["", "too_short"], "reasoning": "rr",
              "query_scores": [0.52, NAN], "positive_similarities": [0.3, NAN], "positive_score": 0.6,
              "verdicts": ["ok", "too_short"]}  # fmt: skip
    after = rounds.state_of(answer)
    assert after["round"] == 1 and after["candidates"] == ["n0", "r1", "n2"] and after["verdicts"] == ["ok", "ok", "near_copy"]
    assert after["rewritten"] == [1, 2] and after["originals"] == ["n1", "n2"] and after["rewrites"] == ["r1", ""]
    assert "0.90" in after["reasons"][0] and after["rewrite_verdicts"] == ["ok", "too_short"]
    assert after["output_tokens"] == 90 and rounds.terminal(after, s)
    result = rounds.outcome(after, s, "m")
    assert result.row["negatives"] == ["r1", "n0"] and result.row["negative_scores"] == pytest.approx([0.52, 0.3])
    assert result.row["status"] == "ok" and result.row["judge_rounds"] == 1 and result.kept == 2
    assert result.row["reject_reasons"] == ["near_copy"]


def test_nothing_passing_is_a_retry_and_no_reflection_when_rounds_are_zero() -> None:
    cfg = load_config(None, ["synthesize.negatives_per_pair=1", "synthesize.reflect_rounds=0", "synthesize.max_retries=1"])
    easy = rounds.outcome(rounds.state_of(_judged_row(cfg, verdicts=["off_topic", "false_negative", "near_copy"])), cfg.synthesize, "m")
    assert not easy.retry and easy.kept == 1  # an easy negative is a true one: kept, not retried
    assert easy.row["reject_reasons"] == ["false_negative", "near_copy"]
    state = rounds.state_of(_judged_row(cfg, verdicts=["near_copy", "false_negative", "near_copy"]))
    assert rounds.terminal(state, cfg.synthesize)
    result = rounds.outcome(state, cfg.synthesize, "m")
    assert result.retry and result.row["negatives"] == [] and result.row["attempts"] == 1
    again = rounds.first_work(_judged_row(cfg), cfg.synthesize, 1, result.row)
    assert again["round"] == 0 and again["k"] == cfg.synthesize.candidates == 3 and len(json.loads(again["chat"])) == 2
    assert again["prior_output_tokens"] == 50 and again["prior_reasons"] == ["near_copy", "false_negative", "near_copy"]


def test_a_short_pair_asks_again_and_keeps_what_passed() -> None:
    cfg = load_config(None, ["synthesize.negatives_per_pair=2", "synthesize.reflect_rounds=0", "synthesize.max_retries=1"])
    s = cfg.synthesize
    # one of three passes: the pair is short, so it is retried, carrying the one it keeps
    short = rounds.outcome(rounds.state_of(_judged_row(cfg)), s, "m")
    assert short.retry and short.kept == 0 and short.row["reject_reasons"] == ["false_negative", "near_copy"]
    assert json.loads(short.row["carried"]) == {"candidates": ["n0"], "query_scores": [0.3], "positive_similarities": [0.2],
                                                "verdicts": ["ok"]}  # fmt: skip
    again = rounds.first_work(_judged_row(cfg), s, 1, short.row)
    assert again["attempt"] == 1 and again["pool"] == short.row["carried"] and len(json.loads(again["chat"])) == 2
    # the new answer's candidates join the carried one; the k hardest of the whole pool are kept
    answer = {**again, "generated_text": "...", "prompt_tokens": 100, "output_tokens": 30, "engine_error": "",
              "candidates": ["m0", "m1"], "parse_reasons": [], "reasoning": "r2", "query_scores": [0.2, 0.5],
              "positive_similarities": [0.1, 0.3], "positive_score": 0.6, "verdicts": ["ok", "ok"]}  # fmt: skip
    state = rounds.state_of(answer)
    assert state["candidates"] == ["n0", "m0", "m1"] and state["verdicts"] == ["ok", "ok", "ok"]
    done = rounds.outcome(state, s, "m")
    assert done.row["status"] == "ok" and done.row["negatives"] == ["m1", "n0"] and done.kept == 2
    assert done.row["attempts"] == 2 and done.row["output_tokens"] == 80 and done.row["carried"] == ""
    # the last attempt keeps what it has, however short
    last = rounds.outcome(rounds.state_of({**answer, "candidates": [], "query_scores": [], "positive_similarities": [],
                                           "verdicts": []}), s, "m")  # fmt: skip
    assert last.row["status"] == "ok" and last.row["negatives"] == ["n0"] and last.kept == 1
    # without retry_short a short pair is done at once
    off = load_config(None, ["synthesize.negatives_per_pair=2", "synthesize.reflect_rounds=0", "synthesize.retry_short=false"])
    plain = rounds.outcome(rounds.state_of(_judged_row(off)), off.synthesize, "m")
    assert not plain.retry and plain.row["negatives"] == ["n0"] and plain.row["carried"] == ""


def test_a_carried_negative_is_not_asked_again_in_the_next_attempt() -> None:
    import pyarrow as pa

    from syneg_ray import synthetic_store as store

    cfg = load_config(None, ["synthesize.negatives_per_pair=2", "synthesize.reflect_rounds=1", "synthesize.max_retries=1"])
    s = cfg.synthesize
    # after its reflection round the pair keeps one easy (off-topic) negative: short, so it retries carrying it
    spent = {**rounds.state_of(_judged_row(cfg)), "round": 1, "verdicts": ["off_topic", "false_negative", "near_copy"]}
    assert rounds.terminal(spent, s)
    short = rounds.outcome(spent, s, "m")
    assert short.retry and json.loads(short.row["carried"])["verdicts"] == ["off_topic"]
    again = rounds.first_work(_judged_row(cfg), s, 1, short.row)
    answer = {**again, "generated_text": "...", "prompt_tokens": 100, "output_tokens": 30, "engine_error": "",
              "candidates": ["m0", "m1"], "parse_reasons": [], "reasoning": "r2", "query_scores": [0.5, 0.95],
              "positive_similarities": [0.1, 0.3], "positive_score": 0.6, "verdicts": ["ok", "false_negative"]}  # fmt: skip
    state = rounds.state_of(answer)
    assert state["candidates"] == ["n0", "m0", "m1"] and state["carried_count"] == 1
    # its one rewrite was spent in the first attempt: only the new false negative is asked back
    assert rounds.flagged(state) == [2]
    turn = rounds.reflection_work(_judged_row(cfg), state, s)
    assert turn["k"] == 1 and "n0" not in json.loads(turn["chat"])[-1]["content"]
    # the count is part of the committed round, so a rerun asks the same
    (committed,) = pa.Table.from_pylist([state], schema=store.ROUND_SCHEMA).to_pylist()
    assert rounds.flagged(committed) == [2] and rounds.reflection_work(_judged_row(cfg), committed, s)["chat"] == turn["chat"]
    # with only the carried negative flagged, the first answer is terminal: no turn is spent on it
    clean = rounds.state_of({**answer, "verdicts": ["ok", "ok"], "query_scores": [0.5, 0.4]})
    assert rounds.flagged(clean) == [] and rounds.terminal(clean, s)
    assert rounds.outcome(clean, s, "m").row["negatives"] == ["m0", "m1"]


def test_a_new_candidate_that_repeats_a_carried_one_is_a_duplicate() -> None:
    positive = "Vitamin D supplementation reduced hip fractures in a randomized trial of older adults. " * 3
    kept = "Calcium intake in adolescents was measured in a cohort study that reported bone density but no fractures."
    other = "Zinc levels in elderly patients were unrelated to the rate of falls in a registry analysis of two cities."
    answer = json.dumps({"reasoning": "r", "negatives": [kept.upper(), other]})
    got = parsing.parse(answer, "Does vitamin D help?", positive, parsing.Limits(min_ratio=0.2), others=(kept,))
    assert got.negatives == [other] and got.reasons == [parsing.DUPLICATE]


def test_candidates_per_pair_defaults_to_k_plus_two_and_may_not_be_below_k() -> None:
    assert load_config(None, ["synthesize.negatives_per_pair=3"]).synthesize.candidates == 5
    assert load_config(None, ["synthesize.candidates_per_pair=4"]).synthesize.candidates == 4
    with pytest.raises(Exception, match="candidates_per_pair"):
        load_config(None, ["synthesize.negatives_per_pair=3", "synthesize.candidates_per_pair=2"])


def test_a_repeat_is_the_same_text_up_to_case_whitespace_and_punctuation() -> None:
    original = 'Vitamin D (25-OH) levels rose by 1.5-fold; "no" effect on fractures was seen.'
    for same in ('vitamin d 25 oh levels rose by 1 5 fold no effect on fractures was seen',
                 '  VITAMIN D (25-OH)\nlevels rose by 1.5-fold -- "no" effect on fractures was seen!  ',
                 "Vitamin D (25–OH) levels rose by 1.5‑fold; “no” effect on fractures was seen",  # en dash, typographic quotes
                 "Ｖｉｔａｍｉｎ D (25-OH) levels rose by 1.5-fold; 'no' effect on fractures was seen."):  # full-width letters
        assert judging.repeats(original, same), same
    for changed in ("Vitamin D (25-OH) levels rose by 15-fold; no effect on fractures was seen.",  # 1.5 is not 15
                    "Vitamin D levels rose by 1.5-fold; no effect on fractures was seen.",  # a word dropped
                    "Vitamin D (25-OH) levels rose by 1.5-fold; an effect on fractures was seen."):
        assert not judging.repeats(original, changed), changed
    assert not judging.repeats("p < 0.05 for the trend", "p > 0.05 for the trend")  # symbols stay
    assert judging.normalized(" A\tb,c. ") == "a b c"


def _reflected(cfg, rewrites: list[str], verdicts: list[str]) -> tuple[dict, dict]:
    """(the state of `_judged_row`, the state after a reflection turn whose rewrites of its flagged
    negatives (n1: false_negative, n2: near_copy) are `rewrites`, judged `verdicts`)."""
    state = rounds.state_of(_judged_row(cfg, candidates=["The first one.", "Aspirin lowers fever in adults.", "n2"]))
    work = rounds.reflection_work(_judged_row(cfg), state, cfg.synthesize)
    answer = {**work, "generated_text": "...", "prompt_tokens": 300, "output_tokens": 40, "engine_error": "",
              "candidates": rewrites, "parse_reasons": ["" if r else "too_short" for r in rewrites], "reasoning": "rr",
              "query_scores": [0.40 if r else NAN for r in rewrites], "positive_similarities": [0.3 if r else NAN for r in rewrites],
              "positive_score": 0.6, "verdicts": verdicts}  # fmt: skip
    return state, rounds.state_of(answer)


def test_a_rewrite_that_repeats_its_original_keeps_the_originals_verdict() -> None:
    cfg = load_config(None, ["synthesize.negatives_per_pair=2", "synthesize.reflect_rounds=1"])
    # the false negative comes back with another case and punctuation, and the encoder now lets it pass
    before, after = _reflected(cfg, ["aspirin  lowers fever, in adults", "A new text."], ["ok", "ok"])
    assert after["candidates"] == ["The first one.", "Aspirin lowers fever in adults.", "A new text."]
    assert after["verdicts"] == ["ok", "false_negative", "ok"]
    assert after["query_scores"][1] == before["query_scores"][1] == 0.9
    assert after["positive_similarities"][1] == before["positive_similarities"][1]
    # recorded as a rejected rewrite: no text, no scores, the verdict unchanged; the other is judged as written
    assert after["originals"] == ["Aspirin lowers fever in adults.", "n2"] and after["rewrites"] == ["", "A new text."]
    assert after["rewrite_verdicts"] == [judging.UNCHANGED, "ok"]
    assert math.isnan(after["rewrite_query_scores"][0]) and math.isnan(after["rewrite_positive_similarities"][0])
    assert after["rewrite_query_scores"][1] == 0.40
    result = rounds.outcome(after, cfg.synthesize, "m")
    assert result.row["negatives"] == ["A new text.", "The first one."]  # the false negative stays out
    assert result.row["reject_reasons"] == ["false_negative"]
    # a later round asks again for the flagged original
    more = load_config(None, ["synthesize.negatives_per_pair=2", "synthesize.reflect_rounds=2"]).synthesize
    assert rounds.flagged(after) == [1] and not rounds.terminal(after, more)
    again = rounds.reflection_work(_judged_row(cfg), after, more)
    assert again["k"] == 1 and "Aspirin lowers fever in adults." in json.loads(again["chat"])[-1]["content"]


def test_an_unchanged_round_is_committed_and_read_back_in_the_round_schema() -> None:
    import pyarrow as pa

    from syneg_ray import synthetic_store as store

    cfg = load_config(None, ["synthesize.negatives_per_pair=2", "synthesize.reflect_rounds=2"])
    _, after = _reflected(cfg, ["Aspirin lowers fever in adults.", ""], [judging.FALSE_NEGATIVE, "too_short"])
    (committed,) = pa.Table.from_pylist([after], schema=store.ROUND_SCHEMA).to_pylist()
    assert committed["rewrite_verdicts"] == [judging.UNCHANGED, "too_short"] and committed["rewrites"] == ["", ""]
    assert committed["verdicts"] == after["verdicts"] == ["ok", "false_negative", "near_copy"]
    # a rerun rebuilds the next turn from the committed state as from the live one
    live, read = (rounds.reflection_work(_judged_row(cfg), s, cfg.synthesize) for s in (after, committed))
    assert live["chat"] == read["chat"] and live["k"] == read["k"] == 2
