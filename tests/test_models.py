"""The model registry and the contract every registered model keeps (small inputs)."""

import json

import pytest
import torch

from landcover.engine.errors import ConfigError
from landcover.engine.models import create_model, list_models, to_deploy

MODELS = list_models()
CLASSES = 5
SIZE = 64


@pytest.fixture(scope="module", params=MODELS)
def trained_form(request):
    torch.manual_seed(0)
    return create_model(request.param, num_classes=CLASSES)


def _image(batch: int = 2, channels: int = 3, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


def _aux_tensors(aux):
    """A model's train-only outputs: its aux logits, or the values of its aux dict (whose
    ``"lsm"`` entry holds the aux logits, e.g. unetmamba_enhanced's)."""
    return list(aux.values()) if isinstance(aux, dict) else [aux]


def _aux_logits(aux):
    return aux["lsm"] if isinstance(aux, dict) else aux


def test_registry_lists_the_published_and_tiny_unetmamba():
    assert {"unetmamba", "unetmamba_tiny"} <= set(MODELS)
    assert sorted(MODELS) == MODELS


def test_unknown_name_lists_registered_models():
    with pytest.raises(ValueError, match="unetmamba_tiny"):
        create_model("no_such_net", num_classes=2)


def test_unknown_option_says_what_is_accepted():
    with pytest.raises(ConfigError, match=r"accepts: .*embed_dim"):
        create_model("unetmamba_tiny", num_classes=2, widht=3)


@pytest.mark.parametrize("bad", [{"num_classes": 0}, {"num_classes": 2, "in_channels": 0}])
def test_impossible_sizes_are_refused(bad):
    with pytest.raises(ConfigError):
        create_model("unetmamba_tiny", **bad)


def test_train_form_output(trained_form):
    model = trained_form.train()
    x = _image()
    logits, aux = model(x)
    assert logits.shape == _aux_logits(aux).shape == (2, CLASSES, SIZE, SIZE)
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(tensor).all() for tensor in _aux_tensors(aux))


def test_every_parameter_learns(trained_form):
    model = trained_form.train()
    model.zero_grad()
    torch.manual_seed(0)  # fixed drop-path draws: no branch is dropped for the whole batch
    logits, aux = model(_image())
    (logits.square().mean() + sum(t.square().mean() for t in _aux_tensors(aux))).backward()
    # a bias before a softmax over its whole row cancels out (see the model's docstring)
    exempt = {name for name, _ in model.named_parameters() if name.endswith("head_mix.bias")}
    silent = [
        name
        for name, p in model.named_parameters()
        if name not in exempt and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert silent == []


def test_eval_and_deploy_forms_return_logits_only(trained_form):
    model = trained_form.eval()
    x = _image()
    with torch.no_grad():
        logits = model(x)
        deploy = to_deploy(model)
        assert not deploy.training
        assert trained_form.has_aux and not deploy.has_aux
        assert torch.equal(deploy(x), logits)
        deploy.train()
        assert isinstance(deploy(x), torch.Tensor)
    assert logits.shape == (2, CLASSES, SIZE, SIZE)
    assert torch.isfinite(logits).all()
    trained_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in deploy.parameters()) < trained_params


def test_rebuilds_from_arch_config(trained_form):
    config = json.loads(json.dumps(trained_form.arch_config))
    assert "aux_head" not in config
    assert config["num_classes"] == CLASSES and config["in_channels"] == 3
    rebuilt = create_model(trained_form.arch, **config)
    assert rebuilt.arch == trained_form.arch and rebuilt.arch_config == trained_form.arch_config
    shapes = {name: t.shape for name, t in trained_form.state_dict().items()}
    assert {name: t.shape for name, t in rebuilt.state_dict().items()} == shapes


@pytest.mark.parametrize("size", [(48, 64), (64, 40), (33, 33)])
def test_size_not_multiple_of_32_is_refused(trained_form, size):
    assert trained_form.input_multiple == 32
    with pytest.raises(ValueError, match=r"multiples of 32.*pad"):
        trained_form(torch.zeros(1, 3, *size))


def test_wrong_band_count_is_refused(trained_form):
    with pytest.raises(ValueError, match="3"):
        trained_form(torch.zeros(1, 4, SIZE, SIZE))


@pytest.mark.parametrize("name", MODELS)
def test_multispectral_input(name):
    model = create_model(name, num_classes=3, in_channels=4)
    logits, aux = model(_image(channels=4))
    assert logits.shape == _aux_logits(aux).shape == (2, 3, SIZE, SIZE)
    assert model.arch_config["in_channels"] == 4
    with torch.no_grad():
        assert to_deploy(model)(_image(channels=4, batch=1)).shape == (1, 3, SIZE, SIZE)


def test_non_square_input(trained_form):
    with torch.no_grad():
        logits = trained_form.eval()(torch.randn(1, 3, 32, 96))
    assert logits.shape == (1, CLASSES, 32, 96)
