"""One pair's way through synthesis: first answer -> judged pool -> reflection turns -> kept negatives.

Pure: no Ray, no model. A *state* (a `synthetic_store.ROUND_SCHEMA` row) is the pair's candidate
pool after a round was judged. From a state follows, with no generation, either the next work row
(a reflection turn asking the LLM to rewrite the flagged negatives) or the pair's outcome (the k
hardest passing negatives, or a retry with a new seed that keeps what passed, or a failure). The
stage commits each state before what follows from it, and a rerun rebuilds what follows from the
last committed state with these same functions, so a killed run loses no round and asks for none twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from syneg_ray import judging, prompts
from syneg_ray.config import SynthesizeConfig

ENGINE_ERROR = "engine_error"  # reject reason of a request the engine answered with an error
STATE_FIELDS = ("key", "query_id", "positive_id", "domain", "difficulty", "length", "seed")  # copied from the work row
POOL_LISTS = ("candidates", "query_scores", "positive_similarities", "verdicts")  # one entry per candidate of a pool


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def flagged(state: dict[str, Any]) -> list[int]:
    """Indices of the pool's candidates the judge did not pass, in pool order (the order they are asked back).

    The candidates carried from an earlier attempt (the pool's first `carried_count` ones) are never asked:
    they come from a terminal state, so a flagged one among them already had its `reflect_rounds` rewrites.
    """
    settled = int(state.get("carried_count") or 0)  # null in rounds committed before the column existed
    return [i for i, v in enumerate(state["verdicts"]) if v != judging.OK and i >= settled]


def reason_of(state: dict[str, Any], i: int) -> str:
    """The words the LLM reads for flagged candidate `i`."""
    return judging.describe(state["verdicts"][i], _nan(state["query_scores"][i]), _nan(state["positive_score"]),
                            _nan(state["positive_similarities"][i]), _nan(state["floor"]))


def carried_of(row: dict[str, Any]) -> dict[str, list]:
    """The candidates a first-answer work row carries from its pair's earlier attempt (`synthesize.retry_short`):
    its `pool` column, empty lists when there are none."""
    return json.loads(row["pool"]) if row.get("pool") else {name: [] for name in POOL_LISTS}


def first_state(row: dict[str, Any]) -> dict[str, Any]:
    """The state after a first answer: the candidates carried from the earlier attempt (if any), then
    the answer's valid candidates, with their scores and verdicts.

    Args:
        row: a work row after the engine and the judge (`examine`) columns.
    """
    carried = carried_of(row)
    return {
        **{name: row[name] for name in STATE_FIELDS}, "attempt": int(row["attempt"]), "round": 0,
        "chat": row["chat"], "answer": row.get("generated_text") or "", "reasoning": row["reasoning"],
        **{name: [*carried[name], *row[name]] for name in POOL_LISTS}, "carried_count": len(carried["candidates"]),
        "positive_score": row["positive_score"], "floor": row["floor"],
        "prompt_tokens": int(row["prior_prompt_tokens"]) + int(row["prompt_tokens"]),
        "output_tokens": int(row["prior_output_tokens"]) + int(row["output_tokens"]),
        "reject_reasons": [*row["prior_reasons"], *row["parse_reasons"]],
        "rewritten": [], "originals": [], "reasons": [], "rewrites": [], "rewrite_query_scores": [],
        "rewrite_positive_similarities": [], "rewrite_verdicts": [],
    }  # fmt: skip


def reflected_state(row: dict[str, Any]) -> dict[str, Any]:
    """The state after a reflection turn: the previous pool (`row["pool"]`) with each valid rewrite in
    its original's place, and the round's record (original, reason, rewrite, scores, verdict).

    A rewrite that repeats its original (`judging.repeats`) is not one: the original stays with its
    verdict, and the record holds it as a rejected rewrite (no text, no scores) with the verdict
    `judging.UNCHANGED`, the way a rewrite validation rejected holds its parse reason.
    """
    prev = json.loads(row["pool"])
    state = {**prev, "round": int(row["round"]), "chat": row["chat"], "answer": row.get("generated_text") or "",
             "prompt_tokens": int(prev["prompt_tokens"]) + int(row["prompt_tokens"]),
             "output_tokens": int(prev["output_tokens"]) + int(row["output_tokens"])}  # fmt: skip
    for name in POOL_LISTS:
        state[name] = list(prev[name])
    asked = flagged(prev)
    state["rewritten"], state["originals"], state["reasons"] = asked, [prev["candidates"][i] for i in asked], [reason_of(prev, i) for i in asked]
    state["rewrites"] = list(row["candidates"])
    state["rewrite_query_scores"], state["rewrite_positive_similarities"] = list(row["query_scores"]), list(row["positive_similarities"])
    state["rewrite_verdicts"] = list(row["verdicts"])
    for j, i in enumerate(asked):
        if row["candidates"][j] and judging.repeats(prev["candidates"][i], row["candidates"][j]):
            state["rewrites"][j], state["rewrite_verdicts"][j] = "", judging.UNCHANGED
            state["rewrite_query_scores"][j] = state["rewrite_positive_similarities"][j] = math.nan
        elif row["candidates"][j]:  # a valid rewrite replaces its original, whatever its verdict
            state["candidates"][i] = row["candidates"][j]
            state["query_scores"][i] = row["query_scores"][j]
            state["positive_similarities"][i] = row["positive_similarities"][j]
            state["verdicts"][i] = row["verdicts"][j]
    return state


def state_of(row: dict[str, Any]) -> dict[str, Any]:
    """The state a judged work row leads to (first answer or reflection turn)."""
    return first_state(row) if int(row["round"]) == 0 else reflected_state(row)


def terminal(state: dict[str, Any], s: SynthesizeConfig) -> bool:
    """Whether the pair's outcome follows from `state`: nothing is flagged, or no reflection round is left."""
    return not flagged(state) or int(state["round"]) >= s.reflect_rounds or not state["candidates"]


@dataclass(frozen=True)
class Outcome:
    """What follows from a terminal state: the output row (status ok, failed or retry)."""

    row: dict[str, Any]
    kept: int  # negatives kept

    @property
    def retry(self) -> bool:
        return self.row["status"] == "retry"


def outcome(state: dict[str, Any], s: SynthesizeConfig, model: str) -> Outcome:
    """The SyntheticRow of a terminal state: the k hardest candidates the judge lets keep (`judging.select`).

    While `max_retries` allows, a pair with no keepable candidate is retried with a new seed, and
    with `retry_short` so is a pair with fewer than k: the retry row's `carried` holds the kept ones, which
    the next attempt's pool starts from. Otherwise the pair is ok with what it keeps, or failed with
    nothing. The verdicts of the candidates not kept join the reject reasons.
    """
    keep = judging.select(state["verdicts"], state["query_scores"], s.negatives_per_pair)
    attempts = int(state["attempt"]) + 1
    again = attempts <= s.max_retries and (not keep or (s.retry_short and len(keep) < s.negatives_per_pair))
    status = "retry" if again else ("ok" if keep else "failed")
    row = {
        **{name: state[name] for name in STATE_FIELDS}, "negatives": [state["candidates"][i] for i in keep],
        "reasoning": state["reasoning"], "model": model, "engine": s.engine.value, "prompt_version": prompts.PROMPT_VERSION,
        "attempts": attempts, "prompt_tokens": int(state["prompt_tokens"]), "output_tokens": int(state["output_tokens"]),
        "status": status, "reject_reasons": [*state["reject_reasons"], *(v for i, v in enumerate(state["verdicts"]) if v != judging.OK and i not in keep)],
        "negative_scores": [_nan(state["query_scores"][i]) for i in keep], "positive_score": _nan(state["positive_score"]),
        "judge_rounds": int(state["round"]),
        "carried": json.dumps({name: [state[name][i] for i in keep] for name in POOL_LISTS}) if again and keep else "",
    }  # fmt: skip
    return Outcome(row, 0 if again else len(keep))


def first_work(base: dict[str, Any], s: SynthesizeConfig, attempt: int, prior: dict[str, Any]) -> dict[str, Any]:
    """The work row of a pair's first answer in `attempt` (a new seed per attempt).

    Args:
        base: the pair's work columns; its chat's first two messages are the first request.
        s: the synthesize section.
        attempt: 0-based attempt.
        prior: prompt_tokens, output_tokens and reject_reasons of the earlier attempts, and the
            candidates they kept (`carried`, JSON; absent or empty: none), which go in the row's `pool`.
    """
    first = json.loads(base["chat"])[:2]  # [system, user]: a reflection chat starts with them too
    return {
        **base, "attempt": attempt, "round": 0, "pool": prior.get("carried") or "", "gen_seed": prompts.attempt_seed(int(base["seed"]), attempt),
        "k": s.candidates, "max_tokens": prompts.answer_budget(s.max_new_tokens, s.candidates, len(base["positive"].split())),
        "chat": json.dumps(first), "prior_prompt_tokens": int(prior["prompt_tokens"]),
        "prior_output_tokens": int(prior["output_tokens"]), "prior_reasons": list(prior["reject_reasons"]),
    }  # fmt: skip


def reflection_work(base: dict[str, Any], state: dict[str, Any], s: SynthesizeConfig) -> dict[str, Any]:
    """The work row of the next reflection turn: the state's chat, its answer, and the flagged negatives with reasons."""
    asked = flagged(state)
    messages = prompts.reflection_messages(json.loads(state["chat"]), state["answer"],
                                           [(state["candidates"][i], reason_of(state, i)) for i in asked])
    round_ = int(state["round"]) + 1
    return {
        **base, "attempt": int(state["attempt"]), "round": round_, "pool": json.dumps(state),
        "gen_seed": prompts.attempt_seed(int(state["seed"]), int(state["attempt"]), round_), "k": len(asked),
        "max_tokens": prompts.answer_budget(s.max_new_tokens, len(asked), len(base["positive"].split())),
        "chat": json.dumps(messages), "prior_prompt_tokens": int(state["prompt_tokens"]),
        "prior_output_tokens": int(state["output_tokens"]), "prior_reasons": list(state["reject_reasons"]),
    }  # fmt: skip
