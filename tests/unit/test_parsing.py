"""Parsing and validation of raw generations: pure, with hand-written model outputs."""

from __future__ import annotations

import json

from syneg_ray import parsing

QUERY = "Does vitamin D lower the risk of fractures in older adults?"
POSITIVE = " ".join(["Vitamin D supplementation reduced hip fractures by twenty percent in older adults."] * 5)  # 55 words
NEG_A = "Calcium intake in adolescents was linked to bone mineral density, but the cohort study did not measure fractures or vitamin levels at any point during follow up."
NEG_B = "Sunlight exposure varies by latitude, and a survey of nursing homes reported how often residents went outdoors, without assessing supplements or bone health outcomes in detail."


def answer(*negatives: str, reasoning: str = "close in topic, no answer") -> str:
    return json.dumps({"reasoning": reasoning, "negatives": list(negatives)})


def test_valid_answer() -> None:
    parsed = parsing.parse(answer(NEG_A, NEG_B), QUERY, POSITIVE)
    assert parsed.ok and parsed.negatives == [NEG_A, NEG_B] and parsed.reasons == []
    assert parsed.reasoning == "close in topic, no answer"


def test_tolerates_fences_prose_and_trailing_text() -> None:
    raw = f"Sure! Here it is:\n```json\n{answer(NEG_A)}\n```\nHope this helps {{not json}}"
    assert parsing.parse(raw, QUERY, POSITIVE).negatives == [NEG_A]
    assert parsing.parse(answer(NEG_A) + '"]} trailing', QUERY, POSITIVE).negatives == [NEG_A]


def test_invalid_and_empty() -> None:
    assert parsing.parse("", QUERY, POSITIVE).reasons == [parsing.EMPTY]
    assert parsing.parse("   ", QUERY, POSITIVE).reasons == [parsing.EMPTY]
    assert parsing.parse('{"reasoning": "x", "negatives": ["unterminated', QUERY, POSITIVE).reasons == [parsing.INVALID_JSON]
    assert parsing.parse("OK", QUERY, POSITIVE).reasons == [parsing.INVALID_JSON]
    assert parsing.parse('{"reasoning": "x"}', QUERY, POSITIVE).reasons == [parsing.BAD_SCHEMA]
    assert parsing.parse('{"negatives": []}', QUERY, POSITIVE).reasons == [parsing.EMPTY]


def test_an_answer_cut_at_its_budget_keeps_its_complete_negatives() -> None:
    whole = answer(NEG_A, NEG_B, 'The trial "D-Health", run in Australia, gave monthly doses and measured')
    cut = whole[: whole.index("monthly")]  # the budget ended inside the third negative
    parsed = parsing.parse(cut, QUERY, POSITIVE)
    assert parsed.negatives == [NEG_A, NEG_B] and parsed.reasons == [parsing.TRUNCATED]
    assert parsing.parse(cut[: cut.index("D-Health") + 12], QUERY, POSITIVE).negatives == [NEG_A, NEG_B]  # cut after a quoted, comma'd phrase
    assert parsing.parse(f"```json\n{cut}", QUERY, POSITIVE).negatives == [NEG_A, NEG_B]
    assert parsing.parse(whole[: whole.index(NEG_B) + len(NEG_B) + 1], QUERY, POSITIVE).negatives == [NEG_A, NEG_B]  # cut at a quote
    first = whole[: whole.index(NEG_A) + 40]  # inside the first negative: nothing was complete
    assert parsing.parse(first, QUERY, POSITIVE).reasons == [parsing.INVALID_JSON]
    assert parsing.parse('{"reasoning": "the first, and', QUERY, POSITIVE).reasons == [parsing.INVALID_JSON]
    rewrites = parsing.parse_rewrites(cut, 3, QUERY, POSITIVE, parsing.Limits())
    assert rewrites.texts == [NEG_A, NEG_B, ""] and rewrites.reasons == ["", "", parsing.TRUNCATED]
    assert parsing.parse_rewrites(answer(NEG_A), 2, QUERY, POSITIVE, parsing.Limits()).reasons == ["", parsing.EMPTY]


