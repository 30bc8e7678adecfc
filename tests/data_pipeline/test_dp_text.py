"""Normalization, word splitting and MinHash: exact properties and estimates within their error."""

import random

import numpy as np
import pytest
from dp_planted import jaccard

from data_pipeline.sample import generate as g
from data_pipeline.steps.exact_dedup import exact_hash
from data_pipeline.steps.line_dedup import edge_lines
from data_pipeline.steps.minhash import MinhashConfig, MinhashHasher
from data_pipeline.text import normalize_for_exact_dedup, split_words


def test_exact_dedup_normalization_ignores_case_punctuation_whitespace_and_composition():
    assert normalize_for_exact_dedup("Hello,   World!\n\tCafé.") == "hello world cafe\u0301"
    assert exact_hash("Hello,   World! Café.") == exact_hash("hello world  CAFE\u0301")
    assert exact_hash("hello world") != exact_hash("hello word")


def test_words_split_latin_by_regex_and_chinese_with_jieba():
    assert split_words("It's 3 o'clock, Bob.") == ["It", "s", "3", "o", "clock", "Bob"]
    words = split_words("我们在公园里散步。Then we left")
    assert words[-3:] == ["Then", "we", "left"]
    assert "".join(words[:-3]) == "我们在公园里散步" and len(words) > 3  # segmented, nothing lost


def test_edge_lines_are_the_first_and_last_five_non_blank_lines():
    text = "\n".join(f"line {i}" if i != 3 else "  " for i in range(14))
    assert [pos for pos, _ in edge_lines(text, 5)] == [0, 1, 2, 4, 5, 9, 10, 11, 12, 13]
    assert edge_lines("a\nb", 5)[0][1] == edge_lines(" a ", 5)[0][1]  # hashed after strip


@pytest.mark.parametrize("every", [6, 9, 20, 75])
def test_signature_agreement_estimates_the_shingle_jaccard(every):
    rng = random.Random(every)
    a = g.english_doc(rng)
    b = g.edit_words(a, rng, every)
    hasher = MinhashHasher(MinhashConfig())
    sa, sb = (hasher.signature(hasher.shingles(t)) for t in (a, b))
    estimate = float(np.mean(sa == sb))
    assert abs(estimate - jaccard(a, b)) < 0.05  # 2048 rows: standard error ≤ 0.011


def test_signature_is_the_min_over_shingles_of_each_universal_hash():
    hasher = MinhashHasher(MinhashConfig())
    shingles = hasher.shingles(g.english_doc(random.Random(5)))
    expected = (shingles[:, None].astype(np.uint64) * hasher.a + hasher.b) % (1 << 32)  # (shingles, rows)
    assert np.array_equal(hasher.signature(shingles), expected.min(axis=0).astype(np.uint32))
    assert np.all(hasher.signature(shingles[:0]) == 0xFFFFFFFF)


def test_band_hashes_match_for_identical_text_and_not_for_far_text():
    rng = random.Random(3)
    hasher = MinhashHasher(MinhashConfig())
    a, far = g.english_doc(rng), g.english_doc(rng)
    bands = lambda t: hasher.band_hashes(hasher.signature(hasher.shingles(t)))  # noqa: E731
    assert bands(a).shape == (128,)
    assert np.array_equal(bands(a), bands(a.upper()))  # shingles are lowercased words
    assert not np.any(bands(a) == bands(far))


def test_short_and_empty_texts():
    hasher = MinhashHasher(MinhashConfig())
    assert len(hasher.shingles("one two")) == 1  # fewer words than n: one shingle
    assert len(hasher.shingles("... !!!")) == 0
