"""UPSeg: wavelength-conditioned optical encoding with cross-modal guidance (optical + SAR/DEM).

UPSeg (optical + SAR; WHU-OPT-SAR, GID) has no public code; this is our own version of its
two ideas, built on DOFA (Xiong et al., "Neural Plasticity-Inspired Multimodal Foundation
Model for Earth Observation", 2024):

1. **One optical network for any band set** (DOFA's dynamic patch embedding). The optical
   patch embedding has no fixed kernel: for bands with central wavelengths ``λ_1..λ_n``
   (micrometres) it generates one::

       e_j   = [sin(1000 λ_j ω_i), cos(1000 λ_j ω_i)]_i,  ω_i = 10000^(-2i/D)   (D = wave_dim)
       h_j   = e_j + ReLU(W_2 ReLU(W_1 e_j + b_1) + b_2)            (residual MLP)
       T     = Transformer([w_1..w_m, h_1..h_n, t_b])                (1 layer, m weight tokens,
                                                                      a bias token t_b)
       K[:, j] = reshape(W_K (T_{h_j} + h_j)) / sqrt(n p^2)         (C x p x p slice of band j)
       b     = W_b T_{t_b}
       z     = LN(conv(x_optical, K, b, stride p))                   (p = 4: stride-4 tokens)

   The 1/sqrt(n p^2) fan-in scale (DOFA uses a constant 0.01) keeps the embedding's
   variance independent of the number of bands, so 3-, 4- and 13-band inputs start alike.
   The default wavelengths (arch option ``optical_wavelengths_um``) can be overridden per
   call, ``model(x, wavelengths=[...])``, with any number of optical bands.

2. **Each modality guides the other** (UPSeg's cross-modal interaction). SAR, DEM and any
   other non-optical modality get their own fixed patch embedding (a p x p stride-p conv
   per modality, whose bias is that modality's token), summed into one auxiliary stream.
   The optical stream ``o`` and the auxiliary stream ``a`` run their own 4-stage
   hierarchical encoders (ConvNeXt-style blocks; widths ``embed_dims`` at strides
   4/8/16/32) and after every stage exchange information both ways::

       c_o = CA(LN(o) <- Pool_r(LN(a)))      c_a = CA(LN(a) <- Pool_r(LN(o)))
       g_o = σ(W_go [LN(o), c_o])            g_a = σ(W_ga [LN(a), c_a])
       o'  = o + g_o ⊙ c_o                   a'  = a + g_a ⊙ c_a

   ``CA(q <- kv)`` is multi-head cross-attention (queries from one stream, keys and values
   from the other, average-pooled by r = 8/4/2/1 at the four stages as in PVT, so the cost
   stays linear in the pixels); the gates g let each pixel and channel decide how far it
   trusts the other sensor (speckle, clouds). Both updates use the features from before
   the exchange, so neither stream is privileged. The exchanged features are what the next
   stage (and the decoder) sees: optical features depend on the SAR input from stage 1 on.

Decoder: per scale the two streams are fused, ``f_s = ReLU(BN(W_s [o_s, a_s]))`` (1x1 to
``decoder_dim``), then an FPN top-down path ``p_s = ReLU(BN(conv3x3(f_s + up(p_{s+1}))))``,
and a 1x1 classifier on ``p_1`` (stride 4) upsampled x4 bilinearly to full resolution.
Train-only auxiliary head: per stream a 1x1 classifier on its stage-3 features (stride
16), summed and upsampled, so each modality must be discriminative on its own.

The input is ONE tensor, the modalities' bands concatenated in the order of ``modalities``
(names; exactly one is ``"optical"``) with ``modality_channels`` bands each. With only an
optical modality the model is a single-stream DOFA-style segmenter without interaction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.errors import ConfigError
from landcover.engine.models.layers import check_input
from landcover.engine.models.registry import register_model

OPTICAL = "optical"
PATCH_SIZE = 4
MLP_RATIO = 4
HEAD_DIM = 32
# PVT-style key/value pooling of the cross-attention at strides 4/8/16/32.
KV_REDUCTION = (8, 4, 2, 1)
AUX_STAGE = 2  # the stride-16 stage feeds the train-only head

# Central wavelengths (µm) assumed when none are given, by optical band count.
S2_WAVELENGTHS_UM = (  # Sentinel-2 B1..B8, B8A, B9..B12
    0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190
)
DEFAULT_WAVELENGTHS_UM = {
    3: (0.665, 0.560, 0.490),  # red, green, blue
    4: (0.665, 0.560, 0.490, 0.842),  # red, green, blue, near infrared
    13: S2_WAVELENGTHS_UM,
}


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _heads(dim: int) -> int:
    """Attention heads of about ``HEAD_DIM`` channels each."""
    return max(1, dim // HEAD_DIM)


def wavelength_embedding(wavelengths_um: torch.Tensor, dim: int) -> torch.Tensor:
    """DOFA's sin-cos embedding of wavelengths in nanometres: ``(n,)`` -> ``(n, dim)``."""
    frequencies = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float32,
                                            device=wavelengths_um.device) / (dim / 2))
    angles = (wavelengths_um.float() * 1000.0)[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


# --- blocks ----------------------------------------------------------------------------------


class ResidualMlp(nn.Module):
    """``x + ReLU(W2 ReLU(W1 x))`` (DOFA's refinement of the wavelength embedding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.fc2(F.relu(self.fc1(x))))


class WavelengthPatchEmbed(nn.Module):
    """DOFA's dynamic patch embedding: a stride-``patch_size`` conv whose kernel slice for
    each band is generated from the band's wavelength (see the module docstring)."""

    def __init__(
        self, embed_dim: int, patch_size: int, wave_dim: int, weight_tokens: int
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.wave_dim = wave_dim
        self.wave_mlp = ResidualMlp(wave_dim)
        layer = nn.TransformerEncoderLayer(
            wave_dim, nhead=_heads(wave_dim), dim_feedforward=MLP_RATIO * wave_dim,
            dropout=0.0, activation="gelu", batch_first=True,
        )
        self.generator = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.weight_tokens = nn.Parameter(torch.empty(weight_tokens, wave_dim))
        self.bias_token = nn.Parameter(torch.empty(1, wave_dim))
        self.to_kernel = nn.Linear(wave_dim, embed_dim * patch_size * patch_size)
        self.to_bias = nn.Linear(wave_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.normal_(self.weight_tokens, std=0.02)
        nn.init.normal_(self.bias_token, std=0.02)

    def kernel(self, wavelengths_um: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight ``(embed_dim, n, p, p)`` and bias ``(embed_dim,)`` for n bands."""
        n, p = wavelengths_um.shape[0], self.patch_size
        waves = self.wave_mlp(wavelength_embedding(wavelengths_um, self.wave_dim))
        tokens = torch.cat([self.weight_tokens, waves, self.bias_token], dim=0)
        out = self.generator(tokens[None])[0]
        band_out = out[self.weight_tokens.shape[0]:-1]
        weight = self.to_kernel(band_out + waves).view(n, self.embed_dim, p, p)
        weight = weight.transpose(0, 1) / math.sqrt(n * p * p)
        return weight, self.to_bias(out[-1])

    def forward(self, x: torch.Tensor, wavelengths_um: torch.Tensor) -> torch.Tensor:
        """``(B, n, H, W)`` -> channels-last ``(B, H/p, W/p, embed_dim)``."""
        weight, bias = self.kernel(wavelengths_um.to(x.device))
        return self.norm(_nhwc(F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype),
                                        stride=self.patch_size)))


class ModalityPatchEmbed(nn.Module):
    """Fixed patch embeddings for the non-optical modalities, one conv each (its bias is
    the modality's token), summed into one stream and layer-normalised."""

    def __init__(self, channels: Sequence[int], embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, embed_dim, patch_size, stride=patch_size) for c in channels
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        embedded = sum(conv(part) for conv, part in zip(self.convs, parts, strict=True))
        return self.norm(_nhwc(embedded))


class ConvBlock(nn.Module):
    """ConvNeXt block on channels-last maps: x + MLP(LN(dwconv7x7(x)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, MLP_RATIO * dim)
        self.fc2 = nn.Linear(MLP_RATIO * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(_nhwc(self.dwconv(_nchw(x))))
        return x + self.fc2(F.gelu(self.fc1(y)))


class Downsample(nn.Module):
    """LN then a 2x2 stride-2 conv (channels-last in and out)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, out_dim, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _nhwc(self.conv(_nchw(self.norm(x))))


def _stage(dim: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(ConvBlock(dim) for _ in range(depth)))


class ReducedCrossAttention(nn.Module):
    """Multi-head cross-attention, queries from one stream, keys and values from the other
    average-pooled by ``reduction`` (channels-last in and out)."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.heads = _heads(dim)
        self.reduction = reduction
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        b, h, w, c = query.shape
        heads = self.heads
        source = self.norm_kv(source)
        if self.reduction > 1:
            source = _nhwc(F.avg_pool2d(_nchw(source), self.reduction))
        q = self.q(self.norm_q(query)).view(b, h * w, heads, c // heads).transpose(1, 2)
        k, v = self.kv(source).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class CrossModalInteraction(nn.Module):
    """Bidirectional gated cross-attention between the optical and auxiliary streams:
    ``o' = o + σ(W_go [LN(o), c_o]) ⊙ c_o`` with ``c_o = CA(o <- a)``, and the same for
    ``a`` (both from the features before the exchange)."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.optical_from_aux = ReducedCrossAttention(dim, reduction)
        self.aux_from_optical = ReducedCrossAttention(dim, reduction)
        self.optical_gate = nn.Linear(2 * dim, dim)
        self.aux_gate = nn.Linear(2 * dim, dim)

    @staticmethod
    def _guided(x: torch.Tensor, guidance: torch.Tensor, gate: nn.Linear,
                norm: nn.LayerNorm) -> torch.Tensor:
        return x + torch.sigmoid(gate(torch.cat([norm(x), guidance], dim=-1))) * guidance

    def forward(
        self, optical: torch.Tensor, aux: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        to_optical = self.optical_from_aux(optical, aux)
        to_aux = self.aux_from_optical(aux, optical)
        # the queries' own LayerNorms describe each stream's state for its gate
        return (
            self._guided(optical, to_optical, self.optical_gate, self.optical_from_aux.norm_q),
            self._guided(aux, to_aux, self.aux_gate, self.aux_from_optical.norm_q),
        )


class ConvBnRelu(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                      bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FpnDecoder(nn.Module):
    """Per-scale fusion of the streams (1x1), FPN top-down path, 1x1 classifier at
    stride 4, bilinear x4 to full resolution."""

    def __init__(
        self, dims: Sequence[int], streams: int, decoder_dim: int, num_classes: int
    ) -> None:
        super().__init__()
        self.fuse = nn.ModuleList(ConvBnRelu(streams * d, decoder_dim, 1) for d in dims)
        self.smooth = nn.ModuleList(
            ConvBnRelu(decoder_dim, decoder_dim, 3) for _ in range(len(dims) - 1)
        )
        self.classify = nn.Conv2d(decoder_dim, num_classes, 1)

    def forward(self, features: Sequence[Sequence[torch.Tensor]], size: tuple[int, int]
                ) -> torch.Tensor:
        """``features[s]``: the streams' channels-last maps at scale s (shallow first)."""
        fused = [fuse(_nchw(torch.cat(list(maps), dim=-1)))
                 for fuse, maps in zip(self.fuse, features, strict=True)]
        x = fused[-1]
        for smooth, lateral in zip(self.smooth[::-1], fused[-2::-1], strict=True):
            up = F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            x = smooth(lateral + up)
        logits = self.classify(x)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# --- model -----------------------------------------------------------------------------------


class UPSeg(nn.Module):
    """UPSeg (see the module docstring). ``forward(x, wavelengths=None)`` takes the
    modalities' bands concatenated, ``(B, in_channels, H, W)`` with H and W multiples of
    32, and returns logits ``(B, num_classes, H, W)`` (with the auxiliary head in training
    mode: ``(logits, aux_logits)``). ``wavelengths`` (µm, one per optical band) overrides
    the default optical wavelengths for this call, with any number of optical bands."""

    input_multiple = 32
    wavelength_conditioned = True

    def __init__(
        self,
        *,
        num_classes: int,
        modalities: Sequence[str],
        modality_channels: Sequence[int],
        optical_wavelengths_um: Sequence[float],
        aux_head: bool = True,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        decoder_dim: int = 128,
        wave_dim: int = 128,
        weight_tokens: int = 128,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.modalities = tuple(modalities)
        self.modality_channels = tuple(modality_channels)
        self.optical_index = self.modalities.index(OPTICAL)
        dims = tuple(embed_dims)
        self.register_buffer(
            "optical_wavelengths",
            torch.tensor(optical_wavelengths_um, dtype=torch.float32),
            persistent=False,  # part of the architecture config, not of the weights
        )
        aux_channels = [c for i, c in enumerate(modality_channels) if i != self.optical_index]
        self.optical_embed = WavelengthPatchEmbed(dims[0], PATCH_SIZE, wave_dim, weight_tokens)
        self.optical_stages = self._encoder(dims, depths)
        self.optical_downsamples = self._downsamples(dims)
        if aux_channels:
            self.aux_embed = ModalityPatchEmbed(aux_channels, dims[0], PATCH_SIZE)
            self.aux_stages = self._encoder(dims, depths)
            self.aux_downsamples = self._downsamples(dims)
            self.interactions = nn.ModuleList(
                CrossModalInteraction(d, r) for d, r in zip(dims, KV_REDUCTION, strict=True)
            )
        else:
            self.aux_embed = None
        streams = 2 if aux_channels else 1
        self.decoder = FpnDecoder(dims, streams, decoder_dim, num_classes)
        self.aux_head = (
            nn.ModuleList(nn.Conv2d(dims[AUX_STAGE], num_classes, 1) for _ in range(streams))
            if aux_head else None
        )

    @staticmethod
    def _encoder(dims: Sequence[int], depths: Sequence[int]) -> nn.ModuleList:
        return nn.ModuleList(_stage(d, n) for d, n in zip(dims, depths, strict=True))

    @staticmethod
    def _downsamples(dims: Sequence[int]) -> nn.ModuleList:
        return nn.ModuleList(Downsample(dims[i - 1], dims[i]) for i in range(1, len(dims)))

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    @property
    def in_channels(self) -> int:
        return sum(self.modality_channels)

    def set_optical_wavelengths(self, wavelengths_um: Sequence[float]) -> None:
        """Change the default optical wavelengths (same band count; a different count is
        a per-call ``wavelengths=`` override)."""
        wavelengths = _checked_wavelengths(wavelengths_um)
        if wavelengths.numel() != self.optical_wavelengths.numel():
            raise ConfigError(
                f"{wavelengths.numel()} wavelengths given for the model's "
                f"{self.optical_wavelengths.numel()} optical bands"
            )
        self.optical_wavelengths = wavelengths.to(self.optical_wavelengths.device)

    def encode(
        self, x: torch.Tensor, wavelengths: Sequence[float] | torch.Tensor | None = None
    ) -> list[list[torch.Tensor]]:
        """Per stage, the streams' channels-last features after the exchange (optical
        first, then the auxiliary stream when there is one)."""
        waves = self.optical_wavelengths if wavelengths is None else \
            _checked_wavelengths(wavelengths)
        parts = self._split(x, waves.numel())
        optical = self.optical_embed(parts.pop(self.optical_index), waves)
        aux = self.aux_embed(parts) if self.aux_embed is not None else None
        features = []
        for index, stage in enumerate(self.optical_stages):
            if index > 0:
                optical = self.optical_downsamples[index - 1](optical)
            optical = stage(optical)
            if aux is None:
                features.append([optical])
                continue
            if index > 0:
                aux = self.aux_downsamples[index - 1](aux)
            aux = self.aux_stages[index](aux)
            optical, aux = self.interactions[index](optical, aux)
            features.append([optical, aux])
        return features

    def forward(
        self, x: torch.Tensor, wavelengths: Sequence[float] | torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encode(x, wavelengths)
        size = x.shape[-2:]
        logits = self.decoder(features, size)
        if self.aux_head is None or not self.training:
            return logits
        aux_logits = sum(
            head(_nchw(feature))
            for head, feature in zip(self.aux_head, features[AUX_STAGE], strict=True)
        )
        return logits, F.interpolate(aux_logits, size=size, mode="bilinear", align_corners=False)

    def _split(self, x: torch.Tensor, optical_bands: int) -> list[torch.Tensor]:
        channels = list(self.modality_channels)
        channels[self.optical_index] = optical_bands
        layout = ", ".join(f"{n} {c}" for n, c in zip(self.modalities, channels, strict=True))
        check_input(x, sum(channels), self.input_multiple, layout)
        return list(torch.split(x, channels, dim=1))


def _checked_wavelengths(wavelengths_um: Sequence[float] | torch.Tensor) -> torch.Tensor:
    waves = torch.as_tensor(wavelengths_um, dtype=torch.float32).reshape(-1)
    if waves.numel() == 0 or not bool(torch.all(torch.isfinite(waves) & (waves > 0))):
        raise ConfigError(
            f"optical wavelengths must be positive numbers in micrometres, got "
            f"{waves.tolist()}"
        )
    return waves


def _modality_layout(
    in_channels: int,
    modalities: Sequence[str] | None,
    modality_channels: Sequence[int] | None,
    optical_wavelengths_um: Sequence[float] | None,
) -> tuple[list[str], list[int], list[float]]:
    """Fill in the defaults and check the options agree; ConfigError naming the clash."""
    modalities = [OPTICAL] if modalities is None else list(modalities)
    if modality_channels is None:
        if len(modalities) != 1:
            raise ConfigError(f"upseg: give modality_channels for the modalities {modalities}")
        modality_channels = [in_channels]
    modality_channels = list(modality_channels)
    if modalities.count(OPTICAL) != 1:
        raise ConfigError(f"upseg: modalities {modalities} must name {OPTICAL!r} exactly once")
    if len(modality_channels) != len(modalities) or any(c < 1 for c in modality_channels):
        raise ConfigError(
            f"upseg: modality_channels {modality_channels} must give a band count >= 1 for "
            f"each of the modalities {modalities}"
        )
    if sum(modality_channels) != in_channels:
        raise ConfigError(
            f"upseg: modality_channels {modality_channels} add up to "
            f"{sum(modality_channels)}, not in_channels={in_channels}"
        )
    optical_bands = modality_channels[modalities.index(OPTICAL)]
    if optical_wavelengths_um is None:
        if optical_bands not in DEFAULT_WAVELENGTHS_UM:
            raise ConfigError(
                f"upseg: give optical_wavelengths_um for the {optical_bands} optical bands "
                f"(defaults exist for {sorted(DEFAULT_WAVELENGTHS_UM)} bands)"
            )
        optical_wavelengths_um = DEFAULT_WAVELENGTHS_UM[optical_bands]
    wavelengths = [float(w) for w in optical_wavelengths_um]
    if len(wavelengths) != optical_bands:
        raise ConfigError(
            f"upseg: {len(wavelengths)} optical_wavelengths_um for {optical_bands} optical bands"
        )
    _checked_wavelengths(wavelengths)
    return modalities, modality_channels, wavelengths


# --- registered variants ---------------------------------------------------------------------


@register_model("upseg")
def upseg(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    modalities: list[str] | None = None,
    modality_channels: list[int] | None = None,
    optical_wavelengths_um: list[float] | None = None,
    embed_dims: list[int] | None = None,
    depths: list[int] | None = None,
    decoder_dim: int = 128,
    wave_dim: int = 128,
    weight_tokens: int = 128,
) -> UPSeg:
    """UPSeg: DOFA-style wavelength-conditioned optical stream and an auxiliary SAR/DEM
    stream with gated bidirectional cross-attention after each of the 4 stages.

    ``modalities`` (default ``["optical"]``) names the input groups in channel order, one
    of them ``"optical"``; ``modality_channels`` their band counts (default: all optical);
    ``optical_wavelengths_um`` the optical bands' central wavelengths (defaults for 3 (RGB),
    4 (RGB + NIR) and 13 (Sentinel-2) bands). Widths: ``embed_dims`` (default
    64/128/256/512), ``depths`` (default 2/2/2/2), ``decoder_dim``; the kernel generator's
    ``wave_dim`` and ``weight_tokens`` as DOFA (128, 128).
    """
    modalities, modality_channels, wavelengths = _modality_layout(
        in_channels, modalities, modality_channels, optical_wavelengths_um
    )
    embed_dims = [64, 128, 256, 512] if embed_dims is None else embed_dims
    depths = [2, 2, 2, 2] if depths is None else depths
    if len(embed_dims) != len(KV_REDUCTION) or len(depths) != len(KV_REDUCTION):
        raise ConfigError(
            f"upseg: embed_dims and depths need {len(KV_REDUCTION)} entries (one per stage), "
            f"got {embed_dims} and {depths}"
        )
    for name, width in [*(("embed_dims", d) for d in embed_dims), ("wave_dim", wave_dim)]:
        if width < 2 or width % 2 or width % _heads(width):
            raise ConfigError(
                f"upseg: {name} {width} must be even and split into {_heads(width)} heads "
                f"of about {HEAD_DIM} channels"
            )
    return UPSeg(
        num_classes=num_classes,
        modalities=modalities,
        modality_channels=modality_channels,
        optical_wavelengths_um=wavelengths,
        aux_head=aux_head,
        embed_dims=embed_dims,
        depths=depths,
        decoder_dim=decoder_dim,
        wave_dim=wave_dim,
        weight_tokens=weight_tokens,
    )
