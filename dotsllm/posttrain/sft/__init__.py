"""Supervised fine-tuning: records → conversations (:mod:`.formats`) → packed rows (:mod:`.packing`,
:mod:`.data`) → the SFT recipe (:mod:`dotsllm.recipes.sft`)."""
