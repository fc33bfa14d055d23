"""Test-time augmentation "d4_plus": 13 passes (d4, scales, brightness), each mapped back
onto the tile."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from osgeo import gdal
from segment_helpers import NAIP, make_package

from landcover.engine.commands import segment as segment_command
from landcover.engine.errors import ConfigError
from landcover.engine.inference.predictor import TTA_TRANSFORMS, Predictor, TtaPass
from landcover.engine.inference.segment import segment
from landcover.engine.modelfile import load_model_package

gdal.UseExceptions()

MEAN = (100.0, 50.0, 10.0)
STD = (20.0, 10.0, 5.0)
CPU = torch.device("cpu")


class RawRatio(torch.nn.Module):
    """Logits = each band's raw value over its tile mean: blind to brightness, and
    equivariant to the square's symmetries; records the raw values it is given."""

    input_multiple = 32

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x * torch.tensor(STD).view(1, -1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1)
        self.seen.append(raw.clone())
        return 4.0 * raw / raw.mean(dim=(-2, -1), keepdim=True)


def _predictor(model: torch.nn.Module, tta: str = "d4_plus") -> Predictor:
    return Predictor(model, CPU, batch_size=4, tta=tta, band_mean=MEAN, band_std=STD)


def _normalise(raw: np.ndarray) -> np.ndarray:
    mean = np.asarray(MEAN, np.float32)[:, None, None]
    std = np.asarray(STD, np.float32)[:, None, None]
    return ((raw - mean) / std).astype(np.float32)


def _random_tiles(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw (2, 3, size, size) values in [20, 250) and their normalised form."""
    raw = np.random.default_rng(seed).uniform(20, 250, (2, 3, size, size)).astype(np.float32)
    return raw, _normalise(raw)


def _single_pass(model: torch.nn.Module, tta_pass: TtaPass, tiles: np.ndarray) -> np.ndarray:
    predictor = _predictor(model)
    with torch.inference_mode():
        return predictor._run_pass(torch.from_numpy(tiles), tta_pass).numpy()


def test_d4_plus_is_the_union_of_13_passes():
    passes = TTA_TRANSFORMS["d4_plus"]
    assert len(passes) == 13 and len(set(passes)) == 13
    assert set(TTA_TRANSFORMS["d4"]) <= set(passes)
    extra = [p for p in passes if p not in TTA_TRANSFORMS["d4"]]
    assert extra == [TtaPass(scale=0.75), TtaPass(scale=1.25), TtaPass(scale=1.5),
                     TtaPass(brightness=0.9), TtaPass(brightness=1.1)]
    assert _predictor(RawRatio()).passes_per_tile == 13


def test_pass_sizes_round_to_the_input_multiple():
    model = RawRatio()
    _predictor(model).predict(_random_tiles()[1])
    sizes = [tuple(raw.shape[-2:]) for raw in model.seen]
    assert sizes == [(128, 128)] * 8 + [(96, 96), (160, 160), (192, 192)] + [(128, 128)] * 2
    predictor = _predictor(model)
    # 75 -> 64, 120 -> 128, 24 -> at least 32, 48 (a tie) -> 64
    assert [predictor._scaled_side(side, scale) for side, scale in
            ((100, 0.75), (96, 1.25), (32, 0.75), (64, 0.75))] == [64, 128, 32, 64]


def test_geometric_and_brightness_passes_map_back_exactly():
    tiles = _random_tiles()[1]
    reference = _single_pass(RawRatio(), TtaPass(), tiles)
    for tta_pass in TTA_TRANSFORMS["d4_plus"]:
        if tta_pass.scale == 1.0:
            np.testing.assert_allclose(_single_pass(RawRatio(), tta_pass, tiles), reference,
                                       rtol=1e-5, atol=1e-6, err_msg=str(tta_pass))
    averaged = _predictor(RawRatio(), "d4").predict(tiles)
    np.testing.assert_allclose(averaged, reference, rtol=1e-5, atol=1e-6)


def test_scale_passes_map_back_onto_the_tile():
    # a constant tile comes back exactly; a smooth ramp (left to right) nearly, and a pass
    # restored the wrong way round (transposed) would be far off
    constant = _normalise(np.full((1, 3, 128, 128), 120.0, np.float32))
    ramp = np.broadcast_to(np.linspace(40.0, 240.0, 128, dtype=np.float32), (128, 128))
    raw = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 140.0)])[None]
    smooth = _normalise(raw)
    for scale in (0.75, 1.25, 1.5):
        tta_pass = TtaPass(scale=scale)
        np.testing.assert_allclose(_single_pass(RawRatio(), tta_pass, constant),
                                   _single_pass(RawRatio(), TtaPass(), constant), atol=1e-6)
        reference = _single_pass(RawRatio(), TtaPass(), smooth)
        scaled = _single_pass(RawRatio(), tta_pass, smooth)
        assert np.abs(scaled - reference)[..., 2:-2].max() < 1e-3, scale
        assert np.abs(scaled - reference).max() < 5e-3, scale
        transposed = np.swapaxes(scaled, -1, -2)
        assert np.abs(transposed - reference).max() > 0.1


def test_brightness_passes_scale_the_raw_values():
    raw, tiles = _random_tiles()
    model = RawRatio()
    _predictor(model).predict(tiles)
    identity_pass, darker, brighter = model.seen[0], model.seen[11], model.seen[12]
    expected = torch.from_numpy(raw)
    torch.testing.assert_close(identity_pass, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(darker, 0.9 * expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(brighter, 1.1 * expected, rtol=1e-5, atol=1e-3)


def test_brightness_needs_the_band_statistics():
    with pytest.raises(ConfigError, match="mean and std"):
        Predictor(RawRatio(), CPU, batch_size=1, tta="d4_plus")
    Predictor(RawRatio(), CPU, batch_size=1, tta="d4")  # geometric TTA does without


def test_segment_option_accepts_d4_plus():
    parser = argparse.ArgumentParser()
    segment_command.add_arguments(parser)
    args = parser.parse_args(["in.tif", "--model", "m.lcm", "--out-raster", "c.tif",
                              "--tta", "d4_plus"])
    assert args.tta == "d4_plus"


def test_segment_runs_13_passes_per_tile(tmp_path):
    raster = tmp_path / "naip_small.tif"
    gdal.Translate(str(raster), str(NAIP), srcWin=[100, 100, 96, 96], bandList=[1, 2, 3])
    package = load_model_package(make_package(tmp_path / "rgb.lcm"))
    seen = []
    package.model.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    messages = []
    result = segment(raster, package, tmp_path / "c.tif", tta="d4_plus", tile=64, overlap=0,
                     log=lambda level, message: messages.append(message))
    assert result.passes_per_tile == 13
    assert sum(shape[0] for shape in seen) == result.tiles_run * 13
    assert {tuple(shape[-2:]) for shape in seen} == {(64, 64), (96, 96)}  # 0.75, 1.25 -> 64
    assert "TTA d4_plus: 13 forward passes per tile" in messages


def test_the_command_line_and_the_plugin_offer_every_tta_mode():
    from landcover.engine.commands.options import TTA_MODES
    from landcover.plugin.segment_algorithm import TTA_MODES as PLUGIN_TTA_MODES

    assert TTA_MODES == PLUGIN_TTA_MODES == tuple(TTA_TRANSFORMS)
