"""Where the plugin finds things: the engine's interpreter, the bundled model, the icon.

The engine runs in its own Python (the project's venv, which has torch), never in QGIS's.
That interpreter is looked up in this order:

1. the environment variable ``LANDCOVER_PYTHON``;
2. the Processing setting "Engine Python interpreter"
   (Settings > Options > Processing > Providers > Land cover), which "Set up engine" fills;
3. the interpreter recorded at set-up by ``setup.sh`` in ``plugin/engine_python.txt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingException, QgsSettings

ENGINE_PYTHON_ENV = "LANDCOVER_PYTHON"
# Stored by Processing's options dialog under "Processing/Configuration/<name>".
ENGINE_PYTHON_SETTING = "LANDCOVER_ENGINE_PYTHON"
ENGINE_PYTHON_SETTING_KEY = f"Processing/Configuration/{ENGINE_PYTHON_SETTING}"

# abspath, not resolve(): a profile's `landcover` link must stay the package's name.
PLUGIN_ROOT = Path(os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))
RECORDED_PYTHON_FILE = PLUGIN_ROOT / "plugin" / "engine_python.txt"
BUNDLED_MODEL = PLUGIN_ROOT / "resources" / "models" / "landcover_demo.lcm"
ICON_PATH = PLUGIN_ROOT / "resources" / "icon.svg"
# Written into the plugin zip by scripts/build_plugin_zip.py from pyproject.toml.
REQUIREMENTS_FILE = PLUGIN_ROOT / "requirements-engine.txt"
PYPROJECT_FILE = PLUGIN_ROOT / "pyproject.toml"

SETUP_HINT = (
    "Run 'Land cover > Set up engine' in the Processing toolbox (it makes a Python "
    "environment with the engine's pinned requirements), or point Settings > Options > "
    "Processing > Providers > Land cover > 'Engine Python interpreter' (or the "
    f"{ENGINE_PYTHON_ENV} environment variable) at a Python that has the engine's "
    "requirements (torch, numpy<2, rasterio, shapely, safetensors, numba) installed; "
    "from a clone of the project, ./setup.sh does all of this."
)


@dataclass(frozen=True)
class EnginePython:
    """The interpreter that runs the engine and where that choice came from."""

    path: str
    origin: str


def configured_engine_python() -> EnginePython | None:
    """The first interpreter named by the environment, the settings or set-up, if any."""
    from_env = os.environ.get(ENGINE_PYTHON_ENV, "").strip()
    if from_env:
        return EnginePython(from_env, f"the environment variable {ENGINE_PYTHON_ENV}")
    from_settings = str(QgsSettings().value(ENGINE_PYTHON_SETTING_KEY, "") or "").strip()
    if from_settings:
        return EnginePython(from_settings, "the Processing setting 'Engine Python interpreter'")
    if RECORDED_PYTHON_FILE.is_file():
        recorded = RECORDED_PYTHON_FILE.read_text(encoding="utf-8").strip()
        if recorded:
            return EnginePython(recorded, f"the set-up record {RECORDED_PYTHON_FILE}")
    return None


def _problem(chosen: EnginePython | None) -> str | None:
    if chosen is None:
        return f"No Python interpreter for the land cover engine is configured. {SETUP_HINT}"
    if not os.path.isfile(chosen.path) or not os.access(chosen.path, os.X_OK):
        return (
            f"The engine interpreter {chosen.path} (from {chosen.origin}) does not exist "
            f"or cannot be run. {SETUP_HINT}"
        )
    return None


def engine_python_problem() -> str | None:
    """Why the engine cannot start (one message that says what to do), or None if it can."""
    return _problem(configured_engine_python())


def engine_python() -> EnginePython:
    """The interpreter to run the engine with; QgsProcessingException says how to get one."""
    chosen = configured_engine_python()
    problem = _problem(chosen)
    if problem or chosen is None:
        raise QgsProcessingException(problem)
    return chosen


def set_engine_python(path: str) -> None:
    """Remember ``path`` as the engine interpreter (the Processing setting)."""
    QgsSettings().setValue(ENGINE_PYTHON_SETTING_KEY, path)
    try:  # keep Processing's options dialog in step when it is loaded
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    if ENGINE_PYTHON_SETTING in ProcessingConfig.settings:
        ProcessingConfig.settings[ENGINE_PYTHON_SETTING].value = path


def default_engine_venv() -> Path:
    """Where "Set up engine" makes its venv: inside the active QGIS profile."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "landcover" / "engine-venv"


def bundled_model() -> Path | None:
    """The bundled demo model, or None while it is not installed."""
    return BUNDLED_MODEL if BUNDLED_MODEL.is_file() else None


def engine_environment() -> dict[str, str]:
    """The child's environment: the plugin's own copy of ``landcover`` comes first.

    A venv made by "Set up engine" holds only the requirements; the engine's code is the
    plugin folder itself, importable as ``landcover`` from the folder that holds it.
    """
    env = dict(os.environ)
    # QGIS on Windows sets PYTHONHOME for its own Python; another interpreter breaks on it.
    env.pop("PYTHONHOME", None)
    if PLUGIN_ROOT.name == "landcover":
        parts = [str(PLUGIN_ROOT.parent)]
        if env.get("PYTHONPATH"):
            parts.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env
