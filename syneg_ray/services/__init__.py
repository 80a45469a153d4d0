"""Ray Data services the stages share: encoding on actor pools (`embed`), search over corpus shards
with a top-k merge (`sharded_search`) and the judge that scores an LLM's negatives as they are
written (`judge`)."""
