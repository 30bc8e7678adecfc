"""Training components: optimizer setup, the train step, schedules, data, checkpoints, metrics."""
