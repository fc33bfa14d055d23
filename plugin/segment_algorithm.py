"""The Processing algorithm "Segment land cover" (``landcover:segmentlandcover``).

It checks the parameters, hands the layers' GDAL sources to the engine's ``segment``
command in a child process, and returns the styled class raster, class polygons,
confidence raster and per-class areas. It never touches layers of the project from its
worker thread: loaded outputs are styled by a layer post-processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsMapLayer,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputVariant,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QMetaType
from qgis.PyQt.QtGui import QIcon

from landcover.plugin import engine_runner
from landcover.plugin.settings import BUNDLED_MODEL, ICON_PATH, bundled_model, engine_python_problem
from landcover.plugin.styling import (
    ClassStylePostProcessor,
    classes_from_json,
    write_raster_style,
)

DEVICES = ("auto", "cpu", "cuda")
TTA_MODES = ("none", "flip", "d4", "d4_plus")
RASTER_EXTENSIONS = (".tif", ".tiff")
VECTOR_EXTENSIONS = (".gpkg",)
# Data providers whose layers come from a server: never segmented (it would download tiles).
WEB_PROVIDERS = {"wms", "wcs", "arcgismapserver", "arcgisfeatureserver", "xyz", "vectortile"}
# Parts of GDAL sources that read over the network (URLs, GDAL's network file systems).
NETWORK_SOURCE_MARKERS = (
    "://", "/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift",
    "/vsiwebhdfs", "/vsihdfs", "<gdal_wms>", "wms:", "wcs:",
)
SAVE_AS_ADVICE = (
    "Save a local copy first (right-click the layer > Export > Save As..., GeoTIFF, "
    "clipped to the area you need) and run the algorithm on that copy."
)


class SegmentLandCoverAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    EXTRA_INPUTS = "EXTRA_INPUTS"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    TTA = "TTA"
    BANDS = "BANDS"
    WAVELENGTHS = "WAVELENGTHS"
    NODATA = "NODATA"
    GSD = "GSD"
    SIMPLIFY = "SIMPLIFY"
    MIN_AREA = "MIN_AREA"
    OUTPUT_RASTER = "OUTPUT_RASTER"
    OUTPUT_VECTOR = "OUTPUT_VECTOR"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"
    OUTPUT_AREAS = "OUTPUT_AREAS"
    CLASS_AREAS = "CLASS_AREAS"

    def name(self) -> str:
        return "segmentlandcover"

    def displayName(self) -> str:
        return "Segment land cover"

    def group(self) -> str:
        return "Segmentation"

    def groupId(self) -> str:
        return "segmentation"

    def tags(self) -> list[str]:
        return ["land cover", "segmentation", "classification", "deep learning", "mamba"]

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def createInstance(self) -> SegmentLandCoverAlgorithm:
        return SegmentLandCoverAlgorithm()

    def shortHelpString(self) -> str:
        model = (
            f"the bundled demo model ({BUNDLED_MODEL.name})"
            if bundled_model()
            else "a model package you choose (the bundled demo model is not installed)"
        )
        return (
            "Segments a raster into land-cover classes with a Mamba-based network "
            f"(UNetMamba and relatives). Model used: {model}.\n\n"
            "<b>Input raster</b>: any GDAL-readable layer (GeoTIFF, VRT, GeoPackage raster, "
            "rasters with a mask band); its bands must match the model's. Web layers "
            "(WMS/XYZ/WCS) are refused: save a local copy with Export > Save As first.\n"
            "<b>Extra input rasters</b>: more layers for multi-modal models (e.g. SAR or a "
            "DEM beside optical bands), in the order the model lists its inputs.\n"
            "<b>Model package</b>: a .lcm file (weights + class names, colours, bands, tile "
            "size, ground sample distance); blank uses the bundled model.\n"
            "<b>Device</b>: auto picks CUDA when a GPU is usable, else the CPU.\n"
            "<b>Tile size / Overlap</b> (advanced): the window the model sees and how much "
            "neighbouring windows overlap, in pixels; blank uses the model's own.\n"
            "<b>Batch size</b> (advanced): tiles per forward pass; lower it when memory runs "
            "out.\n"
            "<b>Test-time augmentation</b> (advanced): none, flip (x3 time), d4: the 8 "
            "rotations and flips (x8 time), or d4_plus: d4 plus 3 scales and 2 brightness "
            "levels (x13 time); smoother, slower results.\n"
            "<b>Input bands</b> (advanced): which bands feed the model, in the model's order, "
            "numbered from 1 across all input rasters (e.g. 1,2,3 of a 4-band R,G,B,NIR "
            "image for an RGB model).\n"
            "<b>Optical band wavelengths</b> (advanced): central wavelengths in micrometres "
            "of the optical bands, for models that take any set of bands (UPSeg); blank "
            "reads them from the raster's band metadata, else the model's.\n"
            "<b>No-data value</b> (advanced): overrides the input's no-data value; no-data "
            "pixels stay no-data in the outputs.\n"
            "<b>Ground sample distance</b> (advanced): auto resamples to the model's pixel "
            "size when they differ, native keeps the input's, a number forces that many "
            "metres per pixel.\n"
            "<b>Simplify tolerance / Minimum polygon area</b> (advanced): tidy the class "
            "polygons (map units; square metres); polygons smaller than the minimum merge "
            "into their neighbours.\n\n"
            "Outputs: the class raster (GeoTIFF on the input's grid, styled with the "
            "model's class names and colours), the class polygons (GeoPackage, optional), "
            "a per-pixel confidence raster (optional), and the area of each class (in the "
            "results, the log and an optional table).\n\n"
            "The engine runs in its own Python process (set it up with 'Set up engine'); "
            "Cancel stops it within about one batch and removes its partial outputs."
        )

    def flags(self):
        return super().flags() | QgsProcessingAlgorithm.Flag.FlagCanCancel

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        # No default: Processing dialogs then preselect the active raster layer.
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.EXTRA_INPUTS,
                "Extra input rasters (multi-modal models)",
                Qgis.ProcessingSourceType.Raster,
                optional=True,
            )
        )
        bundled = bundled_model()
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Model package (blank: bundled model)"
                if bundled
                else "Model package (the bundled model is not installed: choose a .lcm file)",
                defaultValue=str(bundled) if bundled else None,
                optional=True,
                fileFilter="Model packages (*.lcm *.safetensors);;All files (*)",
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DEVICE, "Device", options=list(DEVICES), defaultValue="auto",
                usesStaticStrings=True,
            )
        )
        integer = Qgis.ProcessingNumberParameterType.Integer
        double = Qgis.ProcessingNumberParameterType.Double
        advanced = [
            QgsProcessingParameterNumber(
                self.TILE_SIZE, "Tile size in pixels (blank: the model's)", integer,
                optional=True, minValue=32,
            ),
            QgsProcessingParameterNumber(
                self.OVERLAP, "Tile overlap in pixels (blank: the model's)", integer,
                optional=True, minValue=0,
            ),
            QgsProcessingParameterNumber(
                self.BATCH_SIZE, "Batch size (tiles per pass; blank: the engine's default)",
                integer, optional=True, minValue=1,
            ),
            QgsProcessingParameterEnum(
                self.TTA, "Test-time augmentation", options=list(TTA_MODES),
                defaultValue="none", usesStaticStrings=True,
            ),
            QgsProcessingParameterString(
                self.BANDS, "Input bands in the model's order, e.g. 3,2,1 (blank: all)",
                optional=True,
            ),
            QgsProcessingParameterString(
                self.WAVELENGTHS,
                "Optical band wavelengths in µm, e.g. 0.665,0.56,0.49 (wavelength-conditioned "
                "models; blank: from the raster or the model)",
                optional=True,
            ),
            QgsProcessingParameterNumber(
                self.NODATA, "No-data value (blank: the input's)", double, optional=True,
            ),
            QgsProcessingParameterString(
                self.GSD, "Ground sample distance: auto, native or metres per pixel",
                defaultValue="auto",
            ),
            QgsProcessingParameterNumber(
                self.SIMPLIFY, "Polygon simplify tolerance in map units (blank: none)", double,
                optional=True, minValue=0.0,
            ),
            QgsProcessingParameterNumber(
                self.MIN_AREA, "Minimum polygon area in square metres (blank: none)", double,
                optional=True, minValue=0.0,
            ),
        ]
        for parameter in advanced:
            parameter.setFlags(
                parameter.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced
            )
            self.addParameter(parameter)
        self.addParameter(
            QgsProcessingParameterRasterDestination(self.OUTPUT_RASTER, "Land cover classes")
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.OUTPUT_VECTOR, "Land cover polygons",
                Qgis.ProcessingSourceType.VectorPolygon, optional=True, createByDefault=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_CONFIDENCE, "Confidence", optional=True, createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT_AREAS, "Class areas", Qgis.ProcessingSourceType.Vector,
                optional=True, createByDefault=False,
            )
        )
        self.addOutput(
            QgsProcessingOutputVariant(
                self.CLASS_AREAS, "Class areas (class name: area, m² for metric CRSs)"
            )
        )

    def canExecute(self) -> tuple[bool, str]:
        problem = engine_python_problem()
        return (problem is None, problem or "")

    def checkParameterValues(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[bool, str]:
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        gsd = self.parameterAsString(parameters, self.GSD, context).strip().lower()
        if not _valid_gsd(gsd):
            return False, (
                f"Ground sample distance must be 'auto', 'native' or a number of metres "
                f"greater than 0, not '{gsd}'."
            )
        return True, ""

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(
                "The input raster could not be opened: choose a raster layer or file."
            )
        sources = [gdal_source(layer)]
        for extra in self.parameterAsLayerList(parameters, self.EXTRA_INPUTS, context):
            sources.append(gdal_source(extra))
        model = self._model_path(parameters, context)

        out_raster = self._output_file(
            parameters, self.OUTPUT_RASTER, context, RASTER_EXTENSIONS, "GeoTIFF"
        )
        out_vector = self._output_file(
            parameters, self.OUTPUT_VECTOR, context, VECTOR_EXTENSIONS, "GeoPackage"
        )
        out_confidence = self._output_file(
            parameters, self.OUTPUT_CONFIDENCE, context, RASTER_EXTENSIONS, "GeoTIFF"
        )
        arguments = [
            "segment", *sources, "--model", model, "--out-raster", out_raster,
            "--device", self.parameterAsEnumString(parameters, self.DEVICE, context),
            "--tta", self.parameterAsEnumString(parameters, self.TTA, context),
            "--gsd", self.parameterAsString(parameters, self.GSD, context).strip().lower(),
        ]
        bands = self.parameterAsString(parameters, self.BANDS, context).replace(" ", "")
        if bands:
            arguments += ["--bands", bands]
        wavelengths = self.parameterAsString(parameters, self.WAVELENGTHS, context)
        if wavelengths.replace(" ", ""):
            arguments += ["--wavelengths", wavelengths.replace(" ", "")]
        if out_vector:
            arguments += ["--out-vector", out_vector]
        if out_confidence:
            arguments += ["--out-confidence", out_confidence]
        for key, flag, as_int in (
            (self.TILE_SIZE, "--tile", True),
            (self.OVERLAP, "--overlap", True),
            (self.BATCH_SIZE, "--batch", True),
            (self.NODATA, "--nodata", False),
            (self.SIMPLIFY, "--simplify", False),
            (self.MIN_AREA, "--min-area", False),
        ):
            if parameters.get(key) not in (None, ""):  # unset optional numbers stay unset
                value = self.parameterAsDouble(parameters, key, context)
                arguments += [flag, str(int(value)) if as_int else repr(value)]

        written = [path for path in (out_raster, out_vector, out_confidence) if path]
        with engine_runner.removed_on_failure(written):
            result = engine_runner.run_engine(arguments, feedback)
            classes = classes_from_json(result.get("classes"))
            write_raster_style(out_raster, classes)  # the engine styles the GeoPackage

        for path in (out_raster, out_vector):
            if path:
                ClassStylePostProcessor.attach(context, path, classes)
        _log_speed(result, feedback)
        areas, unit = class_areas(result)
        _log_areas(areas, unit, feedback)
        outputs: dict[str, Any] = {
            self.OUTPUT_RASTER: out_raster,
            self.OUTPUT_VECTOR: out_vector or None,
            self.OUTPUT_CONFIDENCE: out_confidence or None,
            self.CLASS_AREAS: {row["name"]: row["area"] for row in areas},
        }
        outputs[self.OUTPUT_AREAS] = self._write_area_table(parameters, context, areas, unit)
        return outputs

    # ------------------------------------------------------------------ helpers

    def _model_path(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        model = self.parameterAsFile(parameters, self.MODEL, context)
        if not model:
            bundled = bundled_model()
            if bundled is None:
                raise QgsProcessingException(
                    f"No model package given, and the bundled model ({BUNDLED_MODEL}) is not "
                    "installed: choose a model package (.lcm) in 'Model package' (make one "
                    "with 'landcover train', or an untrained one with 'landcover create')."
                )
            model = str(bundled)
        if not Path(model).is_file():
            raise QgsProcessingException(f"The model package {model} does not exist.")
        return model

    def _output_file(
        self,
        parameters: dict[str, Any],
        key: str,
        context: QgsProcessingContext,
        extensions: tuple[str, ...],
        format_name: str,
    ) -> str:
        """The output's file path ('' when not wanted), checked to be a plain file."""
        path = self.parameterAsOutputLayer(parameters, key, context)
        if not path:
            return ""
        if not path.lower().endswith(extensions):
            raise QgsProcessingException(
                f"{self.parameterDefinition(key).description()}: the engine writes "
                f"{format_name} files ({', '.join(extensions)}), not {path}."
            )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write_area_table(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        areas: list[dict[str, Any]],
        unit: str,
    ) -> str | None:
        fields = QgsFields()
        fields.append(QgsField("class_id", QMetaType.Type.Int))
        fields.append(QgsField("class_name", QMetaType.Type.QString))
        fields.append(QgsField("pixels", QMetaType.Type.LongLong))
        fields.append(QgsField("area", QMetaType.Type.Double))
        fields.append(QgsField("area_unit", QMetaType.Type.QString))
        fields.append(QgsField("percent", QMetaType.Type.Double))
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT_AREAS, context, fields, Qgis.WkbType.NoGeometry
        )
        if sink is None:
            return None
        for row in areas:
            feature = QgsFeature(fields)
            feature.setAttributes(
                [row["id"], row["name"], row["pixels"], row["area"], unit, row["percent"]]
            )
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        del sink  # flushes the file
        return dest_id


