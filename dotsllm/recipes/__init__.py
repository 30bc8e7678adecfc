"""The recipes the trainer runs, one file each: a config class and a :class:`~dotsllm.training.spec.TrainSpec`.

- :mod:`.pretrain`: the dots.llm1 pretraining recipe on Megatron token shards (WSD, batch ramp);
- :mod:`.sft`: supervised fine-tuning on the dots chat template (packed rows, cosine learning rate);
- :mod:`.grpo`: GRPO with verifiable rewards from a checkpoint (rollouts on the training layout).
"""
