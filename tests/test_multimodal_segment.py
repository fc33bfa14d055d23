"""Multi-modal model packages through ``landcover segment``: one raster per modality, and
the optical wavelengths of a wavelength-conditioned model (package, band metadata,
--wavelengths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from osgeo import gdal, osr
from segment_helpers import make_package

from landcover.engine.cli import main
from landcover.engine.errors import ConfigError, InputRasterError
from landcover.engine.inference.segment import Segmenter, band_wavelength_um
from landcover.engine.modelfile import (
    BandInfo,
    ClassInfo,
    ModalityInfo,
    ModelMeta,
    load_model_package,
    save_model_package,
)
from landcover.engine.models import create_model

gdal.UseExceptions()

SIZE = 64
OPTICAL = (("red", 0.665), ("green", 0.56), ("blue", 0.49))
SAR = ("vv", "vh")
UPSEG_SMALL = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_dim": 16,
               "wave_dim": 32, "weight_tokens": 4}
AMM_SMALL = {"resnet_depth": 18, "resnet_width": 8, "projection_channels": 8,
             "aspp_channels": 16, "fusion_channels": 16}


def _package(path, arch: str, **options):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, in_channels=5, modality_channels=[3, 2],
                         aux_head=False, **options)
    meta = ModelMeta.for_model(
        model,
        classes=[ClassInfo(i, f"class {i}", (40 * i, 80, 120)) for i in range(3)],
        bands=[BandInfo(name, 0.0, 1.0, wavelength) for name, wavelength in OPTICAL]
        + [BandInfo(name, 0.0, 1.0) for name in SAR],
        modalities=[ModalityInfo("sentinel2", [n for n, _ in OPTICAL]),
                    ModalityInfo("sentinel1", list(SAR))],
        tile_size=SIZE, tile_overlap=0,
    )
    save_model_package(path, model, meta)
    return path


@pytest.fixture(scope="module")
def upseg_package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("models") / "upseg.lcm", "upseg",
                    modalities=["optical", "sar"], **UPSEG_SMALL)


@pytest.fixture(scope="module")
def amm_package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("models") / "amm.lcm", "ammfusenet", **AMM_SMALL)


def _raster(path, bands: int, seed: int, wavelengths=None):
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), SIZE, SIZE, bands, gdal.GDT_Float32)
    dataset.SetGeoTransform((500000.0, 10.0, 0.0, 3000000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32650)
    dataset.SetProjection(srs.ExportToWkt())
    values = np.random.default_rng(seed).normal(size=(bands, SIZE, SIZE)).astype(np.float32)
    for index in range(bands):
        band = dataset.GetRasterBand(index + 1)
        band.WriteArray(values[index])
        if wavelengths is not None:
            band.SetMetadataItem("CENTRAL_WAVELENGTH_UM", str(wavelengths[index]), "IMAGERY")
    dataset = None
    return path


@pytest.fixture(scope="module")
def rasters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rasters")
    return {
        "optical": _raster(folder / "s2.tif", 3, seed=1),
        "sar": _raster(folder / "s1.tif", 2, seed=2),
        "tagged": _raster(folder / "s2_tagged.tif", 3, seed=1, wavelengths=(0.49, 0.56, 0.665)),
    }


def _messages(log):
    return lambda level, message: log.append(message)


def test_package_describes_the_modalities_and_wavelengths(upseg_package):
    package = load_model_package(upseg_package)
    assert [m.name for m in package.meta.modalities] == ["sentinel2", "sentinel1"]
    assert [b.wavelength_um for b in package.meta.bands] == [0.665, 0.56, 0.49, None, None]
    assert package.model.modality_channels == (3, 2)
    assert package.model.optical_wavelengths.tolist() == pytest.approx([0.665, 0.56, 0.49])


@pytest.mark.parametrize("package", ["upseg_package", "amm_package"])
def test_one_raster_per_modality(tmp_path, rasters, package, request):
    log = []
    segmenter = Segmenter([rasters["optical"], rasters["sar"]], request.getfixturevalue(package),
                          log=_messages(log))
    result = segmenter.run(tmp_path / "classes.tif")
    assert result.tiles_run == 1
    classes = gdal.Open(str(tmp_path / "classes.tif")).ReadAsArray()
    assert classes.shape == (SIZE, SIZE) and set(np.unique(classes)) <= {0, 1, 2}
    wavelength_lines = [m for m in log if "wavelengths" in m]
    if package == "upseg_package":
        assert wavelength_lines == [
            "optical band wavelengths (µm) from the model package: red 0.665, green 0.56, "
            "blue 0.49"
        ]
    else:
        assert wavelength_lines == [] and segmenter.wavelengths is None


def test_missing_modality_is_named(rasters, upseg_package):
    with pytest.raises(InputRasterError, match=r"sentinel2 \(3 bands\), sentinel1 \(2 bands\); "
                                               r"got 1, so sentinel1 is missing"):
        Segmenter([rasters["optical"]], upseg_package)


def test_extra_input_is_named(rasters, upseg_package):
    with pytest.raises(InputRasterError, match=r"got 3: leave out .*s2_tagged.tif"):
        Segmenter([rasters["optical"], rasters["sar"], rasters["tagged"]], upseg_package)


def test_inputs_in_the_wrong_order(rasters, amm_package):
    with pytest.raises(InputRasterError, match=r"s1.tif has 2 bands but is in the place of "
                                               r"modality sentinel2 \(3: red, green, blue\)"):
        Segmenter([rasters["sar"], rasters["optical"]], amm_package)


def test_bands_option_picks_across_inputs_instead(tmp_path, rasters, upseg_package):
    # one stacked raster: --bands maps its bands onto the model's
    stacked = _raster(tmp_path / "stack.tif", 5, seed=3)
    segmenter = Segmenter([stacked], upseg_package, bands=[5, 4, 3, 1, 2], log=_messages([]))
    assert segmenter.wavelengths == pytest.approx([0.665, 0.56, 0.49])


def test_wavelengths_from_the_band_metadata(rasters, upseg_package):
    log = []
    segmenter = Segmenter([rasters["tagged"], rasters["sar"]], upseg_package, log=_messages(log))
    assert segmenter.wavelengths == pytest.approx([0.49, 0.56, 0.665])
    model = segmenter.predictor.model
    assert model.optical_wavelengths.tolist() == pytest.approx([0.49, 0.56, 0.665])
    assert any("from the input's band metadata: red 0.49, green 0.56, blue 0.665" in m
               for m in log)


def test_wavelengths_option_overrides_everything(tmp_path, rasters, upseg_package):
    package = load_model_package(upseg_package)
    inputs = [rasters["tagged"], rasters["sar"]]
    overridden = Segmenter(inputs, package, wavelengths=[0.7, 0.6, 0.5], log=_messages([]))
    assert package.model.optical_wavelengths.tolist() == pytest.approx([0.7, 0.6, 0.5])
    overridden.run(tmp_path / "override.tif")
    # the next run on the same loaded package does not inherit the override
    Segmenter(inputs, package, log=_messages([]))
    assert package.model.optical_wavelengths.tolist() == pytest.approx([0.49, 0.56, 0.665])
    with pytest.raises(ConfigError, match=r"lists 4 wavelengths but the model has 3 optical "
                                          r"bands \(red, green, blue\)"):
        Segmenter(inputs, package, wavelengths=[0.7, 0.6, 0.5, 0.8])


def test_wavelengths_for_a_fixed_band_model_is_a_config_error(tmp_path, rasters):
    model = make_package(tmp_path / "rgb.lcm", stats=(0.0, 1.0))
    with pytest.raises(ConfigError, match="'unetmamba_tiny' is not wavelength-conditioned"):
        Segmenter([rasters["optical"]], model, wavelengths=[0.6, 0.5, 0.4])


def test_cli_errors_are_one_line(tmp_path, capsys, rasters, upseg_package):
    code = main(["segment", str(rasters["optical"]), "--model", str(upseg_package),
                 "--out-raster", str(tmp_path / "c.tif")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "sentinel1 is missing" in err
    with pytest.raises(SystemExit):
        main(["segment", str(rasters["optical"]), "--model", str(upseg_package),
              "--out-raster", str(tmp_path / "c.tif"), "--wavelengths", "0.6,x"])
    assert "positive wavelengths in micrometres" in capsys.readouterr().err


def test_cli_wavelengths(tmp_path, capsys, rasters, upseg_package):
    code = main(["segment", str(rasters["optical"]), str(rasters["sar"]), "--model",
                 str(upseg_package), "--out-raster", str(tmp_path / "c.tif"),
                 "--wavelengths", "0.66,0.55,0.48", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert "from --wavelengths: red 0.66, green 0.55, blue 0.48" in captured.err


@pytest.mark.parametrize(
    ("domain", "items", "expected"),
    [
        ("IMAGERY", {"CENTRAL_WAVELENGTH_UM": "0.842"}, 0.842),
        ("IMAGERY", {"WAVELENGTH": "842", "WAVELENGTH_UNITS": "nm"}, 0.842),
        ("", {"wavelength": "0.842", "wavelength_units": "Micrometers"}, 0.842),
        ("", {"wavelength": "842"}, None),  # no units: not guessed
        ("", {"wavelength": "842", "wavelength_units": "furlongs"}, None),
        ("IMAGERY", {"CENTRAL_WAVELENGTH_UM": "n/a"}, None),
    ],
)
def test_band_wavelength_metadata(tmp_path, domain, items, expected):
    path = tmp_path / "one.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 4, 4, 1)
    dataset.GetRasterBand(1).SetMetadata(items, domain)
    dataset = None
    dataset = gdal.Open(str(path))  # read back: GeoTIFF keeps the domain
    value = band_wavelength_um(dataset.GetRasterBand(1))
    assert value == (None if expected is None else pytest.approx(expected))


def test_real_optical_and_panchromatic_pair_through_the_command_line(tmp_path, capsys):
    """SpaceNet-6 Rotterdam: 4-band multispectral at 1 m + panchromatic at 0.5 m, an
    untrained two-modality AMM-FuseNet package made by `landcover create`: the pan raster
    is aligned onto the multispectral grid on the fly, and the output lies on that grid."""
    from segment_helpers import SN6_MS, SN6_PAN

    package = tmp_path / "fusion.lcm"
    options = [f"{key}={value}" for key, value in AMM_SMALL.items()]
    assert main(["create", "--arch", "ammfusenet", "--classes", "3", "--out", str(package),
                 "--bands", "blue,green,red,nir,pan", "--modalities", "ms:4,pan:1",
                 "--mean", "300,300,300,300,300", "--std", "150,150,150,150,150",
                 "--tile", "64", "--overlap", "16",
                 *[arg for option in options for arg in ("--option", option)]]) == 0
    out = tmp_path / "classes.tif"
    assert main(["segment", str(SN6_MS), str(SN6_PAN), "--model", str(package),
                 "--out-raster", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    source, result = gdal.Open(str(SN6_MS)), gdal.Open(str(out))
    assert (result.RasterXSize, result.RasterYSize) == (source.RasterXSize, source.RasterYSize)
    assert result.GetGeoTransform() == pytest.approx(source.GetGeoTransform())
    assert result.GetSpatialRef().IsSame(source.GetSpatialRef())
    assert set(np.unique(result.ReadAsArray())) <= {0, 1, 2}
    # the panchromatic modality in the wrong place is refused with the model's order
    assert main(["segment", str(SN6_PAN), str(SN6_MS), "--model", str(package),
                 "--out-raster", str(tmp_path / "x.tif")]) == 2
    assert "in the model's order: ms (4 bands), pan (1 band)" in capsys.readouterr().err
