"""``predict_array``: whole-image probabilities through segment's tiling and blending."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from osgeo import gdal
from segment_helpers import NAIP, STATS, make_package, read_band

from landcover.engine.errors import ConfigError
from landcover.engine.inference.array import predict_array
from landcover.engine.inference.predictor import Predictor
from landcover.engine.inference.segment import segment
from landcover.engine.modelfile import load_model_package

gdal.UseExceptions()
CLASSES = 4


@pytest.fixture(scope="module")
def package_path(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("models") / "rgb.lcm", num_classes=CLASSES)


@pytest.fixture(scope="module")
def model(package_path):
    return load_model_package(package_path).model


def _predictor(model, batch_size=1):
    # Batch size 1 by default: the untrained model's float32 outputs move by ~1e-3 with the
    # batch size (rounding amplified; float64 agrees to 1e-11), and the references here
    # are single forward passes.
    return Predictor(model, torch.device("cpu"), batch_size=batch_size)


def _image(height, width, seed=0):
    return np.random.default_rng(seed).standard_normal((3, height, width)).astype(np.float32)


def _forward(model, image):
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(image)[None]), dim=1)[0].numpy()


def test_an_image_of_one_tile_is_one_forward_pass(model):
    image = _image(128, 128)
    probabilities = predict_array(_predictor(model), image, tile=128, overlap=32)
    assert probabilities.dtype == np.float32 and probabilities.shape == (CLASSES, 128, 128)
    np.testing.assert_allclose(probabilities, _forward(model, image), atol=1e-6)


def test_a_smaller_image_is_padded_by_reflection_to_the_model_multiple(model):
    image = _image(50, 70)
    probabilities = predict_array(_predictor(model), image, tile=128, overlap=32)
    assert probabilities.shape == (CLASSES, 50, 70)
    padded = np.pad(image, ((0, 0), (0, 64 - 50), (0, 96 - 70)), mode="reflect")
    np.testing.assert_allclose(probabilities, _forward(model, padded)[:, :50, :70], atol=1e-6)


def test_a_larger_image_blends_its_tiles(model):
    image = _image(200, 300)
    probabilities = predict_array(_predictor(model), image, tile=128, overlap=32)
    assert probabilities.shape == (CLASSES, 200, 300)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    # Tiles start every 96 px; pixels that only the first tile covers are its own output,
    first = _forward(model, image[:, :128, :128])
    np.testing.assert_allclose(probabilities[:, :96, :96], first[:, :96, :96], atol=1e-6)
    # and where it overlaps its right neighbour the blend lies between the two.
    second = _forward(model, image[:, :128, 96:224])
    overlap = probabilities[:, :96, 96:128]
    low = np.minimum(first[:, :96, 96:], second[:, :96, :32])
    high = np.maximum(first[:, :96, 96:], second[:, :96, :32])
    assert (overlap >= low - 1e-6).all() and (overlap <= high + 1e-6).all()
    assert not np.allclose(overlap, first[:, :96, 96:], atol=1e-4)  # really blended


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 40), (33, 129), (257, 95)])
def test_any_shape_gives_probabilities_that_sum_to_one(model, height, width):
    probabilities = predict_array(_predictor(model), _image(height, width), tile=64, overlap=16)
    assert probabilities.shape == (CLASSES, height, width)
    assert np.isfinite(probabilities).all() and (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_the_batch_size_does_not_change_the_result(model):
    image = _image(160, 224, seed=1)
    one = predict_array(_predictor(model, 1), image, tile=64, overlap=16)
    many = predict_array(_predictor(model, 5), image, tile=64, overlap=16)
    # Tiles in the wrong place or order would move probabilities by ~0.1.
    np.testing.assert_allclose(one, many, atol=5e-3)


def test_classes_agree_with_segment_on_a_real_raster(tmp_path, package_path, model):
    out = tmp_path / "classes.tif"
    segment(NAIP, package_path, out, tile=128, overlap=32, bands=[1, 2, 3], device="cpu",
            log=lambda level, message: None)
    mean, std = STATS["uint8"]
    image = (gdal.Open(str(NAIP)).ReadAsArray()[:3].astype(np.float32) - mean) / std
    probabilities = predict_array(_predictor(model, 4), image, tile=128, overlap=32)
    agree = (probabilities.argmax(axis=0) == read_band(out)).mean()
    assert agree > 0.9999  # only near-ties may flip (batch composition changes rounding)


@pytest.mark.parametrize(("tile", "overlap"), [(100, 10), (128, 65)])
def test_bad_tile_or_overlap_is_a_config_error(model, tile, overlap):
    with pytest.raises(ConfigError):
        predict_array(_predictor(model), _image(64, 64), tile=tile, overlap=overlap)


def test_a_batch_of_images_is_refused(model):
    with pytest.raises(ConfigError, match="one image"):
        predict_array(_predictor(model), np.zeros((2, 3, 64, 64), np.float32), tile=64,
                      overlap=0)
