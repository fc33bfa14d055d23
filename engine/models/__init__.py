"""Segmentation models: a registry (``create_model``, ``list_models``) over model families,
one module per family."""

from landcover.engine.models import ammfusenet as _ammfusenet  # noqa: F401  (registers models)
from landcover.engine.models import ammunet as _ammunet  # noqa: F401
from landcover.engine.models import unetformer as _unetformer  # noqa: F401
from landcover.engine.models import unetmamba as _unetmamba  # noqa: F401
from landcover.engine.models import unetmamba_enhanced as _unetmamba_enhanced  # noqa: F401
from landcover.engine.models import upseg as _upseg  # noqa: F401
from landcover.engine.models.registry import (
    create_model,
    list_models,
    load_encoder_weights,
    model_options,
    read_state_dict,
    register_model,
    to_deploy,
)

__all__ = [
    "create_model",
    "list_models",
    "load_encoder_weights",
    "model_options",
    "read_state_dict",
    "register_model",
    "to_deploy",
]
