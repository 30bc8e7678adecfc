"""Supervised fine-tuning: records → conversations (:mod:`.formats`) → packed rows (:mod:`.packing`,
:mod:`.data`) → :class:`~dotsllm.posttrain.sft.trainer.SFTTrainer`."""
