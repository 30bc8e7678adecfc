"""dots.llm1 data pipeline on datatrove: web text → filtered, deduplicated Megatron token shards."""
