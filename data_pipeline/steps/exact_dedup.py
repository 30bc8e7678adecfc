"""Stage 4: exact dedup on the MD5 of the normalized text; the decisions come from the dedup index."""

import hashlib

from data_pipeline.text import normalize_for_exact_dedup


def exact_hash(text: str) -> bytes:
    """The 16-byte MD5 digest of `text` after dots.llm1's exact-dedup normalization."""
    return hashlib.md5(normalize_for_exact_dedup(text).encode()).digest()
