"""UPSeg: wavelength-conditioned optical embedding and optical <-> SAR/DEM interaction."""

import json

import pytest
import torch

from landcover.engine.errors import ConfigError
from landcover.engine.models import create_model, to_deploy
from landcover.engine.models.upseg import S2_WAVELENGTHS_UM

SIZE = 64
RGB = [0.665, 0.56, 0.49]
RGBN = [*RGB, 0.842]
SMALL = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_dim": 32,
         "wave_dim": 32, "weight_tokens": 8}


def _model(modalities=("optical", "sar"), channels=(3, 2), **options):
    torch.manual_seed(0)
    return create_model(
        "upseg", num_classes=4, in_channels=sum(channels), modalities=list(modalities),
        modality_channels=list(channels), **{**SMALL, **options},
    )


def _image(channels: int, batch: int = 2, seed: int = 1, size=(SIZE, SIZE)) -> torch.Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


def test_one_set_of_weights_runs_3_4_and_13_optical_bands():
    model = _model().eval()
    sar = _image(2)
    outputs = {}
    with torch.no_grad():
        for wavelengths in (RGB, RGBN, list(S2_WAVELENGTHS_UM)):
            x = torch.cat([_image(len(wavelengths)), sar], dim=1)
            outputs[len(wavelengths)] = logits = model(x, wavelengths=wavelengths)
            assert logits.shape == (2, 4, SIZE, SIZE)
            assert torch.isfinite(logits).all()
        # without an override the model uses its own (RGB) wavelengths
        rgb = torch.cat([_image(3), sar], dim=1)
        assert torch.equal(model(rgb), outputs[3])
    with pytest.raises(ValueError, match=r"\(batch, 6, height, width\).*optical 4"):
        model(torch.zeros(1, 5, SIZE, SIZE), wavelengths=RGBN)


def test_kernel_follows_the_wavelengths_not_the_band_order():
    model = _model(("optical",), (4,)).eval()
    x = _image(4)
    order = [2, 0, 3, 1]
    with torch.no_grad():
        reference = model(x, wavelengths=RGBN)
        permuted = model(x[:, order], wavelengths=[RGBN[i] for i in order])
        shifted = model(x, wavelengths=[w + 0.1 for w in RGBN])
    # the same bands in another order give the same result (each band's kernel slice comes
    # from its wavelength), while other wavelengths give another result
    torch.testing.assert_close(permuted, reference, rtol=1e-4, atol=1e-4)
    assert (shifted - reference).abs().max() > 1e-3


def test_band_count_does_not_change_the_embedding_scale():
    embed = _model(("optical",), (3,)).optical_embed
    stds = []
    with torch.no_grad():
        for wavelengths in (RGB, list(S2_WAVELENGTHS_UM)):
            weight, _ = embed.kernel(torch.tensor(wavelengths))
            out = torch.nn.functional.conv2d(_image(len(wavelengths)), weight, stride=4)
            stds.append(out.std().item())
    assert 0.5 < stds[0] / stds[1] < 2.0


def test_sar_input_changes_the_optical_features():
    model = _model().eval()
    optical = _image(3)
    seen = []  # the optical stream entering the first exchange
    model.interactions[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        first = model.encode(torch.cat([optical, _image(2, seed=5)], dim=1))
        second = model.encode(torch.cat([optical, _image(2, seed=6)], dim=1))
    # before the exchange the optical stream has not seen the SAR bands; after it, and at
    # every later stage, it has
    assert torch.equal(seen[0], seen[1])
    for stage, (a, b) in enumerate(zip(first, second, strict=True)):
        assert (a[0] - b[0]).abs().max() > 1e-4, f"stage {stage}"


def test_optical_input_changes_the_sar_features():
    model = _model().eval()
    sar = _image(2)
    with torch.no_grad():
        first = model.encode(torch.cat([_image(3, seed=5), sar], dim=1))
        second = model.encode(torch.cat([_image(3, seed=6), sar], dim=1))
    assert (first[0][1] - second[0][1]).abs().max() > 1e-4


@pytest.mark.parametrize("size", [(SIZE, SIZE), (32, 96)])
def test_forward_shapes(size):
    model = _model(("optical", "sar", "dem"), (13, 2, 1), optical_wavelengths_um=None)
    x = _image(16, size=size)
    logits, aux_logits = model.train()(x)
    assert logits.shape == aux_logits.shape == (2, 4, *size)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 4, *size)
    assert [f.shape[-1] for f in model.encode(x)[-1]] == [128, 128]


def test_gradients_reach_every_parameter():
    model = _model(("sar", "optical", "dem"), (2, 4, 1)).train()
    logits, aux_logits = model(_image(7))
    (logits.square().mean() + aux_logits.square().mean()).backward()
    silent = [name for name, p in model.named_parameters()
              if p.grad is None or not torch.any(p.grad != 0)]
    assert silent == []


def test_rebuilds_and_deploys_from_arch_config():
    model = _model(optical_wavelengths_um=[0.49, 0.56, 0.665])
    config = json.loads(json.dumps(model.arch_config))
    rebuilt = create_model("upseg", **config)
    assert rebuilt.optical_wavelengths.tolist() == pytest.approx([0.49, 0.56, 0.665])
    x = _image(5)
    with torch.no_grad():
        deploy = to_deploy(model)
        assert not deploy.has_aux
        assert torch.equal(deploy(x), model.eval()(x))


def test_set_optical_wavelengths():
    model = _model().eval()
    x = _image(5)
    with torch.no_grad():
        expected = model(x, wavelengths=RGB[::-1])
        model.set_optical_wavelengths(RGB[::-1])
        assert torch.equal(model(x), expected)
    with pytest.raises(ConfigError, match="4 wavelengths given for the model's 3 optical"):
        model.set_optical_wavelengths(RGBN)
    with pytest.raises(ConfigError, match="positive"):
        model.set_optical_wavelengths([0.5, -1.0, 0.6])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"in_channels": 5, "modalities": ["optical", "sar"]}, "give modality_channels"),
        ({"in_channels": 5, "modalities": ["sar", "dem"], "modality_channels": [3, 2]},
         "'optical' exactly once"),
        ({"in_channels": 6, "modalities": ["optical", "sar"], "modality_channels": [3, 2]},
         "add up to 5, not in_channels=6"),
        ({"in_channels": 5}, "give optical_wavelengths_um for the 5 optical bands"),
        ({"in_channels": 3, "optical_wavelengths_um": [0.5, 0.6]}, "2 optical_wavelengths_um"),
        ({"in_channels": 3, "embed_dims": [16, 32, 64]}, "4 entries"),
        ({"in_channels": 3, "wave_dim": 33}, "wave_dim 33 must be even"),
    ],
)
def test_inconsistent_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        create_model("upseg", num_classes=2, **options)
