"""``landcover benchmark models --compare``: several models timed in one process, with
parameters, MACs and peak memory from a child process per model."""

from __future__ import annotations

import json

import pytest

from landcover.engine.benchmarks.models import _check_arguments
from landcover.engine.cli import build_parser, main
from landcover.engine.flops import count_macs
from landcover.engine.models import create_model, list_models, to_deploy

ARCH = "unetmamba_tiny"


def _compare(capsys, *options, json_output=True):
    argv = ["benchmark", "models", "--compare", *options, "--size", "64", "--repeats", "3"]
    code = main(argv + (["--json"] if json_output else []))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_one_run_reports_size_speed_and_memory_of_every_model(capsys):
    # upseg is multi-modal: it keeps its builder's default bands (3) while the others take
    # --in-channels
    report = json.loads(_compare(capsys, "--models", ARCH, "unetformer", "upseg",
                                 "--in-channels", "4"))
    assert report["failures"] == [] and report["repeats"] == 3
    assert report["baseline"] == "unetformer"
    assert report["peak_memory_kind"] == "peak RSS increase"
    tiny, unetformer, _ = report["models"]
    assert [r["model"] for r in report["models"]] == [ARCH, "unetformer", "upseg"]
    assert [r["in_channels"] for r in report["models"]] == [4, 4, 3]
    assert unetformer["relative_latency"] == 1.0
    assert tiny["relative_latency"] == pytest.approx(tiny["latency_ms"] / unetformer["latency_ms"])
    for result in report["models"]:
        assert len(result["latency_rounds_ms"]) == 3 and result["latency_ms"] > 0
        assert sorted(result["latency_rounds_ms"])[1] == pytest.approx(result["latency_ms"])
        assert result["megapixels_per_s"] == pytest.approx(64 * 64 / 1e6
                                                           / (result["latency_ms"] / 1e3))
        assert result["params_train"] >= result["params_deploy"] > 0
        assert result["counted_gmacs"] > 0 and result["peak_memory_mb"] > 0
        assert result["total_gmacs"] == pytest.approx(
            result["counted_gmacs"] + result["scan_gmacs"]
        )
        assert result["gflops"] == pytest.approx(2 * result["total_gmacs"])
    assert tiny["params_train"] > tiny["params_deploy"]  # its train-only LSM heads
    assert tiny["scan_gmacs"] > 0 and unetformer["scan_gmacs"] == 0

    # the same counts as building and counting the model here
    train_model = create_model(ARCH, num_classes=6, in_channels=4)
    deploy_model = to_deploy(train_model)
    macs = count_macs(deploy_model, (1, 4, 64, 64))
    assert tiny["params_train"] == sum(p.numel() for p in train_model.parameters())
    assert tiny["params_deploy"] == sum(p.numel() for p in deploy_model.parameters())
    assert tiny["counted_gmacs"] == pytest.approx(macs["counted_macs"] / 1e9)
    assert tiny["scan_gmacs"] == pytest.approx(macs["scan_macs"] / 1e9)


def test_the_first_model_is_the_baseline_otherwise_and_a_table_by_default(capsys):
    lines = _compare(capsys, "--models", ARCH, "upseg", json_output=False).splitlines()
    assert lines[0].startswith("input 1x3x64x64 fp32, 6 classes, device cpu")
    header_index = lines.index("") + 1
    assert lines[header_index].split("  ")[0] == "model"
    header = [cell for cell in lines[header_index].split("  ") if cell]
    assert [cell.strip() for cell in header] == [
        "model", "bands", "params train", "params deploy", "GMACs counted+scan=total",
        "latency ms", "MP/s", f"x {ARCH}", "peak MB",
    ]
    rows = {line.split()[0]: line.split() for line in lines[header_index + 1:]}
    assert list(rows) == [ARCH, "upseg"]
    assert rows[ARCH][7] == "1.00" and float(rows["upseg"][7]) > 0
    assert all(row[1] == "3" and float(row[8]) > 0 for row in rows.values())


@pytest.mark.parametrize("compare", [True, False])
def test_compare_takes_every_full_model_by_default(compare):
    argv = ["benchmark", "models", *(["--compare"] if compare else [])]
    names = _check_arguments(build_parser(argv).parse_args(argv))
    tiny = [name for name in list_models() if name.endswith("_tiny")]
    assert tiny and "unetformer" in names
    if compare:
        assert names == [name for name in list_models() if name not in tiny]
    else:
        assert names == list_models()
    argv += ["--models", *tiny]
    assert _check_arguments(build_parser(argv).parse_args(argv)) == tiny
