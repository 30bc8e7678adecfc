"""GRPO on the megatron-core MoE: rollout, rewards, advantages, losses and the trainer."""
