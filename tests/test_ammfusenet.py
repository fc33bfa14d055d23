"""AMM-FuseNet: the published size, the per-modality structure and the fusion."""

import pytest
import torch
from safetensors.torch import save_file

from landcover.engine.errors import ConfigError
from landcover.engine.models import create_model, load_encoder_weights, to_deploy
from landcover.engine.models.resnet import ResNetEncoder

SIZE = 64
SMALL = {"resnet_depth": 18, "resnet_width": 8, "projection_channels": 8, "aspp_channels": 16,
         "fusion_channels": 16}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _small(channels=(3, 2), **options):
    torch.manual_seed(0)
    return create_model("ammfusenet", num_classes=4, in_channels=sum(channels),
                        modality_channels=list(channels), **{**SMALL, **options})


def _image(channels: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def published():
    """Sentinel-2 (13 bands) + Sentinel-1 (2 bands), Hunan's 7 classes."""
    torch.manual_seed(0)
    return create_model("ammfusenet", num_classes=7, in_channels=15, modality_channels=[13, 2])


def test_published_size(published):
    deploy = to_deploy(published)
    assert _count(deploy) == 62_200_055  # the paper: about 62M
    # the train-only head: one 1x1 classifier (448 -> 7) per modality
    assert _count(published) - _count(deploy) == 2 * (448 * 7 + 7)
    branch = published.branches[0]
    assert branch.encoder.out_channels == (256, 512, 1024, 2048)
    assert branch.encoder.output_stride == 16
    assert branch.out_channels == 448  # 4 x 48 + 256
    assert branch.aspp.project[0].in_channels == 1536
    assert [b[0].dilation for b in branch.aspp.branches] == [(3, 3), (6, 6), (12, 12), (18, 18)]
    assert published.fuse[0].in_channels == 896 and published.fuse[0].out_channels == 256


def test_published_forward_at_64(published):
    with torch.no_grad():
        logits = published.eval()(_image(15, batch=1))
    assert logits.shape == (1, 7, SIZE, SIZE)
    assert torch.isfinite(logits).all()


def test_forward_shapes_and_gradients():
    model = _small((13, 2, 1)).train()
    logits, aux_logits = model(_image(16))
    assert logits.shape == aux_logits.shape == (2, 4, SIZE, SIZE)
    (logits.square().mean() + aux_logits.square().mean()).backward()
    silent = [name for name, p in model.named_parameters()
              if p.grad is None or not torch.any(p.grad != 0)]
    assert silent == []
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 16, 32, 96)).shape == (1, 4, 32, 96)


def test_each_modality_has_its_own_stream_and_both_reach_the_output():
    model = _small().eval()
    optical = _image(3)
    first = torch.cat([optical, _image(2, seed=5)], dim=1)
    second = torch.cat([optical, _image(2, seed=6)], dim=1)
    with torch.no_grad():
        # late fusion: the first modality's stream does not see the second's bands
        assert torch.equal(model.branches[0](optical), model.branches[0](first[:, :3]))
        assert (model(first) - model(second)).abs().max() > 1e-5


def test_wrong_band_count_names_the_modalities():
    with pytest.raises(ValueError, match=r"\(batch, 5, height, width\) \(modalities of 3, 2"):
        _small()(torch.zeros(1, 4, SIZE, SIZE))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"in_channels": 6, "modality_channels": [3, 2]}, "add up to 5, not in_channels=6"),
     ({"in_channels": 3, "modality_channels": [3, 0]}, "band counts >= 1")],
)
def test_inconsistent_modalities_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        create_model("ammfusenet", num_classes=2, **options)


def test_one_imagenet_checkpoint_loads_into_every_encoder(tmp_path):
    torch.manual_seed(3)
    source = ResNetEncoder(18, 3, width=8)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = load_encoder_weights(_small((3, 2)), path)
    reference = source.state_dict()
    for branch in model.branches:
        state = branch.encoder.state_dict()
        assert torch.equal(state["layer4.1.conv2.weight"], reference["layer4.1.conv2.weight"])
    assert torch.equal(model.branches[0].encoder.conv1.weight, reference["conv1.weight"])
    # two bands: the RGB kernels repeated and scaled by 3/2
    torch.testing.assert_close(model.branches[1].encoder.conv1.weight,
                               reference["conv1.weight"][:, :2] * 1.5)
