"""Post-training: the dots chat template and its loss masks (:mod:`.chat`), SFT (:mod:`.sft`), GRPO (:mod:`.grpo`)."""
