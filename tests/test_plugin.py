"""The QGIS plugin in a real, headless QGIS (pytest-qgis) with the real engine.

The engine runs as the plugin runs it: a child process of this venv's Python, with an
untrained tiny model package, on small real rasters from tests/data (see its README).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import processing
import pytest
from osgeo import gdal
from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterRasterLayer,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandGrayRenderer,
    QgsVectorLayer,
)

from landcover.plugin import segment_algorithm, settings
from landcover.plugin.plugin import LandCoverPlugin

gdal.UseExceptions()

ALGORITHM = "landcover:segmentlandcover"
DATA = Path(__file__).parent / "data"
# Landsat 7 RGB uint8, 256 x 256, EPSG:32618, nodata 0 with a black collar.
SCENE = DATA / "rgb_byte_collar.tif"
# NAIP R, G, B, NIR: one band more than an RGB model takes.
FOUR_BANDS = DATA / "naip_4band.tif"
LOVEDA_CLASSES = ["background", "building", "road", "water", "barren", "forest", "agriculture"]
LOVEDA_COLORS = [
    (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255),
    (159, 129, 183), (0, 255, 0), (255, 195, 128),
]
# Small tiles keep the tiny model fast on 2 cores; GSD native: the scene is 300 m, the
# LoveDA preset 0.3 m, and resampling 1000x is not what these tests are about.
FAST = {"TILE_SIZE": 64, "OVERLAP": 16, "BATCH_SIZE": 4, "DEVICE": "cpu", "GSD": "native"}


# ------------------------------------------------------------------------ fixtures


def _engine(*arguments: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "landcover.engine.cli", *arguments],
        check=True, capture_output=True, text=True,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny_loveda.lcm"
    _engine("create", "--arch", "unetmamba_tiny", "--classes", "loveda", "--out", str(path),
            "--tile", "64", "--overlap", "16", "--seed", "0")
    return path


def _crop(target: Path, x: int, y: int, size: tuple[int, int], source: Path = SCENE) -> Path:
    gdal.Translate(str(target), str(source), srcWin=[x, y, *size])
    return target


@pytest.fixture(scope="session")
def rgb_crop(tmp_path_factory) -> Path:
    """160 x 128 pixels of the scene, with part of its no-data collar."""
    return _crop(tmp_path_factory.mktemp("rasters") / "crop.tif", 0, 64, (160, 128))


@pytest.fixture(scope="session")
def small_crop(tmp_path_factory) -> Path:
    """96 x 64 pixels: a few tiles, for tests about the plumbing rather than the outputs."""
    return _crop(tmp_path_factory.mktemp("rasters") / "small.tif", 96, 96, (96, 64))


@pytest.fixture
def engine_python(monkeypatch):
    """The engine runs with this venv's Python (as setup.sh records it)."""
    monkeypatch.setenv(settings.ENGINE_PYTHON_ENV, sys.executable)


@pytest.fixture
def provider(qgis_processing, engine_python):
    plugin = LandCoverPlugin(None)
    plugin.initProcessing()
    yield plugin.provider
    plugin.unload()


def _run(parameters: dict, feedback: QgsProcessingFeedback | None = None, **kwargs) -> dict:
    return processing.run(ALGORITHM, {**FAST, **parameters}, feedback=feedback, **kwargs)


def _grid(path: Path | str) -> tuple:
    dataset = gdal.Open(str(path))
    try:
        crs = dataset.GetSpatialRef()
        return (
            dataset.RasterXSize, dataset.RasterYSize,
            tuple(round(v, 6) for v in dataset.GetGeoTransform()),
            None if crs is None else crs.GetAuthorityCode(None),
        )
    finally:
        dataset = None


def _palette(layer: QgsRasterLayer) -> list[tuple[int, str, tuple[int, int, int]]]:
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    return [
        (int(c.value), c.label, (c.color.red(), c.color.green(), c.color.blue()))
        for c in renderer.classes()
    ]


def _categories(layer: QgsVectorLayer) -> list[tuple[int, str, tuple[int, int, int]]]:
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    return [
        (int(c.value()), c.label(), c.symbol().color().getRgb()[:3])
        for c in renderer.categories()
    ]


EXPECTED_STYLE = [
    (i, name, color)
    for i, (name, color) in enumerate(zip(LOVEDA_CLASSES, LOVEDA_COLORS, strict=True))
]


