"""``landcover segment`` through the real entry point: output modes and one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from osgeo import gdal
from segment_helpers import (
    LANDSAT,
    LANDSAT_FILL,
    NAIP,
    NO_GEOREF,
    RGB_BYTE,
    SAR_COMPLEX,
    SN6_PAN,
    STATS,
    make_package,
)

from landcover.engine.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("models") / "rgb.lcm")


def _segment(capsys, *argv):
    code = main(["segment", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_on_stdout_and_log_on_stderr(tmp_path, capsys, model):
    code, out, err = _segment(capsys, RGB_BYTE, "--model", model, "--out-raster",
                              tmp_path / "c.tif", "--out-vector", tmp_path / "p.gpkg")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["class", "pixels", "area", "(m2)", "share"]
    assert [line.split()[:2] for line in lines[1:5]] == [["class", str(i)] for i in range(4)]
    assert lines[5].startswith("nodata") and lines[-1].startswith(f"wrote {tmp_path / 'c.tif'}")
    assert "polygons" in lines[-1]
    assert "landcover: device: cpu" in err and "1 forward pass per tile" in err


def test_json_summary(tmp_path, capsys, model):
    code, out, _ = _segment(capsys, RGB_BYTE, "--model", model, "--out-raster",
                            tmp_path / "c.tif", "--tta", "flip", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["passes_per_tile"] == 3 and summary["area_unit"] == "m2"
    assert summary["areas_json"] == str(tmp_path / "c.areas.json")
    assert [c["name"] for c in summary["classes"]] == [f"class {i}" for i in range(4)]
    assert {"read", "model", "blend", "write", "total"} <= summary["seconds"].keys()


def test_progress_json_lines(tmp_path, capsys, model):
    code, out, err = _segment(capsys, RGB_BYTE, "--model", model, "--out-raster",
                              tmp_path / "c.tif", "--progress-json")
    assert code == 0 and err == ""
    messages = [json.loads(line) for line in out.splitlines()]
    kinds = {m["type"] for m in messages}
    assert kinds == {"log", "progress", "result"} and messages[-1]["type"] == "result"
    fractions = [m["fraction"] for m in messages if m["type"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    result = messages[-1]
    assert result["out_raster"] == str(tmp_path / "c.tif")
    assert all({"id", "name", "color", "pixels", "area_m2", "percent"} <= c.keys()
               for c in result["classes"])


def test_progress_json_reports_errors(tmp_path, capsys, model):
    code, out, err = _segment(capsys, tmp_path / "missing.tif", "--model", model,
                              "--out-raster", tmp_path / "c.tif", "--progress-json")
    assert code == 2
    assert json.loads(out.splitlines()[-1]) == {
        "type": "error", "message": f"input raster {tmp_path / 'missing.tif'} does not exist; "
                                    "check the path",
    }
    assert err.startswith("landcover: error: input raster")


def _vector_file(tmp_path):
    from osgeo import ogr

    path = tmp_path / "points.gpkg"
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    dataset.CreateLayer("points", None, ogr.wkbPoint)
    dataset = None
    return path


BAD_INPUTS = {
    "missing file": (lambda t: [t / "missing.tif"], [], "does not exist"),
    "text file": (lambda t: [_text_file(t)], [], "is not a raster GDAL can read"),
    "vector file": (lambda t: [_vector_file(t)], [], "not a raster"),
    "complex SAR": (lambda t: [SAR_COMPLEX], [], "complex-valued bands"),
    "band count": (lambda t: [NAIP], [], "expects 3 bands .* pass --bands"),
    "too few bands": (lambda t: [SN6_PAN], [], "use a model made for these bands"),
    "bad --bands": (lambda t: [NAIP], ["--bands", "1,2,7"], "--bands 7"),
    "output folder missing": (lambda t: [RGB_BYTE], ["--out-raster", "{tmp}/no/c.tif"],
                              "folder .* does not exist"),
    "output is a folder": (lambda t: [RGB_BYTE], ["--out-raster", "{tmp}"], "is a folder"),
    "output is the input": (lambda t: [RGB_BYTE], ["--out-raster", str(RGB_BYTE)],
                            "is an input"),
    "tile size": (lambda t: [RGB_BYTE], ["--tile", "100"], "multiple of 32"),
    "overlap": (lambda t: [RGB_BYTE], ["--overlap", "100"], "half the tile"),
    "gsd": (lambda t: [RGB_BYTE], ["--gsd", "fine"], "use auto, native or a size"),
    "device": (lambda t: [RGB_BYTE], ["--device", "tpu"], "unknown device|unsupported"),
    "model": (lambda t: [RGB_BYTE], ["--model", str(NAIP)], "not a landcover model package"),
    "simplify without vector": (lambda t: [RGB_BYTE], ["--simplify", "5"], "--out-vector"),
}


def _text_file(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not a raster\n")
    return path


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, model, case):
    inputs, extra, message = BAD_INPUTS[case]
    options = {"--model": str(model), "--out-raster": str(tmp_path / "c.tif")}
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    for flag in ("--model", "--out-raster"):
        if flag in extra:
            options[flag] = extra[extra.index(flag) + 1]
            del extra[extra.index(flag): extra.index(flag) + 2]
    argv = [*inputs(tmp_path), *[x for pair in options.items() for x in pair], *extra]
    code, _, err = _segment(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landcover: error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "c.tif").exists()


def test_no_georeferencing_is_allowed_with_a_warning(tmp_path, capsys, model):
    code, _, err = _segment(capsys, NO_GEOREF, "--model", model, "--out-raster",
                            tmp_path / "c.tif", "--out-vector", tmp_path / "p.gpkg")
    assert code == 0 and "warning: " in err and "no georeferencing" in err


def test_all_nodata_is_a_valid_empty_result(tmp_path, capsys):
    model = make_package(tmp_path / "landsat.lcm", stats=STATS["landsat"])
    code, out, _ = _segment(capsys, LANDSAT_FILL, "--model", model, "--out-raster",
                            tmp_path / "c.tif", "--out-vector", tmp_path / "p.gpkg",
                            "--nodata", "0", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["polygons"] == 0 and summary["tiles_run"] == 0
    assert summary["nodata_pixels"] == 64 * 64


def test_sigint_cancels_cleanly_in_a_child_process(tmp_path):
    """As the QGIS plugin stops the engine: SIGINT to the process group, exit 130."""
    model = make_package(tmp_path / "m.lcm", stats=STATS["landsat"], tile=64, overlap=0)
    old = tmp_path / "c.tif"
    old.write_bytes(b"an older result")
    process = subprocess.Popen(
        [sys.executable, "-m", "landcover.engine.cli", "segment", str(LANDSAT), "--model",
         str(model), "--out-raster", str(old), "--out-vector", str(tmp_path / "p.gpkg"),
         "--batch", "1", "--progress-json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    for line in process.stdout:
        if json.loads(line)["type"] == "progress":
            os.killpg(process.pid, signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert '"type": "error", "message": "cancelled' in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "m.lcm"]
    assert old.read_bytes() == b"an older result"
    assert gdal.Open(str(LANDSAT)) is not None
