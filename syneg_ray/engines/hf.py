"""`hf` engine: transformers `generate` in a Ray Data actor pool, with schema-scaffolded decoding.

Small models (SmolLM2-135M) rarely write valid JSON on their own, so the answer's JSON skeleton
is written by us and the model only fills the string fields, one batched `generate` per field:
`{"reasoning": "` -> model text up to a `"` -> `", "negatives": ["` -> ... -> `"]}`. The result
always matches `prompts.json_schema(k)` (constrained decoding by construction); the parser still
validates every negative.

The prompt (instructions plus the positive document: most of the tokens) is encoded once per
batch and its key/value cache is reused by all k + 1 field calls; each call encodes only the
answer written so far. Without that reuse the prompt's prefill dominates the cost on CPUs.

Each row samples from its own generator, seeded by the row's seed and the field, and keeps to its
own token budget. transformers' `generate` would draw every row from one global generator and stop
every row at one budget, so a pair's text would depend on which pairs share its batch, and a
resumed run (whose batches hold only the unfinished pairs) would write other text than an
uninterrupted one. Here a pair writes the same text in any batch, up to float rounding across
padded batch shapes.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from syneg_ray import prompts
from syneg_ray.config import Dtype, SynthesizeConfig
from syneg_ray.engines.base import OUTPUT_SCHEMA, Generation, SamplingSpec, messages_of, with_generation

if TYPE_CHECKING:
    import torch
    from ray.data import Dataset

logger = logging.getLogger(__name__)

_OPEN = '{"reasoning": "'
_AFTER_REASONING = '", "negatives": ["'
_BETWEEN = '", "'
MIN_SHARE = 0.35  # minimum tokens of a negative, as a share of the positive's words


def budgets(max_new_tokens: int, k: int) -> tuple[int, int]:
    """Tokens for the reasoning and for each negative out of the call's total budget."""
    reasoning = max(8, min(prompts.REASONING_TOKENS, max_new_tokens // 4))
    return reasoning, max(8, (max_new_tokens - reasoning) // k)


def hold_tokens(positive_words: int, negative_budget: int) -> int:
    """Tokens a negative must write before it may close: `MIN_SHARE` of the positive's words, less
    what it needs to end a sentence within its budget."""
    return max(0, min(int(MIN_SHARE * positive_words), negative_budget - 16, negative_budget * 7 // 8))


class HFGenerator:
    """A causal LM and its tokenizer, loaded once; `generate` fills the JSON scaffold for a batch."""

    def __init__(self, model: str, dtype: Dtype = Dtype.FP32, threads: int = 0, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from syneg_ray import storage

        model = str(storage.fetch(model))  # a model in a cache in object storage, on a node that lacks it
        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # batched decoding continues every row from its own end
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = torch.bfloat16 if dtype is Dtype.BF16 else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        # transformers 5.2x renamed the key/value cache `past_key_values` -> `cache` (the old name warns on every call)
        self.cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        # ids whose text holds a double quote: generating one closes the current JSON string
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.quote_ids = torch.tensor([i for i, t in enumerate(vocab) if t and '"' in t], device=device)

    def generate(self, batch: list[list[dict[str, str]]], k: int, spec: SamplingSpec, seeds: list[int],
                 positive_words: list[int] | None = None, max_tokens: list[int] | None = None,
                 reuse_prompt_cache: bool = True) -> list[Generation]:
        """Writes one JSON answer (reasoning + `k` negatives) per chat in `batch`.

        Args:
            batch: chat messages per row.
            k: negatives per row.
            spec: sampling settings.
            seeds: per row, the seed of its sampler.
            positive_words: per row, the positive's length in words; a negative may not end before
                `MIN_SHARE` of it (in tokens). None: no minimum.
            max_tokens: per row, the answer's token budget, split across its fields (see `budgets`).
                None: `spec.max_new_tokens` for every row.
            reuse_prompt_cache: encode the prompts once for all fields (False: re-encode per field,
                the reference the cached path is tested against).

        Returns:
            One `Generation` per row, its text a JSON object.
        """
        prompts = [self.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
        prompt = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prompt_tokens = prompt.attention_mask.sum(1).tolist()
        cache = self.prefill(prompt) if reuse_prompt_cache else None
        answers = [_OPEN] * len(batch)  # the JSON written so far, after the prompt
        fields: list[list[str]] = [[] for _ in batch]
        output_tokens = [0] * len(batch)
        row_budgets = [budgets(total, k) for total in (max_tokens or [spec.max_new_tokens] * len(batch))]
        words = positive_words or [0] * len(batch)
        holds = [hold_tokens(w, negative) for w, (_, negative) in zip(words, row_budgets, strict=True)]
        for step in range(k + 1):
            # one generate call per field for the whole batch: rows stop on their own closing quote
            limits = [reasoning if step == 0 else negative for reasoning, negative in row_budgets]
            hold = [min(16, r // 2) for r, _ in row_budgets] if step == 0 else holds
            # a generator per row and field: a row's t-th token is always its field generator's t-th draw
            generators = [self.torch.Generator(self.device).manual_seed(seed * (k + 1) + step) for seed in seeds]
            pieces, counts = self.continue_strings(prompt, cache, answers, limits, spec, hold, generators)
            for i, (piece, count) in enumerate(zip(pieces, counts, strict=True)):
                fields[i].append(piece)
                output_tokens[i] += count
                answers[i] += piece + (_AFTER_REASONING if step == 0 else _BETWEEN)
        return [
            Generation(
                text=json.dumps({"reasoning": f[0], "negatives": f[1:]}, ensure_ascii=False),
                prompt_tokens=pt,
                output_tokens=ot,
            )
            for f, pt, ot in zip(fields, prompt_tokens, output_tokens, strict=True)
        ]

    def complete(self, messages: list[dict[str, str]], prefill: str, max_new_tokens: int) -> str:
        """Free-form greedy continuation of one chat after `prefill` (used to propose domains)."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefill
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return prefill + self.tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)

    def prefill(self, prompt: Any) -> Any:
        """The key/value cache of the left-padded prompt batch."""
        # positions from the mask, as generate computes them: a padded row starts at position 0
        positions = (prompt.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with self.torch.inference_mode():
            out = self.model(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask, position_ids=positions,
                             use_cache=True)
        return getattr(out, self.cache_name)

    def continue_strings(self, prompt: Any, cache: Any, answers: list[str], limits: list[int], spec: SamplingSpec,
                         hold: list[int], generators: list[torch.Generator]) -> tuple[list[str], list[int]]:
        """Continues every prompt + answer until it closes its JSON string (a `"`), EOS or its budget.

        The batch is [prompt, left-padded | answer, left-padded]: the padding in the middle is masked
        and positions follow the mask, so a row reads exactly its own prompt and answer. `cache`
        (the prompt's, from `prefill`) is copied, never extended, so every field starts from it.
        Row i may not close its string (quote or EOS) before `hold[i]` new tokens, keeps at most
        `limits[i]` tokens, and samples with `generators[i]`.
        """
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        torch = self.torch
        quote_ids = self.quote_ids
        banned = torch.cat([quote_ids, torch.tensor([self.tokenizer.eos_token_id, self.tokenizer.pad_token_id], device=self.device)])
        answer = self.tokenizer(answers, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        input_ids = torch.cat([prompt.input_ids, answer.input_ids], dim=1)
        attention_mask = torch.cat([prompt.attention_mask, answer.attention_mask], dim=1)
        start = input_ids.shape[1]
        minimum = torch.tensor(hold, device=self.device)  # (B,)

        class _QuoteClosed(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.isin(input_ids[:, -1], quote_ids)  # (B,) bool: this row just closed its string

        class _HoldOpen(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                rows = (minimum > input_ids.shape[1] - start).nonzero().squeeze(1)  # rows still too short
                if rows.numel():
                    scores[rows.unsqueeze(1), banned.unsqueeze(0)] = -float("inf")
                return scores

        prompt_width, pad, penalty = prompt.input_ids.shape[1], self.tokenizer.pad_token_id, spec.presence_penalty

        class _Presence(LogitsProcessor):  # OpenAI's presence_penalty over the answer's tokens, never the prompt's
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, input_ids[:, prompt_width:], True)
                seen[:, pad] = False  # the answer's left padding
                return scores - penalty * seen

        # what transformers' own sampling applies: the model's top-k (0 turns it off), else 50
        top_k = 50 if self.model.generation_config.top_k is None else self.model.generation_config.top_k

        class _SampleEachRow(LogitsProcessor):  # draws every row's next token from its own generator, once per step
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                picks = sample_rows(scores, generators, spec.temperature, top_k, spec.top_p)
                return torch.full_like(scores, -float("inf")).scatter_(1, picks, 0.0)  # greedy then takes the pick

        processors = [_HoldOpen(), *([_Presence()] if penalty else []), *([_SampleEachRow()] if spec.temperature > 0 else [])]
        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **{self.cache_name: copy.deepcopy(cache) if cache is not None else None},
                max_new_tokens=max(limits),
                stopping_criteria=StoppingCriteriaList([_QuoteClosed()]),
                logits_processor=LogitsProcessorList(processors),
                pad_token_id=pad,
                do_sample=False,
            )
        new = out[:, start:]  # (B, generated)
        pieces, counts = [], []
        for row, limit in zip(new.tolist(), limits, strict=True):
            # finished rows are padded to the batch's length: count what was actually generated
            end = len(row)
            while end and row[end - 1] == pad:
                end -= 1
            counts.append(min(limit, end + (1 if end < len(row) else 0)))  # + the EOS/pad that ended the row
            text = self.tokenizer.decode(row[:min(end, limit)], skip_special_tokens=True)  # a row keeps its own budget
            pieces.append(text.split('"', 1)[0].rstrip("\\").strip())
        return pieces, counts


def sample_rows(scores: torch.Tensor, generators: list[torch.Generator], temperature: float, top_k: int,
                top_p: float) -> torch.Tensor:
    """One token per row of `scores` (B, V), drawn with the row's own generator after temperature,
    top-k and top-p (nucleus) filtering, in transformers' order. Returns (B, 1) token ids."""
    import torch

    logits = scores / temperature
    # only the top-k candidates can be drawn: sorting k of them instead of the vocabulary is most of the step's cost
    values, ids = torch.topk(logits, top_k, dim=1) if 0 < top_k < logits.shape[1] else torch.sort(logits, dim=1, descending=True)
    probs = torch.softmax(values, dim=1)
    if top_p < 1.0:
        drop = probs.cumsum(1) - probs >= top_p  # the more likely candidates already hold top_p of the mass
        drop[:, 0] = False  # the most likely token always stays
        probs = probs.masked_fill(drop, 0.0)
    picks = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)])
    return ids.gather(1, picks)


class HFGenerateUDF:
    """Ray Data callable class: one model per actor; a batch of prompt rows in, generation columns out."""

    def __init__(self, model: str, dtype: str, threads: int, device: str, spec: dict[str, Any]) -> None:
        self.generator = HFGenerator(model, Dtype(dtype), threads, device)
        self.spec = SamplingSpec(**spec)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()  # plain Python values: list columns stay lists, not numpy object arrays
        out: list[dict[str, Any]] = [{} for _ in rows]
        # one generate per k: the scaffold writes k fields for every row of a call, and a reflection
        # row asks for as many rewrites as it has flagged negatives
        for k in sorted({int(r["k"]) for r in rows}):
            group = [i for i, r in enumerate(rows) if int(r["k"]) == k]
            part = [rows[i] for i in group]
            gens = self.generator.generate([messages_of(r) for r in part], k, self.spec, [int(r["gen_seed"]) for r in part],
                                           [len(str(r["positive"]).split()) for r in part], [int(r["max_tokens"]) for r in part])
            for i, g in zip(group, gens, strict=True):
                out[i] = with_generation(rows[i], g)
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)


def threads_for(cfg: SynthesizeConfig) -> int:
    """Torch threads per actor: the configured value, else the cores shared by the replicas
    (runtime.shared_cores: this machine's, at most the smallest node's)."""
    from syneg_ray.runtime import shared_cores

    return cfg.hf.threads_per_replica or shared_cores(cfg.replicas)


def build(cfg: SynthesizeConfig, model: str) -> Any:
    """The `hf` engine step: `ds.map_batches(HFGenerateUDF)` on a fixed pool of `cfg.replicas` actors."""
    import ray.data

    spec = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "presence_penalty": cfg.presence_penalty}
    device = "cuda" if cfg.gpus_per_replica > 0 else "cpu"

    def step(ds: Dataset) -> Dataset:
        return ds.map_batches(
            HFGenerateUDF,
            fn_constructor_kwargs={"model": model, "dtype": cfg.dtype.value, "threads": threads_for(cfg), "device": device, "spec": spec},
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
            num_cpus=cfg.cpus_per_replica,
            num_gpus=cfg.gpus_per_replica,
        )

    return step
