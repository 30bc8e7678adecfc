"""Post-training: SFT and GRPO on the dots1 model."""
