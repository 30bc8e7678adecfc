"""Stage 4: exact dedup on the MD5 of the normalized text; the decisions come from `DedupIndex`."""

import hashlib

from data_pipeline.text import normalize_for_exact_dedup


def exact_hash(text: str) -> str:
    return hashlib.md5(normalize_for_exact_dedup(text).encode()).hexdigest()

