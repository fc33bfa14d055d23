"""The model package: round trips, metadata validation, and every kind of bad file."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from landcover.engine.errors import ConfigError, ModelFileError, ModelFileNotFoundError
from landcover.engine.modelfile import (
    METADATA_KEY,
    BandInfo,
    ClassInfo,
    ModalityInfo,
    ModelMeta,
    inspect_model_package,
    load_model_package,
    read_model_meta,
    save_model_package,
)
from landcover.engine.models import create_model, to_deploy
from landcover.engine.presets import (
    MAX_CLASSES,
    PRESETS,
    distinct_palette,
    generic_classes,
    resolve_class_spec,
)

ARCH = "unetmamba_tiny"
SIZE = 64


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ARCH, num_classes=7, in_channels=3)


@pytest.fixture(scope="module")
def meta(model: torch.nn.Module) -> ModelMeta:
    preset = PRESETS["loveda"]
    return ModelMeta.for_model(
        model,
        classes=preset.classes,
        bands=preset.bands,
        gsd_m=preset.gsd_m,
        tile_size=256,
        tile_overlap=32,
        training={"dataset": "loveda", "metrics": {"miou": 0.5}, "steps": 10},
    )


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def expected(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return to_deploy(model).eval()(inputs)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory, model, meta) -> Path:
    path = tmp_path_factory.mktemp("package") / "model.lcm"
    save_model_package(path, model, meta)
    return path


def _rewrite(path: Path, out: Path, *, edit_meta=None, edit_tensors=None) -> Path:
    """Copy a package with edited metadata/tensors, keeping the checksum valid."""
    tensors = load_file(path)
    with safe_open(path, "pt") as reader:
        document = json.loads(reader.metadata()[METADATA_KEY])
    if edit_tensors is not None:
        edit_tensors(tensors)
    if edit_meta is not None:
        edit_meta(document)
    blob = save(tensors)
    (header_bytes,) = struct.unpack("<Q", blob[:8])
    document["weights"]["sha256"] = hashlib.sha256(blob[8 + header_bytes:]).hexdigest()
    save_file(tensors, out, metadata={METADATA_KEY: json.dumps(document)})
    return out


# --------------------------------------------------------------------------- round trips


def test_round_trip_gives_identical_outputs(package, meta, inputs, expected):
    loaded = load_model_package(package)
    assert loaded.meta == meta
    assert not loaded.model.training
    assert not getattr(loaded.model, "has_aux", False)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.model(inputs), expected)


def test_save_keeps_the_callers_training_form(model, tmp_path, meta):
    save_model_package(tmp_path / "m.lcm", model, meta)
    assert model.has_aux
    saved = inspect_model_package(tmp_path / "m.lcm").parameter_count
    assert sum(p.numel() for p in model.parameters()) > saved


def test_half_round_trip(model, meta, inputs, expected, package, tmp_path):
    path = tmp_path / "half.lcm"
    save_model_package(path, model, meta, half=True)
    assert path.stat().st_size < 0.6 * package.stat().st_size
    info = inspect_model_package(path)
    assert info.weight_dtypes == ["F16"]
    loaded = load_model_package(path)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    with torch.no_grad():
        output = loaded.model(inputs)
    torch.testing.assert_close(output, expected, rtol=2e-2, atol=2e-2 * expected.abs().max())


def test_read_model_meta_reads_the_header_only(package, meta):
    assert read_model_meta(package) == meta
    script = (
        "import sys\n"
        "from landcover.engine.modelfile import read_model_meta\n"
        f"meta = read_model_meta({str(package)!r})\n"
        "assert meta.arch == 'unetmamba_tiny', meta.arch\n"
        "assert 'torch' not in sys.modules, 'read_model_meta imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_parameter_count_from_header_matches_the_deploy_model(package, model):
    info = inspect_model_package(package)
    assert info.parameter_count == sum(p.numel() for p in to_deploy(model).parameters())


@pytest.mark.parametrize("name", ["model.safetensors", "model.bin", "model"])
def test_extension_is_not_enforced(name, model, meta, tmp_path, inputs, expected):
    path = tmp_path / name
    save_model_package(path, model, meta)
    with torch.no_grad():
        assert torch.equal(load_model_package(path).model(inputs), expected)


def test_save_is_atomic_and_leaves_no_temporary_files(model, meta, tmp_path):
    path = tmp_path / "m.lcm"
    save_model_package(path, model, meta)
    before = path.read_bytes()
    broken = create_model(ARCH, num_classes=7, in_channels=3)
    with torch.no_grad():
        next(broken.parameters())[0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        save_model_package(path, broken, meta)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.lcm"]


def test_save_refuses_metadata_of_another_model(model, meta, tmp_path):
    other = create_model(ARCH, num_classes=6, in_channels=3)
    with pytest.raises(ConfigError, match="does not match"):
        save_model_package(tmp_path / "m.lcm", other, meta)


def test_modalities_round_trip(tmp_path):
    model = create_model(ARCH, num_classes=2, in_channels=3)
    meta = ModelMeta.for_model(
        model,
        classes=generic_classes(2),
        bands=[BandInfo("red", 0, 1, 0.665), BandInfo("nir", 0, 1, 0.842), BandInfo("vv", 0, 1)],
        modalities=[ModalityInfo("optical", ("red", "nir")), ModalityInfo("sar", ("vv",))],
    )
    save_model_package(tmp_path / "m.lcm", model, meta)
    assert read_model_meta(tmp_path / "m.lcm") == meta


# --------------------------------------------------------------------------- bad files


def _assert_one_line_error(path: Path, error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    for word in words:
        assert word in message


# name -> (writes the file, words the error must contain)
BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)), "PNG"),
    "torch checkpoint": (lambda p: torch.save({"weight": torch.zeros(2)}, p), "zip"),
    "pickle": (lambda p: p.write_bytes(pickle.dumps({"w": [0.0]}, protocol=2)), "pickle"),
    "text": (lambda p: p.write_text("hello, this is not a model\n"), "not a landcover"),
    "bare safetensors": (
        lambda p: save_file({"weight": torch.zeros(2)}, p), "without landcover metadata"
    ),
    "one byte": (lambda p: p.write_bytes(b"\x05"), "not a landcover"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_wrong_format_files(case, tmp_path):
    make, words = BAD_FILES[case]
    path = tmp_path / "model.lcm"
    make(path)
    for reader in (read_model_meta, load_model_package):
        with pytest.raises(ModelFileError) as error:
            reader(path)
        _assert_one_line_error(path, error, words)


@pytest.mark.parametrize("keep", [20, 2000, -100, -1])
def test_truncated_file(keep, package, tmp_path):
    path = tmp_path / "cut.lcm"
    path.write_bytes(package.read_bytes()[:keep])
    with pytest.raises(ModelFileError) as error:
        load_model_package(path)
    _assert_one_line_error(path, error, "truncated")


def test_trailing_bytes(package, tmp_path):
    path = tmp_path / "long.lcm"
    path.write_bytes(package.read_bytes() + b"\x00" * 10)
    with pytest.raises(ModelFileError) as error:
        load_model_package(path)
    _assert_one_line_error(path, error, "unexpected bytes")


def test_corrupted_weights_fail_the_checksum(package, tmp_path):
    data = bytearray(package.read_bytes())
    data[-1000] ^= 0xFF
    path = tmp_path / "flipped.lcm"
    path.write_bytes(bytes(data))
    read_model_meta(path)  # the header is intact
    with pytest.raises(ModelFileError) as error:
        load_model_package(path)
    _assert_one_line_error(path, error, "corrupted weights")


def test_corrupted_header(package, tmp_path):
    data = bytearray(package.read_bytes())
    position = data.index(b'"dtype"')
    data[position : position + 7] = b"#######"
    path = tmp_path / "header.lcm"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as error:
        read_model_meta(path)
    _assert_one_line_error(path, error, "corrupted header")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileNotFoundError) as missing:
        load_model_package(tmp_path / "nope.lcm")
    assert isinstance(missing.value, FileNotFoundError)
    _assert_one_line_error(tmp_path / "nope.lcm", missing)
    with pytest.raises(ModelFileError) as folder:
        read_model_meta(tmp_path)
    _assert_one_line_error(tmp_path, folder, "folder")


def _drop_last_class(document):
    document["classes"] = document["classes"][:-1]
    document["arch_config"]["num_classes"] -= 1


MISMATCHES = {
    "unknown arch": ({"edit_meta": lambda d: d.update(arch="no_such_net")}, "no_such_net"),
    "bad arch config": (
        {"edit_meta": lambda d: d["arch_config"].update(bogus=1)}, "does not accept"
    ),
    "wrong shapes": ({"edit_meta": _drop_last_class}, "wrong shape"),
    "missing weights": (
        {"edit_tensors": lambda t: t.pop(sorted(t)[0])}, "missing"
    ),
    "unexpected weights": (
        {"edit_tensors": lambda t: t.update(extra=torch.zeros(3))}, "unexpected: extra"
    ),
    "bad colour": (
        {"edit_meta": lambda d: d["classes"][0].update(color=[300, 0, 0])}, "color"
    ),
    "newer format": ({"edit_meta": lambda d: d.update(format_version=99)}, "update landcover"),
    "other format": ({"edit_meta": lambda d: d.update(format="other")}, "another format"),
    "unknown key": ({"edit_meta": lambda d: d.update(colour_map="x")}, "colour_map"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_mismatched_files(case, package, tmp_path):
    edits, words = MISMATCHES[case]
    path = _rewrite(package, tmp_path / "edited.lcm", **edits)
    with pytest.raises(ModelFileError) as error:
        load_model_package(path)
    _assert_one_line_error(path, error, words)


# --------------------------------------------------------------------------- metadata


def _meta(**changes) -> ModelMeta:
    fields = {
        "arch": ARCH,
        "arch_config": {"num_classes": 2, "in_channels": 1},
        "classes": generic_classes(2),
        "bands": [BandInfo("pan", 100.0, 50.0)],
    }
    fields.update(changes)
    return ModelMeta(**fields)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"classes": [ClassInfo(1, "a", (0, 0, 0)), ClassInfo(0, "b", (1, 1, 1))]}, "in order"),
        ({"ignore_index": 1}, "ignore_index"),
        ({"tile_size": 100}, "multiple of 32"),
        ({"tile_overlap": 300}, "tile_overlap"),
        ({"gsd_m": -1.0}, "gsd_m"),
        ({"arch_config": {"num_classes": 3, "in_channels": 1}}, "num_classes"),
        ({"bands": [BandInfo("a", 0, 1), BandInfo("a", 0, 1)]}, "unique"),
        ({"modalities": [ModalityInfo("optical", ("x",))]}, "modalities"),
        ({"training": {"when": object()}}, "JSON"),
    ],
)
def test_meta_validation(changes, words):
    with pytest.raises(ConfigError, match=words):
        _meta(**changes)


def test_meta_dict_round_trip():
    meta = _meta(gsd_m=0.5, training={"a": [1, 2]})
    assert ModelMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta


@pytest.mark.parametrize(
    ("mean", "std", "words"),
    [(0.0, 0.0, "std"), (float("nan"), 1.0, "mean"), (0.0, -1.0, "std")],
)
def test_band_validation(mean, std, words):
    with pytest.raises(ConfigError, match=words):
        BandInfo("b", mean, std)


# --------------------------------------------------------------------------- presets


def test_presets():
    loveda = PRESETS["loveda"]
    assert [c.name for c in loveda.classes] == [
        "background", "building", "road", "water", "barren", "forest", "agriculture",
    ]
    assert loveda.classes[4].color == (159, 129, 183)
    assert loveda.gsd_m == 0.3
    for name, gsd in (("vaihingen", 0.09), ("potsdam", 0.05)):
        preset = PRESETS[name]
        assert preset.gsd_m == gsd
        assert [c.color for c in preset.classes] == [
            (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0),
        ]
    assert resolve_class_spec("LoveDA") is loveda
    assert resolve_class_spec("5") == 5
    for bad in ("1", "256", "cityscapes"):
        with pytest.raises(ConfigError):
            resolve_class_spec(bad)


def test_generic_palette_is_distinct():
    palette = distinct_palette(MAX_CLASSES)
    assert len(set(palette)) == MAX_CLASSES
    assert all(0 <= c <= 255 for color in palette for c in color)
    assert distinct_palette(5) == palette[:5]
    assert [c.name for c in generic_classes(3)] == ["class_0", "class_1", "class_2"]
