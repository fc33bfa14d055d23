"""Every shipped training config loads, names a registered layout, and builds its model."""

from pathlib import Path

import pytest

from landcover.engine.models import create_model
from landcover.training.config import load_config
from landcover.training.datasets import LAYOUTS

CONFIGS = sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml"))


def test_there_is_a_config_per_model_family():
    names = {load_config(path)["model"]["name"] for path in CONFIGS}
    assert names >= {"unetmamba", "unetmamba_enhanced", "ammunet", "unetformer", "ammfusenet",
                     "upseg"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds_its_model(path):
    config = load_config(path)
    assert config["data"]["layout"] in LAYOUTS
    options = config["model"]["options"]
    in_channels = sum(options.get("modality_channels") or [3])
    model = create_model(config["model"]["name"], num_classes=6, in_channels=in_channels,
                         aux_head=False, **options)
    assert model.in_channels == in_channels
