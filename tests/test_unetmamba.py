"""UNetMamba as published: parameter counts, FLOPs, building blocks against plain
re-derivations of the reference code, and loading the official ResT-Lite weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from landcover.engine.errors import ModelFileError, ModelFileNotFoundError
from landcover.engine.flops import count_macs
from landcover.engine.models import create_model, load_encoder_weights, to_deploy
from landcover.engine.models.unetmamba import SS2D, EfficientSelfAttention
from landcover.engine.ops import (
    available_scan_backends,
    cross_merge,
    cross_scan,
    selective_scan_reference,
    ss2d_scan_macs,
    use_scan_backend,
)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def published():
    return create_model("unetmamba", num_classes=6)


# --------------------------------------------------------------------------- counts


def test_parameter_count_matches_the_paper(published):
    assert _count(published) == 14_755_946  # the paper's 14.76M (6 classes, LSM included)
    assert _count(to_deploy(published)) == 14_755_946 - 864_640  # 13.89M deployed


def test_parameter_breakdown(published):
    decoder = published.decoder
    assert _count(published.encoder) == 9_995_300
    assert [_count(stage) for stage in decoder.stages] == [2_187_776, 602_368, 178_304]
    assert _count(decoder.stages[0][0]) == 1_093_888  # one VSS block at C=256
    expands = sum(_count(e) for e in decoder.expands) + _count(decoder.final_expand)
    assert expands == 754_688
    assert sum(_count(f) for f in decoder.fuses) == 172_480
    assert _count(published.aux_head) == 864_640
    assert _count(decoder.head) == 6 * 64 + 6


def test_initialisation(published):
    ssm = published.decoder.stages[0][0].ssm
    n = torch.arange(1, 17, dtype=torch.float32)
    assert torch.equal(ssm.A_log, torch.log(n).expand(4, 512, 16))
    assert torch.equal(ssm.D, torch.ones(4, 512))
    dt = F.softplus(ssm.dt_proj_bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert dt.log().std() > 0.5  # spread log-uniformly, not constant
    rates = [block.drop_path_rate for stage in published.decoder.stages for block in stage]
    assert rates == pytest.approx([0.2, 0.16, 0.12, 0.08, 0.04, 0.0])
    weight = published.encoder.stages[0][0].attn.q.weight
    assert weight.std().item() == pytest.approx(0.02, rel=0.1)  # ResT's trunc_normal_


@pytest.mark.slow
def test_flops_at_1024(published):
    macs = count_macs(published, (1, 3, 1024, 1024))
    assert macs["counted_macs"] == pytest.approx(100.52e9, rel=0.03)
    assert macs["modules"]["encoder"] == pytest.approx(63.76e9, rel=0.03)
    assert macs["modules"]["decoder"] == pytest.approx(36.77e9, rel=0.03)
    assert macs["total_macs"] == pytest.approx(117.6e9, rel=0.03)


def test_scan_macs_are_reported_per_ss2d_call():
    model = create_model("unetmamba_tiny", num_classes=2, d_state=4)
    macs = count_macs(model, (1, 3, 32, 64))
    # decoder stages at 2x4 (C=64), 4x8 (C=32), 8x16 (C=16); two SS2D calls each
    expected = 2 * sum(
        ss2d_scan_macs(1, h, 2 * h, 4, 2 * c, 4) for h, c in [(2, 64), (4, 32), (8, 16)]
    )
    assert macs["scan_macs"] == expected
    assert macs["total_macs"] == macs["counted_macs"] + expected
    assert macs["counted_macs"] == sum(macs["modules"].values())
    assert macs["modules"]["aux_head"] == 0  # eval: the LSM does not run


def test_flop_count_does_not_depend_on_the_scan_backend():
    # the "torch" backend runs matmuls inside the scan, which torch's counter would see
    backends = [name for name in available_scan_backends() if name != "mamba_ssm"]
    assert {"reference", "torch"} <= set(backends)
    model = create_model("unetmamba_tiny", num_classes=2)
    counts = []
    for backend in backends:
        with use_scan_backend(backend):
            counts.append(count_macs(model, (1, 3, 32, 32)))
    assert all(count == counts[0] for count in counts)


# --------------------------------------------------------------------------- blocks


def _reference_attention(attn: EfficientSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """ResT's Attention.forward, transcribed (NCHW conv, explicit instance norm)."""
    b, h, w, c = x.shape
    heads = attn.num_heads
    tokens = x.reshape(b, h * w, c)
    q = attn.q(tokens).reshape(b, h * w, heads, c // heads).permute(0, 2, 1, 3)
    if attn.sr_ratio > 1:
        reduced = attn.sr(tokens.permute(0, 2, 1).reshape(b, c, h, w)).reshape(b, c, -1)
        tokens_kv = attn.sr_norm(reduced.permute(0, 2, 1))
    else:
        tokens_kv = tokens
    kv = attn.kv(tokens_kv).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    scores = (q @ k.transpose(-2, -1)) * attn.scale
    if attn.head_mix is not None:
        scores = F.instance_norm(attn.head_mix(scores).softmax(dim=-1), eps=1e-5)
    else:
        scores = scores.softmax(dim=-1)
    out = (scores @ v).transpose(1, 2).reshape(b, h * w, c)
    return attn.proj(out).reshape(b, h, w, c)


@pytest.mark.parametrize(("heads", "sr_ratio"), [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_attention_matches_rest(heads, sr_ratio):
    torch.manual_seed(0)
    attn = EfficientSelfAttention(8 * heads, heads, sr_ratio).double()
    if attn.head_mix is not None:
        torch.nn.init.normal_(attn.head_mix.bias)  # cancels in the softmax; prove it
    x = torch.randn(2, 16, 12, 8 * heads, dtype=torch.double, requires_grad=True)
    ours, reference = attn(x), _reference_attention(attn, x)
    torch.testing.assert_close(ours, reference)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), x)
    torch.testing.assert_close(grad_ours, grad_reference)


def _reference_ss2d(ssm: SS2D, x: torch.Tensor) -> torch.Tensor:
    """VMamba's SS2D forward (v2), transcribed: cross-scan copies, per-direction einsums,
    one selective scan over the 4 directions as 4*d_inner channels, cross-merge."""
    b, h, w, _ = x.shape
    x_in, z = ssm.in_proj(x).chunk(2, dim=-1)
    u = F.silu(ssm.conv2d(x_in.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    sequences = cross_scan(u)  # (b, k, d, l)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", sequences, ssm.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [ssm.dt_rank, ssm.d_state, ssm.d_state], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, ssm.dt_proj_weight)
    y = selective_scan_reference(
        sequences.reshape(b, -1, h * w),
        dts.reshape(b, -1, h * w),
        -torch.exp(ssm.A_log.reshape(-1, ssm.d_state)),
        Bs,
        Cs,
        ssm.D.reshape(-1),
        ssm.dt_proj_bias.reshape(-1),
        delta_softplus=True,
    )
    y = cross_merge(y.view(b, 4, -1, h * w), h, w)
    return ssm.out_proj(ssm.out_norm(y) * F.silu(z))


def test_ss2d_matches_vmamba():
    torch.manual_seed(0)
    ssm = SS2D(dim=8, d_state=4)
    x = torch.randn(2, 5, 7, 8)  # not square: direction bookkeeping shows
    torch.testing.assert_close(ssm(x), _reference_ss2d(ssm, x), atol=2e-5, rtol=1e-4)


def _reference_patch_expand(expand, x_nchw: torch.Tensor, scale: int) -> torch.Tensor:
    """Swin-Unet's PatchExpand / FinalPatchExpand_X4 as UNetMamba uses them: NCHW in,
    Linear, ``b h w (p1 p2 c) -> b (h p1) (w p2) c``, LayerNorm; NHWC out."""
    y = expand.expand(x_nchw.permute(0, 2, 3, 1))
    b, h, w, c = y.shape
    c //= scale * scale
    y = y.view(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * scale, -1, c)
    return expand.norm(y)


def test_decoder_and_lsm_match_the_reference_wiring():
    """MambaSegDecoder.forward and LocalSupervision, transcribed (NCHW between stages, the
    classifier as a 1x1 conv after the final depth-to-space)."""
    torch.manual_seed(0)
    model = create_model("unetmamba_tiny", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    decoder = model.decoder
    with torch.no_grad():
        skips = [f.permute(0, 3, 1, 2) for f in model.encoder(x)]  # NCHW, as ResT returns
        low, stage_outputs = skips[-1], []
        for s in range(3):
            up = _reference_patch_expand(decoder.expands[s], low, 2)
            fused = decoder.fuses[s](torch.cat((up, skips[-(s + 2)].permute(0, 2, 3, 1)), -1))
            low = decoder.stages[s](fused).permute(0, 3, 1, 2)
            stage_outputs.append(low)
        full = _reference_patch_expand(decoder.final_expand, low, 4).permute(0, 3, 1, 2)
        head = decoder.head
        logits = F.conv2d(full, head.weight[:, :, None, None], head.bias)
        torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-4)

        # the model in training mode returns the LSM output; its parts stay deterministic
        model.train()
        for part in model.children():
            part.eval()
        _, aux_logits = model(x)
        reference_aux = 0
        for lsm, out in zip(model.aux_head, stage_outputs, strict=True):
            local = lsm.conv3(out) + lsm.conv1(out)
            reference_aux = reference_aux + F.interpolate(
                lsm.classify(local), size=(64, 96), mode="bilinear", align_corners=False
            )
        torch.testing.assert_close(aux_logits, reference_aux, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- encoder weights


def _official_rest_lite_shapes(embed_dim: int = 64, in_channels: int = 3) -> dict:
    """Key -> shape of the official ResT-Lite ImageNet checkpoint (wofmanaf/ResT,
    models/rest.py: ResT(embed_dims=[64, 128, 256, 512], num_heads=[1, 2, 4, 8],
    depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], qkv_bias=True, apply_transform=True))."""
    dims = [embed_dim * 2**i for i in range(4)]
    shapes: dict = {}

    def batch_norm(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    def conv(prefix, c_out, c_in, k, bias=True):
        shapes[f"{prefix}.weight"] = (c_out, c_in, k, k)
        if bias:
            shapes[f"{prefix}.bias"] = (c_out,)

    def linear(prefix, c_out, c_in):
        shapes[f"{prefix}.weight"] = (c_out, c_in)
        shapes[f"{prefix}.bias"] = (c_out,)

    hidden = dims[0] // 2
    conv("stem.conv1", hidden, in_channels, 3, bias=False)
    batch_norm("stem.norm1", hidden)
    conv("stem.conv2", hidden, hidden, 3, bias=False)
    batch_norm("stem.norm2", hidden)
    conv("stem.conv3", dims[0], hidden, 3, bias=False)
    conv("stem.pos.pa_conv", dims[0], 1, 3)
    for stage in (2, 3, 4):
        c_in, c = dims[stage - 2], dims[stage - 1]
        conv(f"patch_embed_{stage}.conv", c, c_in, 3)
        batch_norm(f"patch_embed_{stage}.norm", c)
        conv(f"patch_embed_{stage}.pos.pa_conv", c, 1, 3)
    for stage, (c, heads, sr) in enumerate(
        zip(dims, (1, 2, 4, 8), (8, 4, 2, 1), strict=True), start=1
    ):
        for block in range(2):
            prefix = f"stage{stage}.{block}"
            shapes[f"{prefix}.norm1.weight"] = shapes[f"{prefix}.norm1.bias"] = (c,)
            linear(f"{prefix}.attn.q", c, c)
            linear(f"{prefix}.attn.kv", 2 * c, c)
            linear(f"{prefix}.attn.proj", c, c)
            if sr > 1:
                conv(f"{prefix}.attn.sr", c, 1, sr + 1)
                shapes[f"{prefix}.attn.sr_norm.weight"] = (c,)
                shapes[f"{prefix}.attn.sr_norm.bias"] = (c,)
            if heads > 1:
                conv(f"{prefix}.attn.transform_conv", heads, heads, 1)
            shapes[f"{prefix}.norm2.weight"] = shapes[f"{prefix}.norm2.bias"] = (c,)
            linear(f"{prefix}.mlp.fc1", 4 * c, c)
            linear(f"{prefix}.mlp.fc2", c, 4 * c)
    shapes["norm.weight"] = shapes["norm.bias"] = (dims[3],)
    linear("head", 1000, dims[3])
    return shapes


def _official_checkpoint(embed_dim: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        key: (
            torch.tensor(7)
            if key.endswith("num_batches_tracked")
            else torch.randn(shape, generator=generator)
        )
        for key, shape in _official_rest_lite_shapes(embed_dim).items()
    }


@pytest.fixture()
def tiny():
    return create_model("unetmamba_tiny", num_classes=3)


def test_official_checkpoint_is_the_published_encoder(published):
    shapes = _official_rest_lite_shapes()
    without_head = sum(math.prod(s) for k, s in shapes.items() if not k.startswith("head."))
    buffers = sum(math.prod(s) for k, s in shapes.items() if "running_" in k or "num_batches" in k)
    assert without_head - buffers == _count(published.encoder)


def test_loads_official_rest_lite(published, tmp_path):
    state = _official_checkpoint()
    path = tmp_path / "rest_lite.pth"
    torch.save(state, path)
    decoder_before = {k: v.clone() for k, v in published.decoder.state_dict().items()}
    assert load_encoder_weights(published, path) is published
    encoder = published.encoder
    pairs = {
        "stem.conv1.weight": encoder.stem.conv1.weight,
        "stem.norm2.running_var": encoder.stem.norm2.running_var,
        "stem.pos.pa_conv.bias": encoder.stem.pixel_attn.conv.bias,
        "patch_embed_2.pos.pa_conv.weight": encoder.patch_embeds[0].pixel_attn.conv.weight,
        "patch_embed_4.norm.weight": encoder.patch_embeds[2].norm.weight,
        "stage1.1.attn.sr.weight": encoder.stages[0][1].attn.sr.weight,
        "stage2.0.attn.transform_conv.weight": encoder.stages[1][0].attn.head_mix.weight,
        "stage4.1.mlp.fc2.bias": encoder.stages[3][1].mlp.fc2.bias,
        "norm.weight": encoder.norm.weight,
    }
    for key, tensor in pairs.items():
        assert torch.equal(tensor, state[key]), key
    # every published tensor but the classifier landed somewhere, each exactly once
    loaded = [t for t in encoder.state_dict().values() if t.dim() > 0]
    published_tensors = [t for k, t in state.items() if t.dim() > 0 and not k.startswith("head.")]
    assert len(loaded) == len(published_tensors)
    assert all(any(torch.equal(t, p) for p in published_tensors) for t in loaded)
    for key, tensor in published.decoder.state_dict().items():
        assert torch.equal(tensor, decoder_before[key])


def test_loads_wrapped_and_safetensors(tiny, tmp_path):
    from safetensors.torch import save_file

    state = _official_checkpoint(embed_dim=16)
    torch.save({"model": state, "epoch": 300}, tmp_path / "wrapped.pth")
    tiny.load_encoder_weights(tmp_path / "wrapped.pth")
    assert torch.equal(tiny.encoder.norm.bias, state["norm.bias"])
    state = {k: v + 1 for k, v in state.items()}
    save_file(state, str(tmp_path / "rest.safetensors"))
    tiny.load_encoder_weights(tmp_path / "rest.safetensors")
    assert torch.equal(tiny.encoder.norm.bias, state["norm.bias"])


@pytest.mark.parametrize("bands", [1, 4, 6])
def test_first_conv_adapts_to_band_count(bands, tmp_path):
    model = create_model("unetmamba_tiny", num_classes=3, in_channels=bands)
    state = _official_checkpoint(embed_dim=16)
    torch.save(state, tmp_path / "rest.pth")
    model.load_encoder_weights(tmp_path / "rest.pth")
    rgb = state["stem.conv1.weight"]
    weight = model.encoder.stem.conv1.weight.detach()
    if bands == 1:
        torch.testing.assert_close(weight, rgb.sum(dim=1, keepdim=True))
    else:
        for band in range(bands):
            torch.testing.assert_close(weight[:, band], rgb[:, band % 3] * 3 / bands)
    if bands % 3 == 0 or bands == 1:
        # then an image whose bands are all equal gives exactly the RGB response
        grey = torch.randn(1, 1, 32, 32)
        torch.testing.assert_close(
            F.conv2d(grey.expand(-1, bands, -1, -1), weight),
            F.conv2d(grey.expand(-1, 3, -1, -1), rgb),
            atol=1e-4,
            rtol=1e-4,
        )


class _Payload:
    """Not a tensor: unpickling it would run code, which weights_only refuses."""


def _edited(edit):
    state = _official_checkpoint(embed_dim=16)
    edit(state)
    return state


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (_edited(lambda s: s.pop("stage3.1.mlp.fc2.bias")), "missing 'stage3.1.mlp.fc2.bias'"),
        (
            _edited(lambda s: s.update({"stage3.2.norm1.weight": torch.zeros(64)})),
            "unexpected key 'stage3.2.norm1.weight'",
        ),
        (_official_checkpoint(embed_dim=32), "'stem.conv1.weight' has shape (16, 3, 3, 3)"),
        ({"model": _Payload()}, "not a readable checkpoint"),
        ([1, 2, 3], "not a state dict"),
    ],
    ids=["missing", "unexpected", "wrong width", "code", "not a dict"],
)
def test_checkpoint_that_does_not_fit(tiny, tmp_path, content, words):
    path = tmp_path / "rest_lite.pth"
    torch.save(content, path)
    with pytest.raises(ModelFileError) as error:
        tiny.load_encoder_weights(path)
    message = str(error.value)
    assert str(path) in message and words in message
    assert "\n" not in message


def test_garbage_and_missing_files(tiny, tmp_path):
    garbage = tmp_path / "rest_lite.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ModelFileError, match="not a readable checkpoint"):
        tiny.load_encoder_weights(garbage)
    with pytest.raises(ModelFileNotFoundError):
        tiny.load_encoder_weights(tmp_path / "absent.pth")