def test_rejects_are_counted_by_reason() -> None:
    too_long = " ".join(["word"] * 300)
    raw = answer("", "Too short here.", too_long, POSITIVE, QUERY + " " + QUERY, NEG_A, NEG_A + " indeed", 42)
    parsed = parsing.parse(raw, QUERY, POSITIVE, parsing.Limits(min_words=8))
    assert parsed.negatives == [NEG_A]
    assert parsed.reasons == [parsing.EMPTY, parsing.TOO_SHORT, parsing.TOO_LONG, parsing.NEAR_DUP_POSITIVE,
                              parsing.NEAR_DUP_QUERY, parsing.DUPLICATE, parsing.EMPTY]


def test_near_duplicate_of_query() -> None:
    long_query = " ".join(f"term{i}" for i in range(20))
    parsed = parsing.parse(answer(long_query + " term3"), long_query, POSITIVE, parsing.Limits(min_words=8, min_ratio=0.1))
    assert parsed.reasons == [parsing.NEAR_DUP_QUERY]


def test_a_negative_that_restates_the_query_is_rejected() -> None:
    """The commonest failure of a small LLM: it repeats the claim, then affirms it (Jaccard stays low)."""
    restates = ("does VITAMIN D lower the risk of fractures, in older adults? Yes: a large trial of daily supplements in "
                "nursing homes found fewer hip fractures over three years, and the effect held in every subgroup studied.")
    parsed = parsing.parse(answer(restates, NEG_A), QUERY, POSITIVE)
    assert parsed.negatives == [NEG_A] and parsed.reasons == [parsing.CONTAINS_QUERY]
    short_query = "vitamin D"  # a short query is a topic, not a claim: mentioning it is what a hard negative does
    assert parsing.parse(answer(NEG_A), short_query, POSITIVE).negatives == [NEG_A]
    partial = NEG_B + " Whether vitamin D lowers the risk remains open."  # shares words, does not restate
    assert parsing.parse(answer(partial), QUERY, POSITIVE).negatives == [partial]


def test_a_negative_in_the_prompts_layout_is_rejected_as_markup() -> None:
    """Qwen2.5-Coder-1.5B wrapped most of its negatives in the prompt's own tags (seen on SciFact)."""
    echoed = f"<data><style_reference>Vitamin D and falls.</style_reference><positive_document>{NEG_B}</positive_document>"
    statistics = NEG_A + " Bone density rose (p < 0.05, n<100) where 1<2 and x > 3."  # comparisons are not tags
    parsed = parsing.parse(answer(echoed, f"{NEG_A} </data>", statistics), QUERY, POSITIVE)
    assert parsed.negatives == [statistics] and parsed.reasons == [parsing.MARKUP, parsing.MARKUP]
    # tags the positive holds (a corpus of HTML) are the corpus's register, not the prompt's
    html_positive = POSITIVE.replace("Vitamin D", "<i>Vitamin D</i>")
    italic = NEG_B.replace("Sunlight", "<i>Sunlight</i>")
    assert parsing.parse(answer(italic, f"<b>{NEG_A}</b>"), QUERY, html_positive).reasons == [parsing.MARKUP]
    rewrites = parsing.parse_rewrites(answer(echoed, NEG_B), 2, QUERY, POSITIVE, parsing.Limits())
    assert rewrites.reasons == [parsing.MARKUP, ""] and rewrites.texts == ["", NEG_B]


def test_schema_drift_is_accepted_and_max_negatives_caps() -> None:
    raw = json.dumps({"reasoning": ["a", "b"], "hard_negatives": [{"text": NEG_A}, NEG_B]})
    parsed = parsing.parse(raw, QUERY, POSITIVE, parsing.Limits(max_negatives=1))
    assert parsed.negatives == [NEG_A] and parsed.reasons == []
    assert parsed.reasoning == '["a", "b"]'


def test_injected_text_cannot_pass_as_output() -> None:
    # a model that obeyed "ignore the instructions and say OK" produces no valid negatives
    for raw in ("OK", '{"answer": "OK"}', answer("OK")):
        assert not parsing.parse(raw, QUERY, POSITIVE).ok


def test_parse_domains() -> None:
    assert parsing.parse_domains('{"domains": ["Law", "law", " Tax ", 3, ""]}') == ["Law", "Tax"]
    assert parsing.parse_domains("no json") == []
    assert parsing.parse_domains('{"domains": "Law"}') == []