# ------------------------------------------------------------------------ the provider


def test_provider_registers_and_unregisters(qgis_processing):
    registry = QgsApplication.processingRegistry()
    plugin = LandCoverPlugin(None)
    plugin.initProcessing()
    try:
        provider = registry.providerById("landcover")
        assert provider is not None and provider.name() == "Land cover"
        algorithm = registry.algorithmById(ALGORITHM)
        assert algorithm.displayName() == "Segment land cover"
        assert "model" in algorithm.shortHelpString().lower()
        assert not algorithm.icon().isNull()
        assert registry.algorithmById("landcover:setupengine") is not None
        names = [p.name() for p in algorithm.parameterDefinitions()]
        for name in ("INPUT", "EXTRA_INPUTS", "MODEL", "DEVICE", "TILE_SIZE", "OVERLAP",
                     "BATCH_SIZE", "TTA", "NODATA", "GSD", "SIMPLIFY", "MIN_AREA",
                     "OUTPUT_RASTER", "OUTPUT_VECTOR", "OUTPUT_CONFIDENCE", "OUTPUT_AREAS"):
            assert name in names
        from processing.core.ProcessingConfig import ProcessingConfig

        assert settings.ENGINE_PYTHON_SETTING in ProcessingConfig.settings
    finally:
        plugin.unload()
    assert registry.providerById("landcover") is None
    assert registry.algorithmById(ALGORITHM) is None
    assert settings.ENGINE_PYTHON_SETTING not in ProcessingConfig.settings


