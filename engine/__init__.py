"""The segmentation engine: models, selective scan kernels, model packages, inference.

The public API is re-exported here lazily: ``import landcover.engine`` loads nothing
heavy (no torch), and never qgis, PyQt or Lightning; ``landcover.engine.create_model``
imports the model registry on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module under landcover.engine that defines it
_EXPORTS = {
    "create_model": "models",
    "list_models": "models",
    "to_deploy": "models",
    "load_encoder_weights": "models",
    "ModelMeta": "modelfile",
    "ClassInfo": "modelfile",
    "BandInfo": "modelfile",
    "ModalityInfo": "modelfile",
    "ModelPackage": "modelfile",
    "save_model_package": "modelfile",
    "load_model_package": "modelfile",
    "read_model_meta": "modelfile",
    "inspect_model_package": "modelfile",
    "LandcoverError": "errors",
    "ModelFileError": "errors",
    "ModelFileNotFoundError": "errors",
    "InputRasterError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'landcover.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"landcover.engine.{module_name}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
