"""Model registry: ``create_model()`` over builder functions registered by name.

A builder is a function with typed keyword arguments only (``num_classes``, ``in_channels``,
``aux_head`` and whatever else shapes its family). ``create_model`` binds the caller's
keywords to that signature, so a typo is a one-line :class:`ConfigError` listing what the
builder accepts, and the bound values (defaults filled in, ``aux_head`` left out) become
``model.arch_config``: the JSON-serialisable dict that rebuilds the same architecture with
``create_model(model.arch, **model.arch_config)``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from landcover.engine.errors import ConfigError, ModelFileError, ModelFileNotFoundError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` (decorator)."""

    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is registered twice")
        parameters = inspect.signature(builder).parameters
        for required in ("num_classes", "in_channels", "aux_head"):
            if required not in parameters:
                raise TypeError(f"builder {builder.__name__} lacks the keyword {required!r}")
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def model_options(name: str) -> tuple[str, ...]:
    """The keyword arguments the builder of ``name`` accepts."""
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return tuple(inspect.signature(_BUILDERS[name]).parameters)


def create_model(
    name: str, *, num_classes: int, in_channels: int = 3, aux_head: bool = True, **kwargs: Any
) -> nn.Module:
    """Build the registered model ``name``.

    The result carries ``arch`` (the name), ``arch_config`` (keywords that rebuild it),
    ``has_aux`` and ``input_multiple``. ``aux_head=False`` builds the deploy form, without
    the train-only auxiliary head.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    signature = inspect.signature(builder)
    try:
        bound = signature.bind(
            num_classes=num_classes, in_channels=in_channels, aux_head=aux_head, **kwargs
        )
    except TypeError as error:
        accepted = ", ".join(signature.parameters)
        raise ConfigError(f"model {name!r}: {error}; it accepts: {accepted}") from None
    bound.apply_defaults()
    if num_classes < 1 or in_channels < 1:
        raise ConfigError(
            f"model {name!r} needs num_classes >= 1 and in_channels >= 1, "
            f"got {num_classes} and {in_channels}"
        )
    model = builder(**bound.arguments)
    model.arch = name
    model.arch_config = {
        key: _to_json(value) for key, value in bound.arguments.items() if key != "aux_head"
    }
    return model


def to_deploy(model: nn.Module) -> nn.Module:
    """The same network without its train-only auxiliary head, in eval mode.

    Rebuilt with ``create_model(..., aux_head=False)`` and given the source's weights (shared
    storage is not kept: the deploy model owns copies), on the source's device and dtype.
    """
    deploy = create_model(model.arch, aux_head=False, **model.arch_config)
    source_state = model.state_dict()
    deploy_keys = deploy.state_dict().keys()
    missing = [key for key in deploy_keys if key not in source_state]
    if missing:
        raise ValueError(f"cannot deploy {model.arch}: the source model lacks {missing[0]!r}")
    deploy.load_state_dict({key: source_state[key] for key in deploy_keys})
    parameter = next(model.parameters())
    return deploy.to(device=parameter.device, dtype=parameter.dtype).eval()


def load_encoder_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a user-supplied ImageNet checkpoint into the model's encoder (see the model's
    ``load_encoder_weights`` for the format it expects). Returns the model."""
    loader = getattr(model, "load_encoder_weights", None)
    if loader is None:
        arch = getattr(model, "arch", type(model).__name__)
        raise ConfigError(f"model {arch!r} has no pretrained encoder that can be loaded")
    loader(path)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file without running code from it.

    Reads safetensors, or a torch file through ``torch.load(weights_only=True)``; a torch
    file may wrap its state dict under ``"model"`` or ``"state_dict"`` (training scripts).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the file is not a usable checkpoint
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{path}: not a readable checkpoint ({reason})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return dict(state)


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(item) for item in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise TypeError(f"architecture option of type {type(value).__name__} is not JSON-serialisable")
