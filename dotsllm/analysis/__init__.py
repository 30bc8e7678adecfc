"""Training diagnostics: the loss-deceleration fit and the zero-sum-learning metrics (arXiv 2506.05447)."""
