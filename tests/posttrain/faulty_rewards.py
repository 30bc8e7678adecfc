"""Reward functions that fail on purpose, imported by the reward workers of the tests (``module:function``)."""

import os
import time


def by_text(completions, **_):
    """1.0 per sample, except: "raise" raises, "hang" hangs, "nan" gives NaN, "die" kills its worker,
    "none" gives None (no reward), "word" gives a string."""
    values = []
    for text in completions:
        if text == "raise":
            raise RuntimeError("this reward raises")
        if text == "hang":
            time.sleep(600)
        if text == "die":
            os._exit(3)
        values.append({"nan": float("nan"), "none": None, "word": "high"}.get(text, 1.0))
    return values


def by_ids(completion_ids, **_):
    """Fails on some responses, as a function of their ids (deterministic): raises when their sum is
    0 mod 23, hangs when 1, NaN when 2; 1.0 for the others."""
    values = []
    for ids in completion_ids:
        kind = sum(ids) % 23
        if kind == 0:
            raise ValueError("a response this reward cannot score")
        if kind == 1:
            time.sleep(600)
        values.append(float("nan") if kind == 2 else 1.0)
    return values


def wrong_length(completions, **_):
    """One value too many."""
    return [1.0] * (len(completions) + 1)
