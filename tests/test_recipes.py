"""Recipes are specs the one trainer composes: their model source follows one rule, the learning rate has
one source, and no recipe subclasses the trainer."""

import dataclasses
import json

import pytest

from dotsllm.model import Dots1ModelConfig
from dotsllm.recipes.grpo import GRPO, GRPOConfig
from dotsllm.recipes.pretrain import PRETRAIN, PretrainConfig
from dotsllm.recipes.sft import SFT, SFTConfig
from dotsllm.train import Trainer
from dotsllm.training.checkpoint import META_FILE
from dotsllm.training.checkpoint_state import CheckpointMeta
from dotsllm.training.config import RunConfig
from dotsllm.training.spec import run_model_config
from pretrain_runs import TINY_CONFIG

CONFIGS = TINY_CONFIG.parents[1]


def checkpoint_of(path, cfg: Dots1ModelConfig):
    path.mkdir(parents=True)
    meta = CheckpointMeta(kind="imported", step=0, tokens_seen=0, model=dataclasses.asdict(cfg), trainer="import")
    (path / META_FILE).write_text(json.dumps({**meta.as_dict(), "name": path.name}))
    return path


def test_the_model_is_the_checkpoints_and_a_conflicting_preset_is_an_error(tmp_path):
    tiny = Dots1ModelConfig.from_preset("dots1-tiny")
    trained = dataclasses.replace(tiny, name="my-run", moe_aux_loss_coeff=1e-2)  # a checkpoint of other training settings
    start = checkpoint_of(tmp_path / "ckpt", trained)
    fresh = RunConfig(run_dir="r", model="dots1-tiny")
    assert run_model_config(fresh, None) == tiny
    assert run_model_config(RunConfig(run_dir="r"), start) == trained  # no preset: the checkpoint's
    assert run_model_config(fresh, start) == trained  # the same architecture: the checkpoint's, name and all
    overridden = RunConfig(run_dir="r", model="dots1-tiny", model_overrides={"moe_aux_loss_coeff": 0})
    assert run_model_config(overridden, start) == dataclasses.replace(trained, moe_aux_loss_coeff=0.0)
    with pytest.raises(ValueError, match=r"model: preset 'dots1-small' is not the architecture of checkpoint .*ckpt "
                                         r"\(num_layers: 12 vs 4; hidden_size: 768 vs 128; .*\): leave `model` out"):  # fmt: skip
        run_model_config(RunConfig(run_dir="r", model="dots1-small"), start)
    with pytest.raises(ValueError, match=r"model: name a preset"):
        run_model_config(RunConfig(run_dir="r"), None)


def test_grpo_keeps_the_checkpoints_architecture_with_its_router_settings(tmp_path):
    tiny = Dots1ModelConfig.from_preset("dots1-tiny")
    start = checkpoint_of(tmp_path / "ckpt", tiny)
    config = GRPOConfig.load(CONFIGS / "grpo" / "dots1-tiny.yaml", ["moe.aux_loss_coeff=0"])
    built = GRPO.build_model_config(config, start)
    assert built == dataclasses.replace(tiny, moe_router_bias_update_rate=0.0, moe_aux_loss_coeff=0.0)


def test_the_learning_rate_has_one_source():
    for config_class, path in ((PretrainConfig, "pretrain"), (SFTConfig, "sft")):
        with pytest.raises(ValueError, match=r"optimizer\.lr: the learning rate lives in the schedule: set lr_schedule\.peak_lr"):
            config_class.load(CONFIGS / path / "dots1-tiny.yaml", ["optimizer.lr=1e-3"])
    with pytest.raises(ValueError, match=r"optimizer\.min_lr: the learning rate lives in the schedule"):
        GRPOConfig.load(CONFIGS / "grpo" / "dots1-tiny.yaml", ["optimizer.min_lr=0"])
    config = PretrainConfig.load(TINY_CONFIG, ["lr_schedule.peak_lr=1e-3", "lr_schedule.warmup_steps=2"])
    assert config.lr_schedule.lr(1, 0) == 1e-3  # the end of warmup: the peak given on the command line


def test_no_trainer_subclass_and_one_spec_per_recipe():
    assert Trainer.__subclasses__() == []
    assert [spec.name for spec in (PRETRAIN, SFT, GRPO)] == ["pretrain", "sft", "grpo"]
    assert all(issubclass(spec.config, RunConfig) for spec in (PRETRAIN, SFT, GRPO))
