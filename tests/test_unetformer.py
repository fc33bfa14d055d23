"""UNetFormer as published: parameter count, FLOPs, the global-local attention against a
plain per-window transcription of the reference, the decoder wiring, encoder weights."""

import pytest
import torch
import torch.nn.functional as F

from landcover.engine.flops import count_macs
from landcover.engine.models import create_model, load_encoder_weights, to_deploy
from landcover.engine.models.resnet import ResNetEncoder
from landcover.engine.models.unetformer import GlobalLocalAttention

PUBLISHED_PARAMETERS = 11_724_894  # 6 classes, auxiliary head included


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def published():
    torch.manual_seed(0)
    return create_model("unetformer", num_classes=6)


def test_parameter_count_matches_the_paper(published):
    assert abs(_count(published) - PUBLISHED_PARAMETERS) <= PUBLISHED_PARAMETERS * 1e-3
    assert _count(published) == PUBLISHED_PARAMETERS
    aux = _count(published.aux_head)
    assert aux == 64 * 64 * 9 + 2 * 64 + 6 * 64  # conv3x3 + BN + classifier
    assert _count(to_deploy(published)) == PUBLISHED_PARAMETERS - aux
    assert _count(published.encoder) == 11_176_512  # torchvision's ResNet-18 without fc


@pytest.mark.slow
def test_flops_at_1024(published):
    macs = count_macs(published, (1, 3, 1024, 1024))
    assert macs["total_macs"] == pytest.approx(46.83e9, rel=0.01)  # the paper: 46.9 G
    assert macs["modules"]["encoder"] == pytest.approx(37.90e9, rel=0.01)


# --------------------------------------------------------------------------- attention


def _reference_window_attention(gla: GlobalLocalAttention, x: torch.Tensor) -> torch.Tensor:
    """One window and one head at a time: softmax(q k^T / sqrt(d) + bias) v with the
    bias read from the table at Swin's index (dy + w - 1) * (2w - 1) + (dx + w - 1); the
    map reflect-padded to whole windows (windows clipped to sides shorter than w)."""
    b, c, h, w = x.shape
    size = gla.window
    wh, ww = min(size, h), min(size, w)
    if w % ww:
        x = F.pad(x, (0, ww - w % ww, 0, 0), mode="reflect")
    if h % wh:
        x = F.pad(x, (0, 0, 0, wh - h % wh), mode="reflect")
    qkv = gla.qkv(x)
    heads = gla.num_heads
    d = c // heads
    out = torch.zeros(b, c, *x.shape[-2:], dtype=x.dtype)
    positions = [(y, x_) for y in range(wh) for x_ in range(ww)]
    index = torch.tensor(
        [
            [(y1 - y2 + size - 1) * (2 * size - 1) + (x1 - x2 + size - 1) for (y2, x2) in positions]
            for (y1, x1) in positions
        ]
    )
    table = gla.relative_position_bias_table
    for top in range(0, x.shape[-2], wh):
        for left in range(0, x.shape[-1], ww):
            window = qkv[:, :, top : top + wh, left : left + ww].flatten(2)  # (b, 3c, n)
            for head in range(heads):
                q, k, v = (
                    window[:, part * c + head * d : part * c + (head + 1) * d] for part in range(3)
                )
                bias = table[index, head]
                scores = torch.einsum("bdi,bdj->bij", q, k) * d**-0.5 + bias
                result = torch.einsum("bij,bdj->bdi", scores.softmax(dim=-1), v)
                out[:, head * d : (head + 1) * d, top : top + wh, left : left + ww] = result.view(
                    b, d, wh, ww
                )
    return out[:, :, :h, :w]


def _reference_gla(gla: GlobalLocalAttention, x: torch.Tensor) -> torch.Tensor:
    """GeoSeg's GlobalLocalAttention.forward after the window attention, transcribed."""
    h, w = x.shape[-2:]
    half = gla.window // 2 - 1
    local = gla.local1(x) + gla.local3(x)
    attn = _reference_window_attention(gla, x)
    out = F.avg_pool2d(
        F.pad(attn, (0, 0, 0, 1), mode="reflect"), (gla.window, 1), 1, (half, 0)
    ) + F.avg_pool2d(F.pad(attn, (0, 1, 0, 0), mode="reflect"), (1, gla.window), 1, (0, half))
    out = gla.proj(F.pad(out + local, (0, 1, 0, 1), mode="reflect"))
    return out[:, :, :h, :w]


