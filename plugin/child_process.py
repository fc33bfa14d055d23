"""Run a child process from a Processing algorithm: stream its lines, honour Cancel.

The algorithm's thread polls a queue fed by one reader thread per pipe, so neither a
chatty stderr nor a silent stdout can block it, and Cancel is seen within ``poll_seconds``.
A child that crashes (or runs out of memory) only ends itself, never QGIS.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from qgis.core import QgsProcessingException, QgsProcessingFeedback

STDOUT = "stdout"
STDERR = "stderr"


@dataclass
class ChildResult:
    returncode: int
    cancelled: bool
    stderr_tail: list[str] = field(default_factory=list)


def run_child(
    command: Sequence[str],
    feedback: QgsProcessingFeedback,
    on_stdout_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    on_stderr_line: Callable[[str], None] | None = None,
    poll_seconds: float = 0.1,
    stop_grace_seconds: float = 10.0,
    stderr_tail_lines: int = 40,
) -> ChildResult:
    """Run ``command`` to its end, or until ``feedback`` is cancelled.

    Each line the child prints goes to ``on_stdout_line`` / ``on_stderr_line`` (default:
    the log's console output) in the calling thread. On Cancel the child gets SIGINT (the
    engine then stops after its current batch and removes its unfinished outputs), and
    SIGKILL if it is still running ``stop_grace_seconds`` later.
    """
    if on_stderr_line is None:
        on_stderr_line = feedback.pushConsoleInfo
    posix = os.name == "posix"
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=None if env is None else dict(env),
            # its own process group: Cancel reaches any helpers it starts, and a Ctrl+C
            # meant for qgis_process's terminal does not hit it twice
            start_new_session=posix,
            creationflags=0 if posix else subprocess.CREATE_NO_WINDOW,
        )
    except OSError as error:
        raise QgsProcessingException(f"Cannot start {command[0]}: {error}") from error

    feedback.pushDebugInfo(f"Started process {process.pid}")
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
        for stream, name in ((process.stdout, STDOUT), (process.stderr, STDERR))
    ]
    for reader in readers:
        reader.start()

    stderr_tail: deque[str] = deque(maxlen=stderr_tail_lines)
    open_streams = len(readers)
    cancelled = False
    while open_streams:
        if not cancelled and feedback.isCanceled():
            cancelled = True
            _stop(process, stop_grace_seconds)
        try:
            name, line = lines.get(timeout=poll_seconds)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
        elif name == STDOUT:
            on_stdout_line(line)
        else:
            stderr_tail.append(line)
            on_stderr_line(line)
    returncode = process.wait()
    for reader in readers:
        reader.join()
    return ChildResult(returncode, cancelled or feedback.isCanceled(), list(stderr_tail))


def _pump(stream: IO[str], name: str, lines: queue.Queue[tuple[str, str | None]]) -> None:
    try:
        for line in stream:
            lines.put((name, line.rstrip("\r\n")))
    finally:
        stream.close()
        lines.put((name, None))


def _stop(process: subprocess.Popen, grace_seconds: float) -> None:
    if process.poll() is not None:
        return
    if os.name == "posix":
        _signal_group(process, signal.SIGINT)
    else:
        process.terminate()
    try:
        process.wait(timeout=grace_seconds)
        return
    except subprocess.TimeoutExpired:
        pass
    if os.name == "posix":
        _signal_group(process, signal.SIGKILL)
    else:
        process.kill()
    process.wait()


def _signal_group(process: subprocess.Popen, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal_number)
