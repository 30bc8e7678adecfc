"""Analyses of a run's metrics: the loss-deceleration fit (arXiv 2506.05447); the zero-sum-learning
metrics are measured while training (:mod:`dotsllm.training.zero_sum`)."""
