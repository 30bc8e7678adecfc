"""Rewards a working policy gradient drives up within a few steps, from a model that starts at random
(imported by the reward workers of the `learns` tests as ``module:function``)."""


def share_below(completion_ids, below, **_):
    """The share of a completion's tokens whose id is below ``below``."""
    return [sum(t < below for t in ids) / len(ids) if ids else 0.0 for ids in completion_ids]
