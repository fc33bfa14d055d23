"""The Processing algorithm "Set up engine" (``landcover:setupengine``).

For users who installed only the plugin zip: it makes a Python environment (a venv that
also sees the base Python's packages, such as GDAL's bindings), pip-installs the engine's
pinned requirements into it with progress, checks that the engine starts, and records the
environment's interpreter in the Processing setting the segment algorithm reads.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QIcon

from landcover.plugin.child_process import run_child
from landcover.plugin.settings import (
    ICON_PATH,
    PYPROJECT_FILE,
    REQUIREMENTS_FILE,
    default_engine_venv,
    engine_environment,
    set_engine_python,
)

# Imported by the check after installing: the engine's command line and its heavy parts.
ENGINE_CHECK = (
    "import json, torch, numpy, landcover.engine.cli; "
    "print(json.dumps({'torch': torch.__version__, 'numpy': numpy.__version__, "
    "'cuda': torch.cuda.is_available()}))"
)
_PIP_STEP = re.compile(r"^(Collecting|Requirement already satisfied|Processing) ")


def engine_requirements() -> list[str]:
    """The engine's pinned requirements (the zip's requirements file, else pyproject.toml)."""
    if REQUIREMENTS_FILE.is_file():
        lines = REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if PYPROJECT_FILE.is_file():
        import tomllib

        with PYPROJECT_FILE.open("rb") as file:
            return list(tomllib.load(file)["project"]["dependencies"])
    raise QgsProcessingException(
        f"The plugin lacks its list of engine requirements ({REQUIREMENTS_FILE.name}): "
        "reinstall the plugin from its zip."
    )


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def base_python() -> str | None:
    """An interpreter of the Python QGIS runs (same version, so it sees GDAL's bindings).

    Inside QGIS ``sys.executable`` may be QGIS itself, or whatever ``python3`` comes first
    on PATH, so the interpreter beside QGIS's own standard library comes first.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    prefixes = (Path(sys.exec_prefix), Path(sys.base_exec_prefix))
    if os.name == "nt":
        candidates = [prefix / "python.exe" for prefix in prefixes]
    else:
        candidates = [prefix / "bin" / f"python{version}" for prefix in prefixes]
    candidates.append(Path(sys.executable))
    for candidate in candidates:
        if candidate.is_file() and candidate.name.lower().startswith("python"):
            return str(candidate)
    return shutil.which(f"python{version}")


class SetUpEngineAlgorithm(QgsProcessingAlgorithm):
    VENV = "VENV"
    BASE_PYTHON = "BASE_PYTHON"
    REQUIREMENTS = "REQUIREMENTS"
    PIP_OPTIONS = "PIP_OPTIONS"
    PYTHON = "PYTHON"

    def name(self) -> str:
        return "setupengine"

    def displayName(self) -> str:
        return "Set up engine"

    def group(self) -> str:
        return "Set-up"

    def groupId(self) -> str:
        return "setup"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def createInstance(self) -> SetUpEngineAlgorithm:
        return SetUpEngineAlgorithm()

    def flags(self):
        # One environment at a time: batch runs would install into it side by side.
        flags = super().flags() | QgsProcessingAlgorithm.Flag.FlagCanCancel
        return flags & ~QgsProcessingAlgorithm.Flag.FlagSupportsBatch

    def shortHelpString(self) -> str:
        return (
            "Makes the Python environment that runs the land cover engine, once after "
            "installing the plugin: a venv that also sees QGIS's Python packages, with the "
            "engine's pinned requirements (PyTorch, numpy, rasterio, shapely, safetensors, "
            "numba) installed by pip. It needs the internet (or a package mirror configured "
            "for pip) and about 1 GB of disk; afterwards 'Segment land cover' uses it.\n\n"
            "<b>Environment folder</b>: where the venv goes (blank: inside the QGIS "
            "profile). Running again on the same folder updates it.\n"
            "<b>Base Python</b>: the interpreter to make it from (blank: QGIS's own).\n"
            "<b>Requirements file</b> (advanced): pip requirements to install instead of "
            "the pinned ones, e.g. a CUDA build of PyTorch.\n"
            "<b>Extra pip options</b> (advanced): e.g. --index-url or --extra-index-url of "
            "a mirror.\n\n"
            "The interpreter is saved in Settings > Options > Processing > Providers > "
            "Land cover; the LANDCOVER_PYTHON environment variable overrides it."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFile(
                self.VENV, f"Environment folder (blank: {default_engine_venv()})",
                behavior=QgsProcessingParameterFile.Behavior.Folder, optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.BASE_PYTHON, "Base Python (blank: QGIS's own)", optional=True,
            )
        )
        requirements = QgsProcessingParameterFile(
            self.REQUIREMENTS, "Requirements file (blank: the engine's pinned requirements)",
            extension="txt", optional=True,
        )
        pip_options = QgsProcessingParameterString(
            self.PIP_OPTIONS, "Extra pip options", optional=True
        )
        for parameter in (requirements, pip_options):
            parameter.setFlags(
                parameter.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced
            )
            self.addParameter(parameter)
        self.addOutput(QgsProcessingOutputFile(self.PYTHON, "Engine interpreter"))

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        venv = Path(self.parameterAsFile(parameters, self.VENV, context) or default_engine_venv())
        base = self.parameterAsFile(parameters, self.BASE_PYTHON, context) or base_python()
        if not base or not Path(base).is_file():
            raise QgsProcessingException(
                "Cannot find a Python interpreter to make the environment from: give one "
                "in 'Base Python' (Python 3.10 or newer)."
            )
        python = venv_python(venv)

        feedback.setProgressText("Creating the Python environment")
        if python.is_file():
            feedback.pushInfo(f"Updating the existing environment {venv}")
        else:
            venv.parent.mkdir(parents=True, exist_ok=True)
            self._run(
                [base, "-m", "venv", "--system-site-packages", str(venv)],
                feedback,
                "creating the environment",
                hint=(
                    "On Debian and Ubuntu the venv module comes in a separate package: "
                    "sudo apt install python3-venv."
                ),
            )
        feedback.setProgress(5)

        feedback.setProgressText("Installing the engine's requirements")
        requirements_file = self.parameterAsFile(parameters, self.REQUIREMENTS, context)
        wanted = ["-r", requirements_file] if requirements_file else engine_requirements()
        options = shlex.split(self.parameterAsString(parameters, self.PIP_OPTIONS, context))
        steps = 0

        def on_pip_line(line: str) -> None:
            nonlocal steps
            feedback.pushConsoleInfo(line)
            if _PIP_STEP.match(line):
                steps += 1  # the total is unknown (dependencies): approach 75 % gently
                feedback.setProgress(5 + 70 * (1 - 0.85**steps))
            elif line.startswith("Installing collected packages"):
                feedback.setProgress(80)

        self._run(
            [str(python), "-m", "pip", "install", "--progress-bar", "off", *options, *wanted],
            feedback,
            "installing the engine's requirements",
            on_line=on_pip_line,
            hint="Check the internet connection (or give a mirror in 'Extra pip options').",
        )
        feedback.setProgress(95)

        feedback.setProgressText("Checking that the engine starts")
        report: list[str] = []
        self._run(
            [str(python), "-c", ENGINE_CHECK],
            feedback,
            "checking that the engine starts in the new environment",
            on_line=report.append,
        )
        feedback.pushInfo(f"Engine check: {' '.join(report)}")
        set_engine_python(str(python))
        feedback.pushInfo(f"'Segment land cover' now runs the engine with {python}")
        feedback.setProgress(100)
        return {self.PYTHON: str(python)}

    @staticmethod
    def _run(
        command: list[str],
        feedback: QgsProcessingFeedback,
        step: str,
        on_line: Callable[[str], None] | None = None,
        hint: str = "",
    ) -> None:
        """Run one step's command; its failure or cancellation ends the algorithm."""
        feedback.pushCommandInfo(shlex.join(command))
        outcome = run_child(
            command, feedback, on_line or feedback.pushConsoleInfo, env=engine_environment()
        )
        if outcome.cancelled:
            raise QgsProcessingException(f"Cancelled while {step}.")
        if outcome.returncode != 0:
            last = next((line for line in reversed(outcome.stderr_tail) if line.strip()), "")
            raise QgsProcessingException(
                f"{step[0].upper()}{step[1:]} failed (exit status {outcome.returncode}): "
                f"{last} {hint}".strip()
            )
