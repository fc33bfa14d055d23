"""Segmentation models: a registry (``create_model``, ``list_models``) over model families,
one module per family."""

from landcover.engine.models import unetmamba as _unetmamba  # noqa: F401  (registers models)
from landcover.engine.models.registry import (
    create_model,
    list_models,
    load_encoder_weights,
    read_state_dict,
    register_model,
    to_deploy,
)

__all__ = [
    "create_model",
    "list_models",
    "load_encoder_weights",
    "read_state_dict",
    "register_model",
    "to_deploy",
]
