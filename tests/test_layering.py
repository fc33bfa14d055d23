"""Import rules: the engine never imports qgis, PyQt or Lightning, and stays light to import.

Each check runs in a fresh interpreter, so modules loaded by other tests do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("qgis", "PyQt5", "PyQt6", "sip", "lightning", "pytorch_lightning")
# optional extras: modules that wrap them may fail to import where they are not installed
OPTIONAL = ("mamba_ssm", "causal_conv1d")


def _loaded_modules(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return set(json.loads(completed.stdout.splitlines()[-1]))


def _forbidden(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)


def _help_code(*argv: str) -> str:
    return (
        "import contextlib, io\n"
        "from landcover.engine.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({list(argv)!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
    )


def test_engine_import_and_help_are_light():
    modules = _loaded_modules("import landcover.engine\n" + _help_code("--help"))
    assert _forbidden(modules) == []
    assert "torch" not in modules
    assert "numpy" not in modules


def test_every_engine_module_and_command_help():
    code = (
        "import importlib, pkgutil\n"
        "import landcover.engine as engine\n"
        "for info in pkgutil.walk_packages(engine.__path__, 'landcover.engine.'):\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except ModuleNotFoundError as error:\n"
        f"        if error.name.split('.')[0] not in {OPTIONAL!r}:\n"
        "            raise\n"
        "from landcover.engine.commands import COMMANDS\n"
        "from landcover.engine.commands.benchmark import BENCHMARKS\n"
        "import contextlib, io\n"
        "from landcover.engine.cli import main\n"
        "helps = [[name, '--help'] for name in COMMANDS]\n"
        "helps += [['benchmark', kind, '--help'] for kind in BENCHMARKS]\n"
        "for argv in helps:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
    )
    modules = _loaded_modules(code)
    assert "landcover.engine.modelfile" in modules
    assert _forbidden(modules) == []


def test_public_api_is_lazy():
    modules = _loaded_modules(
        "import landcover.engine as engine\n"
        "assert callable(engine.read_model_meta)\n"
        "assert 'create_model' in dir(engine)\n"
    )
    assert "torch" not in modules
    modules = _loaded_modules(
        "import landcover.engine as engine\n"
        "assert engine.create_model is engine.models.create_model\n"
    )
    assert "torch" in modules and _forbidden(modules) == []
