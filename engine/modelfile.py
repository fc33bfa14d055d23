"""The model package: one safetensors file holding a model's weights and what it needs to run.

Layout: a standard safetensors file (8-byte header length, JSON header, raw tensor data).
The header's ``__metadata__`` holds one entry, ``"landcover"``, a JSON document with the
format name and version, the architecture and its config, the classes (id, name, colour),
the ignore index, the input bands (name, normalisation ``(raw - mean) / std``, optional
wavelength), the ground sample distance, the recommended tile size and overlap, optional
modalities, free-form training information, and a SHA-256 of the tensor data.

Loading never runs code from the file (no pickle); the weights are always the deploy form
(train-only heads dropped). Every problem with a file is reported as one
:class:`~landcover.engine.errors.ModelFileError` line that names the file.

Only the standard library is imported at module level: :func:`read_model_meta` and
:func:`inspect_model_package` read the header without torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from landcover.engine.errors import ConfigError, ModelFileError, ModelFileNotFoundError

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT_NAME = "landcover-model"
FORMAT_VERSION = 1
METADATA_KEY = "landcover"
# safetensors refuses headers above 100 MB; anything larger is not a package.
_MAX_HEADER_BYTES = 100_000_000
_SIZE_PREFIX = 8
# The input side of every architecture must be a multiple of this (five 2x downsamplings).
INPUT_MULTIPLE = 32

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- metadata


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_keys(where: str, data: Any, required: set[str], optional: set[str]) -> None:
    _check(isinstance(data, dict), f"{where} must be a JSON object")
    missing = required - data.keys()
    unknown = data.keys() - required - optional
    _check(not missing, f"{where} lacks {', '.join(sorted(missing))}")
    _check(not unknown, f"{where} has unknown entries {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class ClassInfo:
    """One output class: ``id`` is the model's output channel and the class raster value."""

    id: int
    name: str
    color: RGB

    def __post_init__(self) -> None:
        _check(_is_int(self.id) and self.id >= 0, f"class id {self.id!r} must be an int >= 0")
        _check(
            isinstance(self.name, str) and self.name.strip() != "",
            f"class {self.id}: name must be a non-empty string",
        )
        color = tuple(self.color) if isinstance(self.color, list | tuple) else ()
        _check(
            len(color) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in color),
            f"class {self.name!r}: color must be three ints 0..255, got {self.color!r}",
        )
        object.__setattr__(self, "color", color)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "color": list(self.color)}

    @classmethod
    def from_dict(cls, data: Any) -> ClassInfo:
        _check_keys("a class entry", data, {"id", "name", "color"}, set())
        return cls(data["id"], data["name"], data["color"])


@dataclass(frozen=True)
class BandInfo:
    """One input band: the model sees ``(raw - mean) / std``."""

    name: str
    mean: float
    std: float
    # Central wavelength in micrometres, when the band has one (not for e.g. SAR or DEM).
    wavelength_um: float | None = None

    def __post_init__(self) -> None:
        _check(
            isinstance(self.name, str) and self.name.strip() != "",
            "band name must be a non-empty string",
        )
        _check(_is_number(self.mean), f"band {self.name!r}: mean must be a finite number")
        _check(
            _is_number(self.std) and self.std > 0,
            f"band {self.name!r}: std must be a number > 0, got {self.std!r}",
        )
        _check(
            self.wavelength_um is None or (_is_number(self.wavelength_um)
                                           and self.wavelength_um > 0),
            f"band {self.name!r}: wavelength_um must be a number > 0 or null",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mean": self.mean,
            "std": self.std,
            "wavelength_um": self.wavelength_um,
        }

    @classmethod
    def from_dict(cls, data: Any) -> BandInfo:
        _check_keys("a band entry", data, {"name", "mean", "std"}, {"wavelength_um"})
        return cls(data["name"], data["mean"], data["std"], data.get("wavelength_um"))


@dataclass(frozen=True)
class ModalityInfo:
    """A group of input bands from one sensor (for multi-modal models)."""

    name: str
    bands: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(
            isinstance(self.name, str) and self.name.strip() != "",
            "modality name must be a non-empty string",
        )
        _check(
            isinstance(self.bands, list | tuple) and len(self.bands) > 0
            and all(isinstance(b, str) for b in self.bands),
            f"modality {self.name!r}: bands must be a non-empty list of band names",
        )
        object.__setattr__(self, "bands", tuple(self.bands))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bands": list(self.bands)}

    @classmethod
    def from_dict(cls, data: Any) -> ModalityInfo:
        _check_keys("a modality entry", data, {"name", "bands"}, set())
        return cls(data["name"], data["bands"])


