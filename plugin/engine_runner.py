"""Talk to the engine's command line in a child process.

``<engine python> -m landcover.engine.cli segment ... --progress-json`` prints one JSON
object a line on stdout: ``progress`` (fraction), ``log`` (level, message), ``result``
(the run's summary) and ``error`` (one line). Exit status: 0 done, 2 a user error,
130 cancelled. This module turns those into QgsProcessingFeedback calls, a result dict,
or a QgsProcessingException that says what went wrong and what to do.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from landcover.plugin.child_process import ChildResult, run_child
from landcover.plugin.settings import SETUP_HINT, EnginePython, engine_environment, engine_python

ENGINE_MODULE = "landcover.engine.cli"
EXIT_CANCELLED = 130
# Files GDAL, QGIS and SQLite put beside an output; removed with it after a failed run.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", "-wal", "-shm", "-journal")
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")
_CLI_ERROR_PREFIX = "landcover: error: "


def engine_command(python: EnginePython, arguments: Sequence[str]) -> list[str]:
    return [python.path, "-m", ENGINE_MODULE, *arguments]


class EngineMessages:
    """Routes the engine's JSON lines to the feedback and keeps the result and error."""

    def __init__(self, feedback: QgsProcessingFeedback):
        self.feedback = feedback
        self.result: dict[str, Any] | None = None
        self.error: str | None = None

    def __call__(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or "type" not in message:
            if line.strip():
                self.feedback.pushConsoleInfo(line)
            return
        kind = message["type"]
        if kind == "progress":
            self.feedback.setProgress(100.0 * float(message.get("fraction", 0.0)))
        elif kind == "log":
            self._log(str(message.get("level", "info")), str(message.get("message", "")))
        elif kind == "result":
            self.result = message
        elif kind == "error":
            self.error = str(message.get("message", "")).strip() or None

    def _log(self, level: str, text: str) -> None:
        if level == "warning":
            self.feedback.pushWarning(text)
        elif level == "error":
            self.feedback.reportError(text, False)
        elif level == "debug":
            self.feedback.pushDebugInfo(text)
        else:
            self.feedback.pushInfo(text)


def run_engine(arguments: Sequence[str], feedback: QgsProcessingFeedback) -> dict[str, Any]:
    """Run ``landcover ARGUMENTS --progress-json`` and return its ``result`` message.

    Raises QgsProcessingException when it cannot start, fails, is cancelled, or ends
    without a result.
    """
    python = engine_python()
    messages = EngineMessages(feedback)
    command = engine_command(python, [*arguments, "--progress-json"])
    feedback.pushCommandInfo(shlex.join(command))
    outcome = run_child(command, feedback, messages, env=engine_environment())
    if outcome.cancelled or outcome.returncode == EXIT_CANCELLED:
        raise QgsProcessingException("Cancelled: the engine was stopped before it finished.")
    if outcome.returncode != 0:
        raise QgsProcessingException(failure_message(python, outcome, messages.error))
    if messages.result is None:
        raise QgsProcessingException(
            f"The engine ({python.path}) finished without reporting a result: the plugin and "
            "the engine come from different versions; reinstall the plugin and run "
            "'Set up engine' again."
        )
    return messages.result


def failure_message(python: EnginePython, outcome: ChildResult, error: str | None) -> str:
    """One message for a failed engine run: its own error line, or what to install."""
    stderr = [line for line in outcome.stderr_tail if line.strip()]
    for line in reversed(stderr):
        missing = _MISSING_MODULE.search(line)
        if missing:
            module = missing.group(1).split(".")[0]
            what = (
                "the engine's code (the package 'landcover')"
                if module == "landcover"
                else f"the engine's requirement '{module}'"
            )
            return (
                f"The engine interpreter {python.path} (from {python.origin}) cannot import "
                f"{what}. {SETUP_HINT}"
            )
    if error is None:
        cli_errors = [line for line in stderr if line.startswith(_CLI_ERROR_PREFIX)]
        if cli_errors:
            error = cli_errors[-1][len(_CLI_ERROR_PREFIX):]
    if error is None and outcome.returncode < 0:
        error = (
            f"the engine was killed ({_signal_name(-outcome.returncode)}), as the system does "
            "when memory runs out: try a smaller batch size or tile size"
        )
    if error is None:
        last = stderr[-1] if stderr else "no error message"
        error = f"the engine stopped with exit status {outcome.returncode}: {last}"
    return error[:1].upper() + error[1:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def output_files(path: str | os.PathLike[str]) -> list[Path]:
    """An output file, the sidecars that belong to it, and the engine's unfinished copies.

    The engine writes each output under a hidden temporary name beside it
    (``.<stem>.<token>.partial<suffix>``, see engine/raster/writer.py) and renames it
    when the run is complete; a killed engine can leave those behind.
    """
    path = Path(path)
    files = [
        path,
        path.with_suffix(".qml"),
        path.with_suffix(".areas.json"),  # the engine's area table beside the class raster
        *(Path(f"{path}{suffix}") for suffix in SIDECAR_SUFFIXES),
    ]
    if path.parent.is_dir():
        files += sorted(path.parent.glob(f".{glob.escape(path.stem)}.*.partial*"))
    return files


@contextmanager
def removed_on_failure(paths: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """Remove what a failed or cancelled run wrote for ``paths`` (sidecars included).

    Files that the run did not touch (same size and time as before) stay, so a failed
    second run never deletes the result of a good first one.
    """
    before = {file: _stamp(file) for path in paths for file in output_files(path)}
    try:
        yield
    except BaseException:
        for path in paths:
            for file in output_files(path):
                if _stamp(file) not in (None, before.get(file)):
                    file.unlink(missing_ok=True)
        raise


def _stamp(file: Path) -> tuple[int, int] | None:
    try:
        status = file.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size