def gdal_source(layer: QgsMapLayer) -> str:
    """The GDAL source of a raster layer; web and other non-file layers get advice instead."""
    name = layer.name()
    if not isinstance(layer, QgsRasterLayer):
        raise QgsProcessingException(f"Layer '{name}' is not a raster layer.")
    provider = layer.providerType()
    if provider in WEB_PROVIDERS:
        raise QgsProcessingException(
            f"Layer '{name}' is a web layer ({provider}): the algorithm reads rasters from "
            f"files and never downloads tiles. {SAVE_AS_ADVICE}"
        )
    if provider != "gdal":
        raise QgsProcessingException(
            f"Layer '{name}' comes from the '{provider}' data provider, which the engine "
            f"cannot read (it reads files through GDAL). {SAVE_AS_ADVICE}"
        )
    source = layer.source().split("|")[0]  # QGIS's "|option:..." suffixes are not GDAL's
    if any(marker in source.lower() for marker in NETWORK_SOURCE_MARKERS):
        raise QgsProcessingException(
            f"Layer '{name}' is read over the network ({source[:60]}): the algorithm never "
            f"downloads tiles. {SAVE_AS_ADVICE}"
        )
    return source


def class_areas(result: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Per-class rows ``{id, name, pixels, area, percent}`` and the area unit (``m2`` for
    metres) from the engine's result."""
    try:
        rows = [
            {
                "id": int(entry.get("id", index)),
                "name": str(entry["name"]),
                "pixels": int(entry["pixels"]),
                "area": float(entry["area"]),
                "percent": float(entry["percent"]),
            }
            for index, entry in enumerate(result["classes"])
        ]
        return rows, str(result["area_unit"])
    except (KeyError, TypeError, ValueError) as error:
        raise QgsProcessingException(
            f"The engine's result lacks the class areas ({error!r}): the plugin and the engine "
            "come from different versions; reinstall both."
        ) from error


def _log_speed(result: dict[str, Any], feedback: QgsProcessingFeedback) -> None:
    seconds = result.get("seconds") or {}
    tiles_run = int(result.get("tiles_run", 0))
    if tiles_run and seconds.get("model"):
        feedback.pushInfo(
            f"Segmented {tiles_run} tile{'s' if tiles_run != 1 else ''} in "
            f"{seconds['model']:.1f} s "
            f"({tiles_run / seconds['model']:.1f} tiles/s) on {result.get('device')}; "
            f"{seconds.get('total', 0.0):.1f} s in all"
        )


def _log_areas(rows: list[dict[str, Any]], unit: str, feedback: QgsProcessingFeedback) -> None:
    width = max(len("class"), *(len(row["name"]) for row in rows))
    feedback.pushInfo("Class areas:")
    feedback.pushInfo(f"  {'class':<{width}}  {f'area ({unit})':>18}  {'share':>7}")
    for row in rows:
        feedback.pushInfo(
            f"  {row['name']:<{width}}  {row['area']:>18,.1f}  {row['percent']:>6.2f}%"
        )


def _valid_gsd(gsd: str) -> bool:
    if gsd in {"auto", "native"}:
        return True
    try:
        return float(gsd) > 0
    except ValueError:
        return False