_META_REQUIRED = {"arch", "arch_config", "classes", "bands"}
_META_OPTIONAL = {"ignore_index", "gsd_m", "tile_size", "tile_overlap", "modalities", "training"}


@dataclass
class ModelMeta:
    """Everything about a model except its weights; validated on construction and save."""

    arch: str
    arch_config: dict[str, Any]
    classes: list[ClassInfo]
    bands: list[BandInfo]
    # Label value that marks pixels without a class (no-data, boundaries); never a class id.
    ignore_index: int | None = 255
    gsd_m: float | None = None
    tile_size: int = 512
    tile_overlap: int = 64
    modalities: list[ModalityInfo] | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        self.bands = list(self.bands)
        if self.modalities is not None:
            self.modalities = list(self.modalities)
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def tiling(self, tile: int | None = None, overlap: int | None = None) -> tuple[int, int]:
        """Tile size and overlap to run with: the given ones, else the model's; an overlap
        left out for another tile size keeps the model's share of the tile."""
        if overlap is None:
            overlap = self.tile_overlap if tile is None else \
                self.tile_overlap * tile // self.tile_size
        return (self.tile_size if tile is None else tile), overlap

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistency."""
        _check(isinstance(self.arch, str) and self.arch != "", "arch must be a non-empty string")
        _check(isinstance(self.arch_config, dict), "arch_config must be a JSON object")
        try:
            json.dumps(self.arch_config, allow_nan=False)
            json.dumps(self.training, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"arch_config and training must be plain JSON: {error}") from None
        _check(isinstance(self.training, dict), "training must be a JSON object")
        _check(all(isinstance(c, ClassInfo) for c in self.classes), "classes must be ClassInfo")
        _check(all(isinstance(b, BandInfo) for b in self.bands), "bands must be BandInfo")
        _check(len(self.classes) >= 2, "a model needs at least 2 classes")
        ids = [c.id for c in self.classes]
        _check(
            ids == list(range(len(ids))),
            f"class ids must be 0..{len(ids) - 1} in order (they are output channels), got {ids}",
        )
        _check(len(self.bands) >= 1, "a model needs at least 1 input band")
        names = self.band_names
        _check(len(set(names)) == len(names), f"band names must be unique, got {names}")
        _check(
            self.ignore_index is None
            or (_is_int(self.ignore_index) and self.ignore_index not in ids),
            f"ignore_index {self.ignore_index!r} must be an int that is not a class id, or null",
        )
        _check(
            self.gsd_m is None or (_is_number(self.gsd_m) and self.gsd_m > 0),
            f"gsd_m must be a number > 0 or null, got {self.gsd_m!r}",
        )
        _check(
            _is_int(self.tile_size) and self.tile_size > 0
            and self.tile_size % INPUT_MULTIPLE == 0,
            f"tile_size must be a positive multiple of {INPUT_MULTIPLE}, got {self.tile_size!r}",
        )
        _check(
            _is_int(self.tile_overlap) and 0 <= self.tile_overlap <= self.tile_size // 2,
            f"tile_overlap must be an int in 0..tile_size/2 ({self.tile_size // 2}), "
            f"got {self.tile_overlap!r}",
        )
        for key, expected in (("num_classes", len(self.classes)), ("in_channels", len(names))):
            if key in self.arch_config:
                _check(
                    self.arch_config[key] == expected,
                    f"arch_config {key}={self.arch_config[key]!r} does not match the "
                    f"{expected} {'classes' if key == 'num_classes' else 'bands'} listed",
                )
        if self.modalities is not None:
            _check(
                all(isinstance(m, ModalityInfo) for m in self.modalities),
                "modalities must be ModalityInfo",
            )
            grouped = [b for m in self.modalities for b in m.bands]
            _check(
                sorted(grouped) == sorted(names),
                f"modalities must group every band exactly once; bands {names}, "
                f"modalities {[m.to_dict() for m in self.modalities]}",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "arch_config": self.arch_config,
            "classes": [c.to_dict() for c in self.classes],
            "ignore_index": self.ignore_index,
            "bands": [b.to_dict() for b in self.bands],
            "gsd_m": self.gsd_m,
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap,
            "modalities": (
                None if self.modalities is None else [m.to_dict() for m in self.modalities]
            ),
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelMeta:
        _check_keys("the metadata", data, _META_REQUIRED, _META_OPTIONAL)
        _check(isinstance(data["classes"], list), "classes must be a list")
        _check(isinstance(data["bands"], list), "bands must be a list")
        modalities = data.get("modalities")
        _check(modalities is None or isinstance(modalities, list), "modalities must be a list")
        defaults = cls.__dataclass_fields__
        return cls(
            arch=data["arch"],
            arch_config=data["arch_config"],
            classes=[ClassInfo.from_dict(c) for c in data["classes"]],
            bands=[BandInfo.from_dict(b) for b in data["bands"]],
            ignore_index=data.get("ignore_index", defaults["ignore_index"].default),
            gsd_m=data.get("gsd_m"),
            tile_size=data.get("tile_size", defaults["tile_size"].default),
            tile_overlap=data.get("tile_overlap", defaults["tile_overlap"].default),
            modalities=(
                None if modalities is None else [ModalityInfo.from_dict(m) for m in modalities]
            ),
            training=data.get("training", {}),
        )

    @classmethod
    def for_model(cls, model: nn.Module, **fields: Any) -> ModelMeta:
        """Metadata with ``arch`` and ``arch_config`` taken from a registry-built model."""
        return cls(arch=model.arch, arch_config=copy.deepcopy(model.arch_config), **fields)


# --------------------------------------------------------------------------- file header


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PackageInfo:
    """What the header tells without reading the weights."""

    path: Path
    format_version: int
    meta: ModelMeta
    tensors: dict[str, TensorEntry]
    buffers: frozenset[str]
    file_bytes: int
    weights_sha256: str

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for name, t in self.tensors.items() if name not in self.buffers)

    @property
    def weight_dtypes(self) -> list[str]:
        return sorted({t.dtype for name, t in self.tensors.items() if name not in self.buffers})


# First bytes of files people may pass by mistake, for a helpful message.
_KNOWN_SIGNATURES = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth checkpoint?)"),
    *((bytes((0x80, protocol)), "a Python pickle (an old PyTorch checkpoint?)")
      for protocol in range(2, 6)),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF", "an HDF5 file (a Keras model?)"),
)
_CHECKPOINT_ADVICE = (
    "model packages are safetensors files, never pickles (loading a pickle can run code); "
    "an ImageNet encoder checkpoint goes to `landcover create --encoder-weights`"
)


_GET_AGAIN = "copy or download the model package again"


def _bad_file(path: Path, problem: str, advice: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}; {advice}")


def _not_a_package(path: Path, first_bytes: bytes) -> ModelFileError:
    for signature, kind in _KNOWN_SIGNATURES:
        if first_bytes.startswith(signature):
            advice = _CHECKPOINT_ADVICE if "pickle" in kind or "zip" in kind else (
                "pass a landcover model package (.lcm) made by `landcover create` or training"
            )
            return _bad_file(path, f"is {kind}, not a landcover model package", advice)
    return _bad_file(
        path,
        "is not a landcover model package (not a safetensors file)",
        "pass a model package (.lcm) made by `landcover create` or training",
    )


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The parsed safetensors header, its length and the file size; checks the size fits."""
    if not path.exists():
        raise ModelFileNotFoundError(f"{path}: no such model package; check the path")
    if path.is_dir():
        raise _bad_file(path, "is a folder", "pass the model package file inside it")
    file_bytes = path.stat().st_size
    if file_bytes == 0:
        raise _bad_file(path, "is empty (0 bytes)", _GET_AGAIN)
    with path.open("rb") as stream:
        first = stream.read(_SIZE_PREFIX)
        if len(first) < _SIZE_PREFIX:
            raise _not_a_package(path, first)
        (header_bytes,) = struct.unpack("<Q", first)
        if not 2 <= header_bytes <= _MAX_HEADER_BYTES:
            raise _not_a_package(path, first)
        header_raw = stream.read(header_bytes)
    if header_raw[:1] != b"{":
        raise _not_a_package(path, first)
    if len(header_raw) < header_bytes:
        raise _bad_file(
            path,
            f"is truncated ({file_bytes} bytes, the header alone needs "
            f"{_SIZE_PREFIX + header_bytes})",
            _GET_AGAIN,
        )
    try:
        header = json.loads(header_raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad_file(path, "has a corrupted header", _GET_AGAIN) from None
    if not isinstance(header, dict):
        raise _not_a_package(path, first)
    return header, header_bytes, file_bytes


def _tensor_entries(path: Path, header: dict[str, Any]) -> tuple[dict[str, TensorEntry], int]:
    """Tensor dtypes and shapes from the header, and the data section's expected length."""
    corrupted = _bad_file(path, "has a corrupted header", _GET_AGAIN)
    entries: dict[str, TensorEntry] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            dtype = entry["dtype"]
        except (TypeError, KeyError, ValueError):
            raise corrupted from None
        if not (all(_is_int(s) and s >= 0 for s in shape) and _is_int(begin) and _is_int(end)
                and 0 <= begin <= end and isinstance(dtype, str)):
            raise corrupted
        entries[name] = TensorEntry(dtype, shape)
        data_end = max(data_end, end)
    return entries, data_end


def inspect_model_package(path: str | os.PathLike[str]) -> PackageInfo:
    """Read and validate a package's header: metadata and tensor shapes, no weights."""
    path = Path(path)
    header, header_bytes, file_bytes = _read_header(path)
    tensors, data_bytes = _tensor_entries(path, header)
    expected = _SIZE_PREFIX + header_bytes + data_bytes
    if file_bytes < expected:
        raise _bad_file(path, f"is truncated ({file_bytes} of {expected} bytes)", _GET_AGAIN)
    if file_bytes > expected:
        raise _bad_file(
            path,
            f"has {file_bytes - expected} unexpected bytes after the weights (corrupted)",
            _GET_AGAIN,
        )
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise _bad_file(
            path,
            "is a safetensors file without landcover metadata (bare weights, not a model "
            "package)",
            "make a package with `landcover create` (bare encoder weights go to its "
            "--encoder-weights)",
        )
    try:
        document = json.loads(metadata[METADATA_KEY])
    except (TypeError, json.JSONDecodeError):
        raise _bad_file(path, "has corrupted landcover metadata (not JSON)", _GET_AGAIN) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise _bad_file(
            path,
            f"has metadata of another format ({document.get('format')!r}, expected "
            f"{FORMAT_NAME!r})" if isinstance(document, dict) else "has corrupted metadata",
            "pass a landcover model package",
        )
    version = document.get("format_version")
    if not _is_int(version) or version < 1:
        raise _bad_file(path, f"has an invalid format_version {version!r}", _GET_AGAIN)
    if version > FORMAT_VERSION:
        raise _bad_file(
            path,
            f"uses model package format version {version}; this landcover reads up to "
            f"{FORMAT_VERSION}",
            "update landcover",
        )
    weights = document.get("weights")
    if not (isinstance(weights, dict) and isinstance(weights.get("sha256"), str)
            and isinstance(weights.get("buffers"), list)):
        raise _bad_file(path, "has metadata without its weights section", _GET_AGAIN)
    fields = {k: v for k, v in document.items() if k not in ("format", "format_version", "weights")}
    try:
        meta = ModelMeta.from_dict(fields)
    except ConfigError as error:
        raise _bad_file(path, f"has invalid metadata: {error}", _GET_AGAIN) from None
    return PackageInfo(
        path=path,
        format_version=version,
        meta=meta,
        tensors=tensors,
        buffers=frozenset(weights["buffers"]),
        file_bytes=file_bytes,
        weights_sha256=weights["sha256"],
    )


def read_model_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """The package's metadata, from the header only (no weights read, no model built)."""
    return inspect_model_package(path).meta


# --------------------------------------------------------------------------- save / load


@dataclass
class ModelPackage:
    """A loaded package: the deploy-form model in eval mode (fp32) and its metadata."""

    model: nn.Module
    meta: ModelMeta
    path: Path


def _deploy_state(model: nn.Module, half: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The deploy form's tensors (detached CPU copies) and which of them are buffers."""
    import torch

    from landcover.engine.models import to_deploy

    deploy = to_deploy(model)  # a new model: the caller keeps its training form
    buffer_names = {name for name, _ in deploy.named_buffers()}
    tensors: dict[str, torch.Tensor] = {}
    for name, value in deploy.state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float16 if half else torch.float32)
            if not torch.isfinite(value).all():
                problem = "overflow float16" if half else "contain NaN or infinity"
                raise ConfigError(
                    f"weights {name!r} {problem}; "
                    + ("save without half precision" if half else "the model diverged")
                )
        # clone: safetensors refuses tensors that share memory
        tensors[name] = value.contiguous().clone()
    return tensors, sorted(buffer_names & tensors.keys())


def _data_section(blob: bytes) -> memoryview:
    """The tensor bytes after a safetensors header (a view, not a copy)."""
    (header_bytes,) = struct.unpack("<Q", blob[:_SIZE_PREFIX])
    return memoryview(blob)[_SIZE_PREFIX + header_bytes:]


def save_model_package(
    path: str | os.PathLike[str], model: nn.Module, meta: ModelMeta, *, half: bool = False
) -> None:
    """Write ``model`` (in deploy form) and ``meta`` to ``path`` atomically.

    ``half`` stores floating-point weights as float16 (half the size; loading gives fp32).
    """
    from safetensors.torch import save

    path = Path(path)
    meta.validate()
    model_arch = getattr(model, "arch", None)
    model_config = getattr(model, "arch_config", None)
    if model_arch != meta.arch or json.dumps(model_config, sort_keys=True) != json.dumps(
        meta.arch_config, sort_keys=True
    ):
        raise ConfigError(
            f"the model ({model_arch} {model_config}) does not match the metadata "
            f"({meta.arch} {meta.arch_config}); build meta with ModelMeta.for_model(model, ...)"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: folder {path.parent} does not exist; create it first")
    tensors, buffers = _deploy_state(model, half)
    # The checksum covers the data section, which does not depend on the metadata.
    sha256 = hashlib.sha256(_data_section(save(tensors))).hexdigest()
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **meta.to_dict(),
        "weights": {"sha256": sha256, "buffers": buffers},
    }
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(document, allow_nan=False)})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open applies the umask, so the file gets the usual permissions.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(blob)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _build_model(info: PackageInfo) -> nn.Module:
    from landcover.engine.models import create_model, list_models

    meta = info.meta
    if meta.arch not in list_models():
        raise _bad_file(
            info.path,
            f"needs architecture {meta.arch!r}, which this landcover does not have "
            f"(it has {', '.join(list_models())})",
            "update landcover",
        )
    config = {
        **meta.arch_config, "num_classes": meta.num_classes, "in_channels": meta.in_channels
    }
    try:
        return create_model(meta.arch, aux_head=False, **config)
    except (TypeError, ValueError) as error:
        raise _bad_file(
            info.path,
            f"has an architecture config that {meta.arch!r} does not accept ({error})",
            "update landcover or re-export the package",
        ) from None


def _check_weights_fit(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    wrong_shape = sorted(
        f"{name} {tuple(tensors[name].shape)} (needs {shape})"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    )
    problems = []
    for label, names in (
        ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)
    ):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            problems.append(f"{len(names)} {label}: {', '.join(names[:3])}{more}")
    if problems:
        raise _bad_file(
            path,
            f"has weights that do not fit its architecture {model.arch!r} "
            f"({'; '.join(problems)})",
            "the file was edited or made by another program; get the original package",
        )


def load_model_package(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> ModelPackage:
    """Load a package: its deploy-form model (fp32, eval mode, on ``device``) and metadata."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    info = inspect_model_package(path)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use cpu")
    blob = info.path.read_bytes()
    if hashlib.sha256(_data_section(blob)).hexdigest() != info.weights_sha256:
        raise _bad_file(info.path, "has corrupted weights (checksum mismatch)", _GET_AGAIN)
    try:
        tensors = load(blob)
    except SafetensorError as error:
        raise _bad_file(info.path, f"cannot be read ({error})", _GET_AGAIN) from None
    del blob
    model = _build_model(info)
    _check_weights_fit(info.path, model, tensors)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True)
    model.float().to(device).eval()
    return ModelPackage(model=model, meta=info.meta, path=info.path)
