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


def wrong_length(completions, **_):
    """One value too many."""
    return [1.0] * (len(completions) + 1)


def by_field(fault, **_):
    """Fails on the samples of prompt records with a ``fault`` field: "raise", "hang" or "nan"; 1.0 elsewhere."""
    values = []
    for kind in fault:
        if kind == "raise":
            raise RuntimeError("a record this reward cannot score")
        if kind == "hang":
            time.sleep(600)
        values.append(float("nan") if kind == "nan" else 1.0)
    return values


def parity(completion_ids, **_):
    """1.0 for responses whose ids sum to an odd number: a reward that varies within a group."""
    return [float(sum(ids) % 2) for ids in completion_ids]
