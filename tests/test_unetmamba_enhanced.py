"""Enhanced UNetMamba: sizes, each addition's formula and switch, the aux output and its loss
(the registry contract itself is tested for every model in test_models.py)."""

import pytest
import torch
import torch.nn.functional as F

from landcover.engine.errors import ConfigError
from landcover.engine.losses import EnhancedLoss, background_logit_from_classes
from landcover.engine.models import create_model, to_deploy
from landcover.engine.models.unetmamba_enhanced import (
    BackgroundForegroundWeighting,
    CrossScaleFusion,
    MultiScaleSpatialAttention,
)

ADDITIONS = ("spatial_attention", "cross_scale_fusion", "background_weighting")


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _channels_last(batch: int, dim: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, size, size, dim, generator=generator)


def test_parameter_count_next_to_the_readme():
    trained = create_model("unetmamba_enhanced", num_classes=6)
    deployed = to_deploy(trained)
    assert _count(trained) == 15_756_223  # README: "about 15.76M"
    assert _count(deployed) == 14_891_583
    plain = create_model("unetmamba", num_classes=6)
    decoder = trained.decoder
    parts = [_count(decoder.attentions), _count(decoder.fusions), _count(decoder.weighting)]
    assert parts == [903_843, 82_304, 14_130]
    assert _count(trained) - _count(plain) == sum(parts)


@pytest.mark.parametrize("addition", ADDITIONS)
def test_each_addition_switches_off(addition):
    model = create_model("unetmamba_enhanced_tiny", num_classes=3, **{addition: False})
    assert model.arch_config[addition] is False
    part = {"spatial_attention": "attentions", "cross_scale_fusion": "fusions",
            "background_weighting": "weighting"}[addition]
    assert getattr(model.decoder, part) is None
    logits, aux = model.train()(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 3, 64, 64)
    assert ("background" in aux) == (addition != "background_weighting")


def test_with_every_addition_off_it_is_unetmamba():
    torch.manual_seed(0)
    plain = create_model("unetmamba_tiny", num_classes=4).eval()
    off = dict.fromkeys(ADDITIONS, False)
    enhanced = create_model("unetmamba_enhanced_tiny", num_classes=4, **off).eval()
    enhanced.load_state_dict(plain.state_dict())  # strict: the same parameters
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enhanced(x), plain(x))
        plain.train(), enhanced.train()
        torch.manual_seed(1)
        _, aux_logits = plain(x)
        torch.manual_seed(1)
        _, aux = enhanced(x)
    torch.testing.assert_close(aux["lsm"], aux_logits)


def test_train_output_carries_the_background_logit():
    model = create_model("unetmamba_enhanced_tiny", num_classes=5).train()
    x = torch.randn(2, 3, 64, 96)
    logits, aux = model(x)
    assert set(aux) == {"lsm", "background"}
    assert logits.shape == aux["lsm"].shape == (2, 5, 64, 96)
    assert aux["background"].shape == (2, 1, 64, 96)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)
        assert isinstance(to_deploy(model).train()(x), torch.Tensor)


def test_enhanced_loss_trains_the_background_head_through_its_own_term():
    torch.manual_seed(0)
    model = create_model("unetmamba_enhanced_tiny", num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64))
    target[:, :8] = 255
    torch.manual_seed(1)
    output = model(x)
    suppression_only = EnhancedLoss(
        dice_weight=0, ce_weight=0, focal_weight=0, tversky_weight=0, boundary_weight=0,
        aux_weight=0, background_weight=1.0,
    )
    # the term reads the model's head, not the softmax over the classes
    from_head = suppression_only(output, target)
    from_classes = suppression_only(output[0], target)
    assert from_head.item() != pytest.approx(from_classes.item())
    EnhancedLoss()(output, target).backward()
    head = model.decoder.weighting.background_head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert torch.isfinite(background_logit_from_classes(output[0], 0)).all()


def test_embed_dim_must_split_into_eight_attention_branches():
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_model("unetmamba_enhanced", num_classes=2, embed_dim=12)


# ------------------------------------------------------------------------ blocks


def test_spatial_attention_formula():
    torch.manual_seed(0)
    attention = MultiScaleSpatialAttention(32).eval()
    assert [branch[0].kernel_size for branch in attention.branches] == [
        (1, 1), (3, 3), (5, 5), (7, 7)
    ]
    assert [branch[0].out_channels for branch in attention.branches] == [4, 4, 4, 4]
    x = _channels_last(2, 32, 8)
    nchw = x.permute(0, 3, 1, 2)
    branches = torch.cat([F.relu(b[1](b[0](nchw))) for b in attention.branches], dim=1)
    gate = torch.sigmoid(attention.to_map(branches))  # one map for all channels
    assert gate.shape == (2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(attention(x), x * gate.permute(0, 2, 3, 1))


def test_cross_scale_fusion_formula():
    torch.manual_seed(0)
    fusion = CrossScaleFusion(16, 32)
    x, coarse = _channels_last(1, 16, 8), _channels_last(1, 32, 4, seed=1)
    # the reference order: upsample first, then project (the module projects first)
    upsampled = F.interpolate(coarse.permute(0, 3, 1, 2), size=(8, 8), mode="bilinear")
    u = fusion.project(upsampled.permute(0, 2, 3, 1))
    gate = torch.sigmoid(fusion.gate(torch.cat([x, u], dim=-1)))
    with torch.no_grad():
        torch.testing.assert_close(fusion(x, coarse), x + gate * u)


def test_weighting_formula_and_alpha_range():
    torch.manual_seed(0)
    weighting = BackgroundForegroundWeighting(16).eval()
    assert weighting.alpha.item() == pytest.approx(0.45)
    x = _channels_last(2, 16, 8)
    nchw = x.permute(0, 3, 1, 2)
    with torch.no_grad():
        z = weighting.background_head(nchw)
        b = torch.sigmoid(z)
        expected = nchw * (1 - 0.45 * b) + weighting.enhancer(nchw) * (1 - b)
        out, background_logit = weighting(x)
    torch.testing.assert_close(background_logit, z)
    torch.testing.assert_close(out, expected.permute(0, 2, 3, 1))
    for raw, alpha in ((-1e4, 0.1), (1e4, 0.8), (3.0, 0.1 + 0.7 / (1 + torch.e**-3))):
        with torch.no_grad():
            weighting.alpha_raw.fill_(raw)
        assert weighting.alpha.item() == pytest.approx(alpha)