def test_plugin_imports_no_engine_and_no_torch():
    code = (
        "import sys, json\n"
        "import landcover.plugin.plugin, landcover.plugin.provider\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    modules = json.loads(out.splitlines()[-1])
    heavy = [m for m in modules if m.split(".")[0] in {"torch", "numba", "rasterio", "lightning"}]
    assert heavy == []
    assert not [m for m in modules if m.startswith(("landcover.engine", "landcover.training"))]


# ------------------------------------------------------------------------ segmenting


def test_segment_outputs_line_up_and_are_styled(provider, tiny_model, rgb_crop, tmp_path):
    """One run as the toolbox makes it: outputs to load into the project."""
    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    to_load = {
        key: QgsProcessingOutputLayerDefinition(str(tmp_path / name), project)
        for key, name in (("OUTPUT_RASTER", "classes.tif"), ("OUTPUT_VECTOR", "classes.gpkg"))
    }
    result = _run({
        "INPUT": str(rgb_crop),
        "MODEL": str(tiny_model),
        **to_load,
        "OUTPUT_CONFIDENCE": str(tmp_path / "confidence.tif"),
        "OUTPUT_AREAS": str(tmp_path / "areas.gpkg"),
    }, context=context)
    for key, name in (("OUTPUT_RASTER", "classes.tif"), ("OUTPUT_VECTOR", "classes.gpkg"),
                      ("OUTPUT_CONFIDENCE", "confidence.tif")):
        assert Path(result[key]) == tmp_path / name and (tmp_path / name).is_file()
    assert _grid(tmp_path / "classes.tif") == _grid(rgb_crop)
    assert _grid(tmp_path / "confidence.tif") == _grid(rgb_crop)

    # The files carry their styles: QGIS loads them as default styles.
    assert (tmp_path / "classes.qml").is_file()
    raster = QgsRasterLayer(str(tmp_path / "classes.tif"), "classes")
    assert _palette(raster) == EXPECTED_STYLE
    vector = QgsVectorLayer(str(tmp_path / "classes.gpkg"), "polygons")
    assert vector.isValid() and vector.featureCount() > 0
    assert _categories(vector) == EXPECTED_STYLE

    # Layers Processing loads get the style from the post-processor (in the main thread);
    # here on layers opened without their default styles (and a grey raster renderer).
    raster_options = QgsRasterLayer.LayerOptions(loadDefaultStyle=False)
    vector_options = QgsVectorLayer.LayerOptions(loadDefaultStyle=False)
    raster = QgsRasterLayer(str(tmp_path / "classes.tif"), "classes", "gdal", raster_options)
    vector = QgsVectorLayer(str(tmp_path / "classes.gpkg"), "polygons", "ogr", vector_options)
    raster.setRenderer(QgsSingleBandGrayRenderer(raster.dataProvider(), 1))
    assert not isinstance(vector.renderer(), QgsCategorizedSymbolRenderer)
    for path, layer in ((tmp_path / "classes.tif", raster), (tmp_path / "classes.gpkg", vector)):
        details = context.layerToLoadOnCompletionDetails(str(path))
        details.postProcessor().postProcessLayer(layer, context, QgsProcessingFeedback())
    assert _palette(raster) == EXPECTED_STYLE
    assert _categories(vector) == EXPECTED_STYLE
    raster = vector = None

    areas = result["CLASS_AREAS"]  # a QVariantMap: sorted by name
    assert sorted(areas) == sorted(LOVEDA_CLASSES)
    dataset = gdal.Open(str(tmp_path / "classes.tif"))
    values = dataset.GetRasterBand(1).ReadAsArray()
    nodata = dataset.GetRasterBand(1).GetNoDataValue()
    pixel_area = abs(dataset.GetGeoTransform()[1] * dataset.GetGeoTransform()[5])
    dataset = None
    assert sum(areas.values()) == pytest.approx((values != nodata).sum() * pixel_area)
    table = QgsVectorLayer(result["OUTPUT_AREAS"], "areas")
    rows = {f["class_name"]: (f["area"], f["area_unit"]) for f in table.getFeatures()}
    assert rows == {name: (pytest.approx(area), "m2") for name, area in areas.items()}
    table = None


def test_bundled_model_segments_the_bundled_sample_by_default(provider, tmp_path):
    """The README's main job: no MODEL given, the demo model on the sample image."""
    sample = REPO / "resources" / "samples" / "dubai_scene1_part008.tif"
    assert settings.bundled_model() is not None, "resources/models/landcover_demo.lcm"
    result = _run({"INPUT": str(sample), "OUTPUT_RASTER": str(tmp_path / "classes.tif"),
                   "OUTPUT_VECTOR": str(tmp_path / "classes.gpkg")})
    assert _grid(tmp_path / "classes.tif") == _grid(sample)
    demo_classes = ["building", "land", "road", "vegetation", "water"]
    assert sorted(result["CLASS_AREAS"]) == demo_classes
    values = gdal.Open(str(tmp_path / "classes.tif")).ReadAsArray()
    # a trained model: more than one class, and land (most of this scene) is the largest
    counts = np.bincount(values.ravel(), minlength=5)
    assert (counts[:5] > 0).sum() >= 3 and counts.argmax() == demo_classes.index("land")


@pytest.mark.parametrize("kind", ["vrt", "gpkg", "mask band"])
def test_any_gdal_readable_layer(provider, tiny_model, small_crop, tmp_path, kind):
    if kind == "vrt":
        source = tmp_path / "crop.vrt"
        gdal.BuildVRT(str(source), [str(small_crop)])
    elif kind == "gpkg":
        source = tmp_path / "crop.gpkg"
        gdal.Translate(str(source), str(small_crop), format="GPKG",
                       creationOptions=["RASTER_TABLE=scene"])
    else:  # an internal mask band instead of a no-data value
        source = tmp_path / "masked.tif"
        gdal.Translate(str(source), str(small_crop), noData="none", maskBand=1)
    layer = QgsRasterLayer(str(source), kind)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    try:
        result = _run({"INPUT": layer.id(), "MODEL": str(tiny_model),
                       "OUTPUT_RASTER": str(tmp_path / "classes.tif")})
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
        layer = None
    assert _grid(result["OUTPUT_RASTER"]) == _grid(small_crop)


def test_runs_twice_in_a_row_as_batch_does(provider, tiny_model, small_crop, tmp_path):
    second = _crop(tmp_path / "second.tif", 160, 160, (64, 96))
    target = tmp_path / "classes.tif"
    # the second run writes over the first one's output, as a re-run batch does
    for source in (small_crop, second):
        result = _run({"INPUT": str(source), "MODEL": str(tiny_model),
                       "OUTPUT_RASTER": str(target)})
        assert _grid(result["OUTPUT_RASTER"]) == _grid(source)
    # a third run that fails leaves the second one's result as it was
    before = target.read_bytes()
    with pytest.raises(QgsProcessingException):
        _run({"INPUT": str(FOUR_BANDS), "MODEL": str(tiny_model), "OUTPUT_RASTER": str(target)})
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*"))  # no unfinished (hidden) outputs


def test_inside_a_processing_model(provider, tiny_model, small_crop, tmp_path):
    model = QgsProcessingModelAlgorithm("segment in a model", "tests")
    model.addModelParameter(
        QgsProcessingParameterRasterLayer("scene", "Scene"),
        QgsProcessingModelParameter("scene"),
    )
    child = QgsProcessingModelChildAlgorithm(ALGORITHM)
    child.setChildId("segment")
    source = QgsProcessingModelChildParameterSource
    child.addParameterSources("INPUT", [source.fromModelParameter("scene")])
    for key, value in {**FAST, "MODEL": str(tiny_model)}.items():
        child.addParameterSources(key, [source.fromStaticValue(value)])
    output = QgsProcessingModelOutput("classes", "Classes")
    output.setChildOutputName("OUTPUT_RASTER")
    output.setChildId("segment")
    child.setModelOutputs({"classes": output})
    model.addChildAlgorithm(child)
    model.updateDestinationParameters()  # adds the destination parameter "classes"
    ok, errors = model.validate()
    assert ok, errors
    target = tmp_path / "model_classes.tif"
    result = processing.run(model, {"scene": str(small_crop), "classes": str(target)})
    assert Path(result["classes"]) == target
    assert _grid(target) == _grid(small_crop)


# ------------------------------------------------------------------------ failures


class _CancelOnProgress(QgsProcessingFeedback):
    """Presses Cancel once the engine reports its first finished batch."""

    def __init__(self):
        super().__init__()
        self.cancelled_at: float | None = None
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value: float) -> None:
        if value > 0 and self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            self.cancel()


