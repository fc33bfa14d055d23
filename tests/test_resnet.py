"""ResNet encoders: torchvision's parameter layout and counts, dilation, loading ImageNet
checkpoints of torchvision's layout."""

import math

import pytest
import torch
import torch.nn.functional as F

from landcover.engine.errors import ModelFileError, ModelFileNotFoundError
from landcover.engine.models.resnet import ResNetEncoder

# torchvision's resnetXX(): parameters including fc (1000 classes), from its model docs
TORCHVISION_PARAMETERS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


def _torchvision_shapes(depth: int, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``resnet{depth}().state_dict()``, written out from its
    layout (torchvision/models/resnet.py): conv1/bn1, layer1..4 of BasicBlock (18/34) or
    Bottleneck (50/101), downsample.0/1 on each stage's first block where needed, fc."""
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    shapes: dict[str, tuple[int, ...]] = {}

    def batch_norm(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, in_channels, 7, 7)
    batch_norm("bn1", 64)
    channels = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2**stage
        out = planes * (4 if bottleneck else 1)
        for index in range(count):
            prefix = f"layer{stage + 1}.{index}"
            if bottleneck:
                convs = [(planes, channels, 1), (planes, planes, 3), (out, planes, 1)]
            else:
                convs = [(planes, channels, 3), (planes, planes, 3)]
            for number, (c_out, c_in, k) in enumerate(convs, start=1):
                shapes[f"{prefix}.conv{number}.weight"] = (c_out, c_in, k, k)
                batch_norm(f"{prefix}.bn{number}", c_out)
            if index == 0 and (stage > 0 or channels != out):
                shapes[f"{prefix}.downsample.0.weight"] = (out, channels, 1, 1)
                batch_norm(f"{prefix}.downsample.1", out)
            channels = out
    shapes["fc.weight"] = (1000, channels)
    shapes["fc.bias"] = (1000,)
    return shapes


def _checkpoint(depth: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(depth)
    return {
        key: torch.tensor(9) if not shape else torch.randn(shape, generator=generator)
        for key, shape in _torchvision_shapes(depth).items()
    }


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_layout_and_count_are_torchvision(depth):
    encoder = ResNetEncoder(depth, in_channels=3)
    shapes = _torchvision_shapes(depth)
    ours = {key: tuple(t.shape) for key, t in encoder.state_dict().items()}
    assert ours == {key: s for key, s in shapes.items() if not key.startswith("fc.")}
    fc = math.prod(shapes["fc.weight"]) + 1000
    assert _count(encoder) + fc == TORCHVISION_PARAMETERS[depth]


@pytest.mark.parametrize(
    ("depth", "channels"), [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))]
)
def test_features_and_strides(depth, channels):
    encoder = ResNetEncoder(depth, in_channels=3)
    assert encoder.out_channels == channels
    features = encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)
    ]


@pytest.mark.parametrize(("output_stride", "same_stages"), [(16, 3), (8, 2)])
def test_dilation_keeps_resolution_and_weights(output_stride, same_stages):
    torch.manual_seed(0)
    plain = ResNetEncoder(50, in_channels=3, width=8).eval()
    dilated = ResNetEncoder(50, in_channels=3, output_stride=output_stride, width=8).eval()
    dilated.load_state_dict(plain.state_dict())  # dilation adds no parameters
    assert dilated.layer4[1].conv2.dilation == (32 // output_stride,) * 2
    assert dilated.layer4[0].conv2.dilation == ((1, 1) if output_stride == 16 else (2, 2))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, reference = dilated(x), plain(x)
    assert ours[-1].shape[-1] == 64 // output_stride
    for stage in range(same_stages):
        torch.testing.assert_close(ours[stage], reference[stage])


def test_small_width_scales_every_stage():
    encoder = ResNetEncoder(18, in_channels=3, width=8)
    assert encoder.out_channels == (8, 16, 32, 64)
    assert [f.shape[1] for f in encoder(torch.randn(2, 3, 32, 32))] == [8, 16, 32, 64]


def test_bad_depth_and_output_stride():
    with pytest.raises(ValueError, match="18, 34, 50, 101"):
        ResNetEncoder(20, in_channels=3)
    with pytest.raises(ValueError, match="output_stride"):
        ResNetEncoder(18, in_channels=3, output_stride=4)


def test_loads_torchvision_checkpoint(tmp_path):
    state = _checkpoint(18)
    torch.save(state, tmp_path / "resnet18.pth")
    encoder = ResNetEncoder(18, in_channels=3)
    encoder.load_encoder_weights(tmp_path / "resnet18.pth")
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, state[key]), key


def test_loads_wrapped_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    state = _checkpoint(50)
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    encoder = ResNetEncoder(50, in_channels=3)
    encoder.load_encoder_weights(tmp_path / "wrapped.pth")
    assert torch.equal(encoder.layer3[5].bn3.running_var, state["layer3.5.bn3.running_var"])
    state = {key: value + 1 for key, value in state.items()}
    save_file(state, str(tmp_path / "resnet50.safetensors"))
    encoder.load_encoder_weights(tmp_path / "resnet50.safetensors")
    assert torch.equal(
        encoder.layer4[0].downsample[0].weight, state["layer4.0.downsample.0.weight"]
    )


@pytest.mark.parametrize("bands", [1, 4, 6])
def test_first_conv_adapts_to_band_count(bands, tmp_path):
    state = _checkpoint(18)
    torch.save(state, tmp_path / "resnet18.pth")
    encoder = ResNetEncoder(18, in_channels=bands)
    encoder.load_encoder_weights(tmp_path / "resnet18.pth")
    rgb = state["conv1.weight"]
    weight = encoder.conv1.weight.detach()
    if bands == 1:
        torch.testing.assert_close(weight, rgb.sum(dim=1, keepdim=True))
    else:
        for band in range(bands):
            torch.testing.assert_close(weight[:, band], rgb[:, band % 3] * 3 / bands)
    if bands != 4:  # an image whose bands are all alike then gives exactly the RGB response
        grey = torch.randn(1, 1, 16, 16)
        torch.testing.assert_close(
            F.conv2d(grey.expand(-1, bands, -1, -1), weight),
            F.conv2d(grey.expand(-1, 3, -1, -1), rgb),
            atol=1e-4,
            rtol=1e-4,
        )


def _edited(edit):
    state = _checkpoint(18)
    edit(state)
    return state


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (_edited(lambda s: s.pop("layer2.1.bn2.bias")), "missing 'layer2.1.bn2.bias'"),
        (
            _edited(lambda s: s.update({"layer2.2.conv1.weight": torch.zeros(1)})),
            "unexpected key 'layer2.2.conv1.weight'",
        ),
        (_checkpoint(50), "'layer1.0.conv1.weight' has shape (64, 64, 1, 1)"),
        (
            _edited(lambda s: s.update({"conv1.weight": torch.zeros(32, 3, 7, 7)})),
            "'conv1.weight' has shape (32, 3, 7, 7), the encoder expects (64, 3, 7, 7)",
        ),
        ([1, 2, 3], "not a state dict"),
    ],
    ids=["missing", "unexpected", "other depth", "wrong shape", "not a dict"],
)
def test_checkpoint_that_does_not_fit(tmp_path, content, words):
    path = tmp_path / "resnet18.pth"
    torch.save(content, path)
    with pytest.raises(ModelFileError) as error:
        ResNetEncoder(18, in_channels=3).load_encoder_weights(path)
    message = str(error.value)
    assert str(path) in message and words in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileNotFoundError):
        ResNetEncoder(18, in_channels=3).load_encoder_weights(tmp_path / "absent.pth")
