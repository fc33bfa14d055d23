"""Enhanced UNetMamba: UNetMamba (:mod:`landcover.engine.models.unetmamba`) with three
additions to its decoder, from a project README that gives no paper or code. Where the
README names a part without defining it, the definition below is ours.

Notation: ``x`` a decoder feature map with ``C`` channels; ``BN`` batch norm; ``Conv_k`` a
``k x k`` convolution; ``DW`` depthwise; ``[a, b]`` concatenation along channels;
``up(.)`` bilinear upsampling by 2; ``s`` the sigmoid.

1. Multi-scale spatial attention (README), after every decoder stage:
   ``a = s(Conv_1([ReLU(BN(Conv_k(x))) for k in 1, 3, 5, 7]))`` (each branch to ``C/8``
   channels, ``a`` one map); ``out = x * a``.
2. Cross-scale fusion guided by attention (ours), into every decoder stage but the
   deepest, from the stage before it (half the resolution, ``2C`` channels ``y``):
   ``u = up(W_p y)`` (1x1 projection to ``C``; applied before the upsampling, which it
   commutes with), ``g = s(W_g [x, u])`` (a per-pixel, per-channel gate),
   ``out = x + g * u``. It comes before the spatial attention of that stage.
3. Adaptive background/foreground weighting (README formula), on the last (shallowest)
   stage's output before the final patch expand:
   background head ``b = s(z)``, ``z = Conv_1(ReLU(BN(Conv_3(x))))`` (``C -> C/4 -> 1``);
   foreground enhancer ``f(x) = Conv_1(GELU(BN(DWConv_3(x))))`` (``C -> C``);
   ``out = x * (1 - alpha * b) + f(x) * (1 - b)`` with ``alpha = 0.1 + 0.7 * s(r)``, ``r`` a
   learnt scalar (starting at 0, so alpha = 0.45), which keeps alpha inside [0.1, 0.8].

Each addition is switched by an arch option (``spatial_attention``, ``cross_scale_fusion``,
``background_weighting``), for ablations; all are on by default. With the LSM
(``aux_head=True``) the training-mode output is ``(logits, aux)`` where ``aux`` is a dict:
``"lsm"`` the summed LSM logits (as UNetMamba's aux output) and, with the weighting on,
``"background"`` the background logit ``z`` upsampled to the input size ``(B, 1, H, W)``
(for :class:`landcover.engine.losses.EnhancedLoss`'s background-suppression term). Eval and
deploy forms return the logits only.

Parameters for 6 classes: 15,756,223 with the LSM, 14,891,583 deployed (the README claims
about 15.76M; UNetMamba has 14,755,946 and 13,891,306); the additions weigh 1,000,277
(attention 903,843, fusion 82,304, weighting 14,130). The README's other claim (+2.5 mIoU
on LoveDA over UNetMamba) is unverified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.errors import ConfigError
from landcover.engine.models.registry import register_model
from landcover.engine.models.unetmamba import MambaDecoder, UNetMamba, _nchw, _nhwc

ATTENTION_KERNELS = (1, 3, 5, 7)
ATTENTION_REDUCTION = 8  # each attention branch has C / 8 channels
BACKGROUND_HIDDEN_REDUCTION = 4  # the background head's hidden layer has C / 4 channels
ALPHA_RANGE = (0.1, 0.8)


# --- blocks --------------------------------------------------------------------------------


class MultiScaleSpatialAttention(nn.Module):
    """``x * sigmoid(1x1 conv([ReLU(BN(conv_k(x))) for k in 1, 3, 5, 7]))`` on a
    channels-last map; the branches have ``dim / 8`` channels each, the gate one."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        width = dim // ATTENTION_REDUCTION
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, width, k, padding=k // 2, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
            for k in ATTENTION_KERNELS
        )
        self.to_map = nn.Conv2d(width * len(ATTENTION_KERNELS), 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = _nchw(x)
        scales = torch.cat([branch(features) for branch in self.branches], dim=1)
        return x * _nhwc(torch.sigmoid(self.to_map(scales)))


class CrossScaleFusion(nn.Module):
    """``x + sigmoid(W_g [x, u]) * u`` with ``u = up(W_p coarse)``: the deeper decoder stage's
    output, projected to this stage's width and upsampled, let in through a gate computed
    from both (channels-last maps)."""

    def __init__(self, dim: int, coarse_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(coarse_dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        # per-pixel projection and bilinear upsampling commute (the weights sum to 1), so
        # project at the coarse resolution: 4x fewer multiply-adds
        upsampled = F.interpolate(
            _nchw(self.project(coarse)), size=x.shape[1:3], mode="bilinear", align_corners=False
        )
        upsampled = _nhwc(upsampled)
        gate = torch.sigmoid(self.gate(torch.cat([x, upsampled], dim=-1)))
        return x + gate * upsampled


class BackgroundForegroundWeighting(nn.Module):
    """``x * (1 - alpha * b) + f(x) * (1 - b)``: a background-probability head ``b`` damps
    the features where it sees background, a foreground enhancer ``f`` adds to them where
    it does not. ``alpha = 0.1 + 0.7 * sigmoid(r)`` stays in [0.1, 0.8]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(dim // BACKGROUND_HIDDEN_REDUCTION, 1)
        self.background_head = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )
        self.enhancer = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size=1),
        )
        self.alpha_raw = nn.Parameter(torch.zeros(()))

    @property
    def alpha(self) -> torch.Tensor:
        low, high = ALPHA_RANGE
        return low + (high - low) * torch.sigmoid(self.alpha_raw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channels-last ``x`` -> (weighted ``x``, background logit ``(B, 1, h, w)``)."""
        features = _nchw(x)
        background_logit = self.background_head(features)
        background = torch.sigmoid(background_logit)
        out = features * (1 - self.alpha * background) + self.enhancer(features) * (
            1 - background
        )
        return _nhwc(out), background_logit


class EnhancedMambaDecoder(MambaDecoder):
    """UNetMamba's decoder with the three additions (each optional). ``forward`` returns
    ``(logits, stage_outputs, background_logit)``, the last ``None`` without the
    weighting."""

    def __init__(
        self,
        dims: tuple[int, ...],
        num_classes: int,
        d_state: int,
        drop_path_rate: float,
        *,
        spatial_attention: bool = True,
        cross_scale_fusion: bool = True,
        background_weighting: bool = True,
    ) -> None:
        super().__init__(dims, num_classes, d_state, drop_path_rate)
        widths = dims[-2::-1]  # the decoder stages' widths, deep to shallow
        self.attentions = (
            nn.ModuleList(MultiScaleSpatialAttention(width) for width in widths)
            if spatial_attention
            else None
        )
        self.fusions = (
            nn.ModuleList(
                CrossScaleFusion(widths[i], widths[i - 1]) for i in range(1, len(widths))
            )
            if cross_scale_fusion
            else None
        )
        self.weighting = BackgroundForegroundWeighting(widths[-1]) if background_weighting else None

    def refine_stage(
        self, index: int, x: torch.Tensor, previous_outputs: list[torch.Tensor]
    ) -> torch.Tensor:
        if self.fusions is not None and index > 0:
            x = self.fusions[index - 1](x, previous_outputs[-1])
        if self.attentions is not None:
            x = self.attentions[index](x)
        return x

    def forward(  # type: ignore[override]  (one more output than the plain decoder)
        self, features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        stage_outputs = self.decode_stages(features)
        x, background_logit = stage_outputs[-1], None
        if self.weighting is not None:
            x, background_logit = self.weighting(x)
        return self.classify(x), stage_outputs, background_logit


# --- model -----------------------------------------------------------------------------------


class EnhancedUNetMamba(UNetMamba):
    """UNetMamba with the enhanced decoder. In training mode with the LSM, ``forward``
    returns ``(logits, {"lsm": aux_logits, "background": background_logit})`` (the
    ``"background"`` entry only with the weighting on); otherwise the logits."""

    decoder_class = EnhancedMambaDecoder

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check_input(x)
        logits, stage_outputs, background_logit = self.decoder(self.encoder(x))
        if self.aux_head is None or not self.training:
            return logits
        size = x.shape[-2:]
        aux = {"lsm": self.local_supervision(stage_outputs, size)}
        if background_logit is not None:
            aux["background"] = F.interpolate(
                background_logit, size=size, mode="bilinear", align_corners=False
            )
        return logits, aux


# --- registered variants ---------------------------------------------------------------------


@register_model("unetmamba_enhanced")
def unetmamba_enhanced(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    embed_dim: int = 64,
    d_state: int = 16,
    drop_path_rate: float = 0.2,
    spatial_attention: bool = True,
    cross_scale_fusion: bool = True,
    background_weighting: bool = True,
) -> EnhancedUNetMamba:
    """Enhanced UNetMamba: UNetMamba (64/128/256/512, d_state 16) with multi-scale spatial
    attention, attention-gated cross-scale fusion and background/foreground weighting in
    the decoder; 15.76M parameters with the LSM for 6 classes, 14.89M deployed."""
    if embed_dim % ATTENTION_REDUCTION:
        raise ConfigError(
            f"unetmamba_enhanced: embed_dim must be a multiple of {ATTENTION_REDUCTION}, "
            f"got {embed_dim}"
        )
    return EnhancedUNetMamba(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_head=aux_head,
        embed_dim=embed_dim,
        d_state=d_state,
        drop_path_rate=drop_path_rate,
        spatial_attention=spatial_attention,
        cross_scale_fusion=cross_scale_fusion,
        background_weighting=background_weighting,
    )


@register_model("unetmamba_enhanced_tiny")
def unetmamba_enhanced_tiny(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    embed_dim: int = 16,
    d_state: int = 4,
    drop_path_rate: float = 0.2,
    spatial_attention: bool = True,
    cross_scale_fusion: bool = True,
    background_weighting: bool = True,
) -> EnhancedUNetMamba:
    """Enhanced UNetMamba at a quarter of the width (16/32/64/128) and d_state 4: the same
    structure for fast tests and smoke runs."""
    return unetmamba_enhanced(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_head=aux_head,
        embed_dim=embed_dim,
        d_state=d_state,
        drop_path_rate=drop_path_rate,
        spatial_attention=spatial_attention,
        cross_scale_fusion=cross_scale_fusion,
        background_weighting=background_weighting,
    )