def test_cancel_stops_the_engine_and_leaves_no_output(provider, tiny_model, tmp_path):
    feedback = _CancelOnProgress()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        _run({"INPUT": str(SCENE), "MODEL": str(tiny_model), "BATCH_SIZE": 1,
              "OUTPUT_RASTER": str(tmp_path / "cancelled.tif"),
              "OUTPUT_VECTOR": str(tmp_path / "cancelled.gpkg")}, feedback)
    assert feedback.cancelled_at is not None
    assert time.monotonic() - feedback.cancelled_at < 10
    assert list(tmp_path.iterdir()) == []


def test_model_file_that_does_not_fit(provider, tiny_model, rgb_crop, tmp_path):
    truncated = tmp_path / "truncated.lcm"
    truncated.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    with pytest.raises(QgsProcessingException, match="truncated"):
        _run({"INPUT": str(rgb_crop), "MODEL": str(truncated),
              "OUTPUT_RASTER": str(tmp_path / "classes.tif")})
    assert not (tmp_path / "classes.tif").exists()


def test_wrong_band_count(provider, tiny_model, tmp_path):
    with pytest.raises(QgsProcessingException, match="band"):
        _run({"INPUT": str(FOUR_BANDS), "MODEL": str(tiny_model),
              "OUTPUT_RASTER": str(tmp_path / "classes.tif")})
    assert list(tmp_path.iterdir()) == []


def test_band_selection_picks_the_model_bands(provider, tiny_model, tmp_path):
    four_bands = _crop(tmp_path / "four_bands.tif", 0, 0, (96, 64), source=FOUR_BANDS)
    result = _run({"INPUT": str(four_bands), "MODEL": str(tiny_model), "BANDS": "1, 2, 3",
                   "OUTPUT_RASTER": str(tmp_path / "classes.tif")})
    assert _grid(result["OUTPUT_RASTER"]) == _grid(four_bands)


def test_web_layer_is_refused_with_advice(provider, tiny_model, tmp_path):
    xyz = QgsRasterLayer(
        "type=xyz&url=http://127.0.0.1:9/{z}/{x}/{y}.png&zmin=0&zmax=19", "tiles", "wms"
    )
    QgsProject.instance().addMapLayer(xyz)
    try:
        with pytest.raises(QgsProcessingException, match=r"Export > Save As"):
            _run({"INPUT": xyz.id(), "MODEL": str(tiny_model),
                  "OUTPUT_RASTER": str(tmp_path / "classes.tif")})
    finally:
        QgsProject.instance().removeMapLayer(xyz.id())
        xyz = None
    assert not (tmp_path / "classes.tif").exists()