@pytest.mark.parametrize(
    "size",
    [(8, 12), (10, 6), (3, 6), (2, 2)],
    ids=["whole windows", "reflect padded", "clipped rows", "clipped both"],
)
def test_global_local_attention_matches_the_reference(size):
    torch.manual_seed(0)
    gla = GlobalLocalAttention(dim=8, num_heads=2, window=4).double().eval()
    torch.nn.init.normal_(gla.relative_position_bias_table)  # make the bias matter
    x = torch.randn(2, 8, *size, dtype=torch.double, requires_grad=True)
    ours, reference = gla(x), _reference_gla(gla, x)
    torch.testing.assert_close(ours, reference)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), x)
    torch.testing.assert_close(grad_ours, grad_reference)


def test_one_pixel_wide_maps_work():
    gla = GlobalLocalAttention(dim=8, num_heads=2, window=8).eval()
    with torch.no_grad():
        assert gla(torch.randn(1, 8, 1, 3)).shape == (1, 8, 1, 3)
        assert gla(torch.randn(1, 8, 1, 1)).shape == (1, 8, 1, 1)


# --------------------------------------------------------------------------- wiring


def _reference_forward(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GeoSeg's UNetFormer / Decoder.forward (training path), transcribed."""
    decoder = model.decoder
    res1, res2, res3, res4 = model.encoder(x)
    b4, b3, b2 = decoder.blocks
    p3, p2 = decoder.fusions
    h, w = x.shape[-2:]
    out = b4(decoder.pre_conv(res4))
    h4 = F.interpolate(out, scale_factor=4, mode="bilinear", align_corners=True)
    out = b3(p3(out, res3))
    h3 = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    h2 = b2(p2(out, res2))
    out = decoder.head(decoder.refine(h2, res1))
    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    aux = model.aux_head.head(h4 + h3 + h2)
    return out, F.interpolate(aux, size=(h, w), mode="bilinear", align_corners=False)


def test_decoder_and_aux_head_match_the_reference_wiring():
    torch.manual_seed(0)
    model = create_model(
        "unetformer", num_classes=3, encoder_width=8, decoder_channels=32, window_size=4
    )
    model.train()
    for part in model.children():
        part.eval()  # deterministic: no dropout, BN running statistics
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits, aux_logits = model(x)
        reference_logits, reference_aux = _reference_forward(model, x)
    torch.testing.assert_close(logits, reference_logits)
    torch.testing.assert_close(aux_logits, reference_aux)


def test_fusion_weights_are_normalised_relu():
    torch.manual_seed(0)
    model = create_model("unetformer", num_classes=2, encoder_width=8, decoder_channels=16)
    fusion = model.decoder.fusions[0]
    with torch.no_grad():
        fusion.weights.copy_(torch.tensor([3.0, -1.0]))  # relu -> (3, 0) -> (1, 0)
    x, skip = torch.randn(1, 16, 2, 2), torch.randn(1, 32, 4, 4)
    fusion.eval()
    with torch.no_grad():
        torch.testing.assert_close(fusion(x, skip), fusion.post_conv(fusion.pre_conv(skip)))


# --------------------------------------------------------------------------- encoder weights


def test_loads_a_torchvision_resnet18(tmp_path):
    torch.manual_seed(1)
    source = ResNetEncoder(18, in_channels=3)
    state = dict(source.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    model = create_model("unetformer", num_classes=6, in_channels=4)
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    assert load_encoder_weights(model, tmp_path / "resnet18.pth") is model
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.encoder.conv1.weight.shape == (64, 4, 7, 7)
    for key, tensor in model.decoder.state_dict().items():
        assert torch.equal(tensor, decoder_before[key])
