"""Run configs and presets: typed overrides, unsupported layouts refused, presets shipped in the wheel."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dotsllm.model import Dots1ModelConfig

from dotsllm.parallel import ParallelConfig
from dotsllm.recipes.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "dots1-tiny.yaml"


def test_model_overrides_are_coerced_to_the_field_type():
    """YAML reads `1e-3` (no dot) as a string; the model config must still get a float."""
    config = PretrainConfig.load(TINY, ["model_overrides.moe_aux_loss_coeff=1e-3", "model_overrides.num_layers=6"])
    model = Dots1ModelConfig.from_preset(config.model, **config.model_overrides)
    assert model.moe_aux_loss_coeff == 1e-3 and isinstance(model.moe_aux_loss_coeff, float)
    assert model.num_layers == 6 and isinstance(model.num_layers, int)
    with pytest.raises(ValueError, match=r"unknown model config field\(s\) \['moe_aux_loss_coef'\]"):
        Dots1ModelConfig.from_preset("dots1-tiny", **{"moe_aux_loss_coef": 1e-3})
    with pytest.raises(ValueError, match=r"moe_aux_loss_coeff: expected a float, got 'lots'"):
        Dots1ModelConfig.from_preset("dots1-tiny", moe_aux_loss_coeff="lots")


def test_unknown_run_config_key_is_named():
    with pytest.raises(ValueError, match=r"training: unknown key\(s\) \['seq_lenght'\]"):
        PretrainConfig.load(TINY, ["training.seq_lenght=64"])


def test_context_parallelism_is_refused():
    with pytest.raises(ValueError, match=r"context parallelism \(cp=2\) is not supported"):
        PretrainConfig.load(TINY, ["parallel.cp=2"])
    assert ParallelConfig(cp=1).cp == 1


def test_presets_ship_in_the_wheel(tmp_path):
    """A non-editable install finds the presets: they are package data, not files of the checkout."""
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("dotsllm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {f"dotsllm/model/presets/{p.name}" for p in (REPO / "dotsllm/model/presets").glob("*.yaml")}
    assert len(presets) == 4 and presets <= names