def test_missing_bundled_model_is_explained(provider, monkeypatch, rgb_crop, tmp_path):
    # as in a plugin copy without resources/models (the file itself is bundled here)
    monkeypatch.setattr(segment_algorithm, "bundled_model", lambda: None)
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM).createInstance()
    algorithm.initAlgorithm()
    assert "not installed" in algorithm.parameterDefinition("MODEL").description()
    with pytest.raises(QgsProcessingException, match=r"bundled model .* is not installed"):
        _run({"INPUT": str(rgb_crop), "OUTPUT_RASTER": str(tmp_path / "classes.tif")})


def test_missing_engine_interpreter_says_what_to_do(provider, monkeypatch, rgb_crop, tiny_model,
                                                    tmp_path):
    monkeypatch.setenv(settings.ENGINE_PYTHON_ENV, str(tmp_path / "no" / "python"))
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    ok, message = algorithm.canExecute()
    assert not ok and "Set up engine" in message
    with pytest.raises(QgsProcessingException, match="Set up engine"):
        _run({"INPUT": str(rgb_crop), "MODEL": str(tiny_model),
              "OUTPUT_RASTER": str(tmp_path / "classes.tif")})


def test_interpreter_without_the_engine_says_what_to_install(provider, monkeypatch, rgb_crop,
                                                             tiny_model, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    monkeypatch.setenv(settings.ENGINE_PYTHON_ENV, str(bare / "bin" / "python"))
    with pytest.raises(QgsProcessingException, match=r"cannot import .*Set up engine"):
        _run({"INPUT": str(rgb_crop), "MODEL": str(tiny_model),
              "OUTPUT_RASTER": str(tmp_path / "classes.tif")})


class _KillOnProgress(QgsProcessingFeedback):
    """Kills the engine from outside (as an out-of-memory kill would) mid-run."""

    def __init__(self):
        super().__init__()
        self.pid: int | None = None
        self.progressChanged.connect(self._on_progress)

    def pushDebugInfo(self, info: str) -> None:  # the runner names the child it starts
        started = re.match(r"Started process (\d+)", info)
        if started:
            self.pid = int(started.group(1))
        super().pushDebugInfo(info)

    def _on_progress(self, value: float) -> None:
        if value > 0 and self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.pid = None


def test_qgis_keeps_running_after_an_engine_crash(provider, tiny_model, tmp_path):
    with pytest.raises(QgsProcessingException, match=r"killed \(SIGKILL\)"):
        _run({"INPUT": str(SCENE), "MODEL": str(tiny_model), "BATCH_SIZE": 1,
              "OUTPUT_RASTER": str(tmp_path / "classes.tif")}, _KillOnProgress())
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ set-up and install

REPO = Path(__file__).resolve().parent.parent


def test_set_up_engine_makes_a_venv_and_checks_it(provider, tmp_path):
    """Offline: an empty requirements list installs nothing, so the engine check must fail
    (the new venv sees the system's packages, which lack torch) and nothing is recorded."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install offline\n")
    venv = tmp_path / "engine-venv"
    before = settings.configured_engine_python()
    with pytest.raises(QgsProcessingException, match=r"No module named 'torch'"):
        processing.run("landcover:setupengine", {
            "VENV": str(venv), "REQUIREMENTS": str(requirements), "PIP_OPTIONS": "--no-index",
        })
    assert (venv / "bin" / "python").is_file()
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert settings.configured_engine_python() == before


def test_engine_requirements_are_the_pinned_ones():
    from landcover.plugin.setup_algorithm import engine_requirements

    requirements = engine_requirements()
    assert "torch==2.13.0" in requirements and any(r.startswith("numpy") for r in requirements)


def _qgis_process(config: Path, *arguments: str, plugin_path: Path | None = None,
                  **env: str) -> subprocess.CompletedProcess:
    environment = {
        key: value for key, value in os.environ.items()
        if key not in {"QGIS_PLUGINPATH", "QGIS_OPTIONS_PATH", "PYTHONPATH"}
    }
    environment.update(QGIS_CUSTOM_CONFIG_PATH=str(config), QT_QPA_PLATFORM="offscreen", **env)
    if plugin_path is not None:
        environment["QGIS_PLUGINPATH"] = str(plugin_path)
    return subprocess.run(["qgis_process", *arguments], capture_output=True, text=True,
                          env=environment, timeout=600)


def _segment_with_qgis_process(config, model, source, out, **kwargs):
    return _qgis_process(
        config, "run", ALGORITHM, "--",
        f"INPUT={source}", f"MODEL={model}", f"OUTPUT_RASTER={out}.tif",
        f"OUTPUT_VECTOR={out}.gpkg", *(f"{k}={v}" for k, v in FAST.items()), **kwargs,
    )


@pytest.mark.slow
def test_qgis_process_runs_the_algorithm(tiny_model, small_crop, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "landcover").symlink_to(REPO, target_is_directory=True)
    config = tmp_path / "config"
    enabled = _qgis_process(config, "plugins", "enable", "landcover", plugin_path=plugins)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    run = _segment_with_qgis_process(config, tiny_model, small_crop, tmp_path / "out",
                                     plugin_path=plugins, LANDCOVER_PYTHON=sys.executable)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Class areas:" in run.stdout and all(name in run.stdout for name in LOVEDA_CLASSES)
    assert _grid(tmp_path / "out.tif") == _grid(small_crop)
    assert (tmp_path / "out.qml").is_file() and (tmp_path / "out.gpkg").is_file()


def _build_zip(tmp_path: Path) -> Path:
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_plugin_zip.py"), "--out-dir",
         str(tmp_path / "dist")], capture_output=True, text=True, check=True,
    )
    (archive,) = (tmp_path / "dist").glob("landcover-*.zip")
    assert str(archive) in completed.stdout
    return archive


def test_plugin_zip_holds_what_qgis_needs_and_nothing_else(tmp_path):
    with zipfile.ZipFile(_build_zip(tmp_path)) as archive:
        names = archive.namelist()
        metadata = configparser.ConfigParser(interpolation=None)
        metadata.read_string(archive.read("landcover/metadata.txt").decode())
        requirements = archive.read("landcover/requirements-engine.txt").decode()
    assert all(name.startswith("landcover/") for name in names)
    for needed in ("__init__.py", "metadata.txt", "plugin/plugin.py", "plugin/provider.py",
                   "engine/cli.py", "resources/icon.svg", "requirements-engine.txt"):
        assert f"landcover/{needed}" in names
    for name in names:
        parts = name.split("/")
        assert parts[1] not in {"tests", "training", "scripts", ".venv", ".git", "dist"}, name
        assert "__pycache__" not in parts and not name.endswith((".pyc", ".aux.xml")), name
        assert not any(part.startswith(".") for part in parts), name
    assert "landcover/plugin/engine_python.txt" not in names
    general = metadata["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                "email", "repository", "tracker", "tags", "category", "icon", "changelog"):
        assert general.get(key, "").strip(), key
    assert general["hasProcessingProvider"] == "yes"
    assert f"landcover/{general['icon']}" in names
    assert "torch==2.13.0" in requirements


def test_plugin_zip_installs_into_an_empty_profile(tmp_path):
    config = tmp_path / "config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(_build_zip(tmp_path)) as archive:
        archive.extractall(plugins)
    enabled = _qgis_process(config, "plugins", "enable", "landcover")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    listed = _qgis_process(config, "list")
    assert ALGORITHM in listed.stdout and "landcover:setupengine" in listed.stdout
    described = _qgis_process(config, "help", ALGORITHM)
    assert "OUTPUT_RASTER" in described.stdout and "Segment land cover" in described.stdout


@pytest.mark.slow
def test_zip_user_sets_up_the_engine_then_segments(tiny_model, small_crop, tmp_path):
    """The whole path of a user with only the zip: install, 'Set up engine' (pip installs
    the pinned requirements; uses the package index pip is configured with), segment."""
    config = tmp_path / "config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(_build_zip(tmp_path)) as archive:
        archive.extractall(plugins)
    assert _qgis_process(config, "plugins", "enable", "landcover").returncode == 0
    venv = tmp_path / "engine-venv"
    environment = {"LANDCOVER_PYTHON": ""}
    set_up = _qgis_process(config, "run", "landcover:setupengine", "--", f"VENV={venv}",
                           **environment)
    assert set_up.returncode == 0, set_up.stdout[-3000:] + set_up.stderr[-3000:]
    assert '"torch": "2.13.0' in set_up.stdout
    run = _segment_with_qgis_process(config, tiny_model, small_crop, tmp_path / "out",
                                     **environment)
    assert run.returncode == 0, run.stdout + run.stderr
    assert str(venv / "bin" / "python") in run.stdout
    assert _grid(tmp_path / "out.tif") == _grid(small_crop)
