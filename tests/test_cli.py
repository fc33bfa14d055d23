"""``landcover create``, ``info`` and ``benchmark models`` through the real entry points."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from landcover.engine.cli import main
from landcover.engine.modelfile import load_model_package
from landcover.engine.models import create_model

ARCH = "unetmamba_tiny"
CONSOLE_SCRIPT = Path(sys.executable).with_name("landcover")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_with_a_preset_then_info(tmp_path, capsys):
    path = tmp_path / "loveda.lcm"
    code, out, _ = _run(capsys, "create", "--arch", ARCH, "--classes", "loveda", "--out", str(path))
    assert code == 0
    assert out.count("\n") == 1 and out.startswith(f"wrote {path}: {ARCH}, 7 classes (loveda)")

    code, out, _ = _run(capsys, "info", str(path))
    assert code == 0
    info = json.loads(out)
    assert info["format"] == "landcover-model" and info["format_version"] == 1
    assert info["arch"] == ARCH
    assert [c["name"] for c in info["classes"]][:3] == ["background", "building", "road"]
    assert [b["name"] for b in info["bands"]] == ["red", "green", "blue"]
    assert info["bands"][0]["mean"] == pytest.approx(123.675)
    assert info["gsd_m"] == 0.3
    assert info["training"]["state"] == "untrained"
    assert info["weights_dtype"] == "F32"
    package = load_model_package(path)
    assert info["parameters"] == sum(p.numel() for p in package.model.parameters())


def test_create_custom_classes_and_bands(tmp_path, capsys):
    path = tmp_path / "custom.safetensors"
    code, _, _ = _run(
        capsys, "create", "--arch", ARCH, "--classes", "4", "--out", str(path),
        "--bands", "red,green,blue,nir", "--gsd", "0.5", "--tile", "256", "--overlap", "32",
        "--std", "50,50,50,60", "--half",
    )
    assert code == 0
    meta = load_model_package(path).meta
    assert meta.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert len({c.color for c in meta.classes}) == 4
    assert meta.band_names == ["red", "green", "blue", "nir"]
    assert [b.std for b in meta.bands] == [50, 50, 50, 60]
    assert meta.bands[3].mean == 127.5 and meta.bands[3].wavelength_um == pytest.approx(0.842)
    assert (meta.gsd_m, meta.tile_size, meta.tile_overlap) == (0.5, 256, 32)
    assert meta.arch_config["in_channels"] == 4
    code, out, _ = _run(capsys, "info", str(path))
    assert json.loads(out)["weights_dtype"] == "F16"


def test_create_multimodal_with_architecture_options(tmp_path, capsys):
    path = tmp_path / "fusion.lcm"
    code, out, _ = _run(
        capsys, "create", "--arch", "upseg", "--classes", "3", "--out", str(path),
        "--bands", "red,green,blue,vv,vh", "--modalities", "optical:3,sar:2",
        "--option", "embed_dims=[8,16,32,64]", "--option", "decoder_dim=16",
        "--option", "wave_dim=16", "--option", "weight_tokens=4",
    )
    assert code == 0, out
    meta = load_model_package(path).meta
    assert [(m.name, m.bands) for m in meta.modalities] == [
        ("optical", ("red", "green", "blue")), ("sar", ("vv", "vh"))
    ]
    assert meta.arch_config["modality_channels"] == [3, 2]
    assert meta.arch_config["embed_dims"] == [8, 16, 32, 64]


def test_create_is_reproducible(tmp_path, capsys):
    paths = [tmp_path / "a.lcm", tmp_path / "b.lcm"]
    for path in paths:
        assert _run(capsys, "create", "--arch", ARCH, "--classes", "3", "--out", str(path))[0] == 0
    models = [load_model_package(p).model for p in paths]
    for first, second in zip(models[0].state_dict().values(), models[1].state_dict().values(),
                             strict=True):
        assert torch.equal(first, second)


# our encoder names -> the published ResT checkpoint's (wofmanaf/ResT)
_REST_NAMES = (
    (r"^patch_embeds\.(\d)\.", lambda m: f"patch_embed_{int(m[1]) + 2}."),
    (r"^stages\.(\d)\.", lambda m: f"stage{int(m[1]) + 1}."),
    (r"\.pixel_attn\.conv\.", ".pos.pa_conv."),
    (r"\.attn\.head_mix\.", ".attn.transform_conv."),
)


def _rest_name(key: str) -> str:
    for pattern, replacement in _REST_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def test_create_with_encoder_weights(tmp_path, capsys):
    # a checkpoint in the published ResT-Lite layout, made from another model's encoder
    source = create_model(ARCH, num_classes=2)
    checkpoint = tmp_path / "rest_lite.safetensors"
    save_file({_rest_name(k): v for k, v in source.encoder.state_dict().items()}, checkpoint)
    path = tmp_path / "init.lcm"
    code, out, _ = _run(
        capsys, "create", "--arch", ARCH, "--classes", "3", "--out", str(path),
        "--encoder-weights", str(checkpoint),
    )
    assert code == 0 and out.rstrip().endswith("encoder initialised")
    package = load_model_package(path)
    assert package.meta.training["encoder_weights"] == "rest_lite.safetensors"
    for name, tensor in source.encoder.state_dict().items():
        assert torch.equal(package.model.encoder.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["create", "--arch", "nope", "--classes", "3", "--out", "{tmp}/m.lcm"], "unetmamba"),
        (["create", "--arch", ARCH, "--classes", "cityscapes", "--out", "{tmp}/m"], "loveda"),
        (["create", "--arch", ARCH, "--classes", "3", "--out", "{tmp}/m", "--tile", "100"],
         "multiple of 32"),
        (["create", "--arch", ARCH, "--classes", "3", "--out", "{tmp}/m", "--bands", "a,b",
          "--in-channels", "3"], "--in-channels"),
        (["create", "--arch", ARCH, "--classes", "3", "--out", "{tmp}/m", "--mean", "1,2"],
         "--mean"),
        (["create", "--arch", ARCH, "--classes", "3", "--out", "{tmp}/no/such/dir/m.lcm"],
         "does not exist"),
        (["create", "--arch", ARCH, "--classes", "3", "--out", "{tmp}/m",
          "--encoder-weights", "{png}"], "image.png"),
        (["create", "--arch", ARCH, "--classes", "3", "--out", "{tmp}/m",
          "--modalities", "a:2,b:1"], "not a multi-modal model"),
        (["create", "--arch", "upseg", "--classes", "3", "--out", "{tmp}/m",
          "--modalities", "optical:2"], "groups 2 bands"),
        (["create", "--arch", ARCH, "--classes", "3", "--out", "{tmp}/m",
          "--option", "widht=3"], "accepts"),
        (["info", "{tmp}/missing.lcm"], "no such model package"),
        (["info", "{tmp}"], "folder"),
        (["info", "{png}"], "PNG"),
        (["benchmark", "models", "--models", "nope"], "unetmamba"),
        (["benchmark", "models", "--models", ARCH, "--size", "100"], "multiple of 32"),
    ],
)
def test_user_errors_are_one_line(argv, words, tmp_path, capsys):
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    argv = [a.format(tmp=tmp_path, png=png) for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("landcover: error: ") and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_benchmark_cuda_without_gpu(capsys):
    code, _, err = _run(capsys, "benchmark", "models", "--models", ARCH, "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err and err.count("\n") == 1


def test_console_script(tmp_path):
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: run ./setup.sh"
    path = tmp_path / "m.lcm"
    created = subprocess.run(
        [CONSOLE_SCRIPT, "create", "--arch", ARCH, "--classes", "potsdam", "--out", path],
        capture_output=True, text=True, check=False,
    )
    assert created.returncode == 0, created.stderr
    info = subprocess.run(
        [CONSOLE_SCRIPT, "info", path], capture_output=True, text=True, check=False
    )
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["classes"][5]["name"] == "clutter"
    failed = subprocess.run(
        [CONSOLE_SCRIPT, "info", tmp_path / "missing.lcm"], capture_output=True, text=True,
        check=False,
    )
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr


def test_benchmark_models_json(capsys):
    code, out, _ = _run(
        capsys, "benchmark", "models", "--models", ARCH, "--size", "64", "--repeats", "1",
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["failures"] == []
    (result,) = report["models"]
    assert result["model"] == ARCH and result["size"] == 64 and result["device"] == "cpu"
    assert result["params_train"] > result["params_deploy"] > 0
    assert result["counted_gmacs"] > 0 and result["scan_gmacs"] > 0
    assert result["total_gmacs"] == pytest.approx(result["counted_gmacs"] + result["scan_gmacs"])
    assert result["gflops"] == pytest.approx(2 * result["total_gmacs"])
    for key in ("latency_ms", "megapixels_per_s", "conv_gmacs_per_s", "flop_limit_ratio"):
        assert result[key] > 0, key
    assert result["peak_memory_mb"] >= 0
    assert result["scan_backend"]
    assert result["fallback"]["flop_limit_ratio"] > 0
    expected_ratio = result["latency_ms"] / 1e3 / (
        result["total_gmacs"] / result["conv_gmacs_per_s"]
    )
    assert result["flop_limit_ratio"] == pytest.approx(expected_ratio)
