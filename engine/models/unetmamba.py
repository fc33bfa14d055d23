"""UNetMamba (Zhu et al., "UNetMamba: An Efficient UNet-Like Mamba for Semantic Segmentation
of High-Resolution Remote Sensing Images", IEEE GRSL 2025).

A ResT-Lite encoder (Zhang & Yang, NeurIPS 2021) and the Mamba segmentation decoder: three
patch-expand / skip-fusion / VSS stages, a final x4 patch expand and a 1x1 head, plus the
train-only local supervision module (LSM). Written from the paper and the public reference
code (EnzeZhu2001/UNetMamba, with ResT and VMamba inside): shapes, initialisation and the
math follow it, and the parameter count matches (14,755,946 for 6 classes with the LSM).
Names differ in places; ``UNetMamba.load_encoder_weights`` maps the published ResT names.

Feature maps stay channels-last ``(B, H, W, C)`` between blocks so Linear and LayerNorm need
no permutes; convolutions see the same memory as an NCHW tensor in ``torch.channels_last``
format (:func:`_nchw` / :func:`_nhwc` are views, not copies).
"""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.errors import ModelFileError
from landcover.engine.models.layers import adapt_input_conv, check_input
from landcover.engine.models.registry import read_state_dict, register_model
from landcover.engine.ops import ss2d_scan, ss2d_scan_macs

# ResT-Lite's fixed structure; the width (embed_dim) is the only knob.
ENCODER_DEPTHS = (2, 2, 2, 2)
ENCODER_HEADS = (1, 2, 4, 8)
SPATIAL_REDUCTION = (8, 4, 2, 1)
MLP_RATIO = 4
DECODER_DEPTH = 2  # VSS blocks per decoder stage
INSTANCE_NORM_EPS = 1e-5  # nn.InstanceNorm2d's default, as ResT uses it


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """Channels-last ``(B, H, W, C)`` viewed as NCHW (memory format channels_last)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """An NCHW tensor viewed as ``(B, H, W, C)``; contiguous when it is channels_last."""
    return x.permute(0, 2, 3, 1)


def _depth_to_space(x: torch.Tensor, scale: int, channels_first: bool = False) -> torch.Tensor:
    """``(B, H, W, scale*scale, C)`` -> ``(B, H*scale, W*scale, C)`` (or ``(B, C, ...)``).

    Group ``p1 * scale + p2`` of a pixel becomes the pixel at offset ``(p1, p2)`` of its
    ``scale x scale`` block (einops ``b h w (p1 p2 c) -> b (h p1) (w p2) c``).
    """
    b, h, w, _, c = x.shape
    x = x.view(b, h, w, scale, scale, c)
    if channels_first:
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * scale, w * scale)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * scale, w * scale, c)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last dimension."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


# --- encoder: ResT-Lite --------------------------------------------------------------------


class PixelAttention(nn.Module):
    """ResT's positional encoding: ``x * sigmoid(depthwise 3x3 conv(x))`` on NCHW."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class ConvStem(nn.Module):
    """Three 3x3 convs (stride 2, 1, 2) with BN + ReLU between, then pixel attention."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_channels, 3, stride=2, padding=1, bias=False)
        self.pixel_attn = PixelAttention(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> ``(B, H/4, W/4, C)``."""
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return _nhwc(self.pixel_attn(self.conv3(x)))


class PatchEmbed(nn.Module):
    """Downsampling by 2: 3x3 conv (stride 2) + BN + pixel attention."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_dim)
        self.pixel_attn = PixelAttention(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _nhwc(self.pixel_attn(self.norm(self.conv(_nchw(x)))))


class EfficientSelfAttention(nn.Module):
    """ResT's efficient multi-head self-attention.

    Keys and values come from the input shrunk by a depthwise conv (kernel sr+1, stride sr)
    and a LayerNorm. With several heads a 1x1 conv mixes the attention logits across heads
    before the softmax and an instance norm normalises each head's attention map after it.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(
                dim,
                dim,
                kernel_size=sr_ratio + 1,
                stride=sr_ratio,
                padding=sr_ratio // 2,
                groups=dim,
            )
            self.sr_norm = nn.LayerNorm(dim)
        self.head_mix = nn.Conv2d(num_heads, num_heads, kernel_size=1) if num_heads > 1 else None
        if self.head_mix is not None:
            # Its bias cancels in the softmax (see below): frozen, so that DDP and the
            # optimiser do not wait for a gradient that never comes.
            self.head_mix.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(b, h * w, heads, c // heads).transpose(1, 2)
        source = self.sr_norm(_nhwc(self.sr(_nchw(x)))) if self.sr_ratio > 1 else x
        k, v = self.kv(source).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        if self.head_mix is None:
            # one head: plain softmax attention, done by the fused kernel
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = self._mixed_head_attention(q * self.scale, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))

    def _mixed_head_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """``InstanceNorm(softmax(head_mix(q k^T))) v`` for (B, heads, tokens, dim) inputs,
        computed with fewer passes over the large (tokens x keys) attention map:

        - the 1x1 conv over heads runs as a batched matmul (torch's conv is slow here), and
          without its bias: a bias shifts every softmax row of its head by one constant, so
          it cancels (the parameter is kept, frozen, for checkpoint compatibility);
        - the instance norm comes after the product with v: softmax rows sum to 1, so the
          map's mean is exactly 1/keys and ``norm(attn) v = (attn v - mean_keys(v)) * rstd``;
          only the map's sum of squares is read, for the variance.
        """
        b, heads, tokens, _ = q.shape
        keys = k.shape[-2]
        logits = (q @ k.transpose(-2, -1)).view(b, heads, tokens * keys)
        weight = self.head_mix.weight.view(1, heads, heads).expand(b, -1, -1)
        attn = torch.bmm(weight, logits).view(b, heads, tokens, keys).softmax(dim=-1)
        mean_square = torch.linalg.vector_norm(attn, dim=(-2, -1)).square() / (tokens * keys)
        rstd = (mean_square - keys**-2 + INSTANCE_NORM_EPS).rsqrt()
        return (attn @ v - v.mean(dim=-2, keepdim=True)) * rstd[..., None, None]


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, MLP_RATIO * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ResTEncoder(nn.Module):
    """ResT-Lite: features at strides 4/8/16/32, widths ``dims``; LayerNorm after stage 4."""

    def __init__(self, in_channels: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = ConvStem(in_channels, dims[0])
        self.patch_embeds = nn.ModuleList(
            PatchEmbed(dims[i - 1], dims[i]) for i in range(1, len(dims))
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(EncoderBlock(dim, heads, sr) for _ in range(depth)))
            for dim, heads, sr, depth in zip(
                dims, ENCODER_HEADS, SPATIAL_REDUCTION, ENCODER_DEPTHS, strict=True
            )
        )
        self.norm = nn.LayerNorm(dims[-1])
        self.apply(_init_encoder_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for index, stage in enumerate(self.stages):
            if index > 0:
                x = self.patch_embeds[index - 1](x)
            x = stage(x)
            features.append(x)
        features[-1] = self.norm(features[-1])
        return features


def _init_encoder_weights(module: nn.Module) -> None:
    # As ResT: conv and linear weights from timm's trunc_normal_(std=0.02), which truncates
    # at +-2, 100 std away, so it is a plain normal (drawn 10x faster); linear biases zero;
    # norms identity; conv biases keep torch's default.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --- decoder: Mamba segmentation decoder ----------------------------------------------------


class SelectiveScan2D(nn.Module):
    """The 4-direction selective scan as a module of its own, so FLOP counting can tell its
    cost apart from the rest (:func:`landcover.engine.flops.count_macs`)."""

    def forward(
        self,
        u: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        dt_bias: torch.Tensor,
    ) -> torch.Tensor:
        return ss2d_scan(u, dt, A, B, C, D, dt_bias)

    @staticmethod
    def uncounted_macs(inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Multiply-adds of one call (VMamba's convention), for FLOP counting."""
        u, _, A = inputs[:3]
        batch, height, width, d_inner = u.shape
        directions, _, d_state = A.shape
        return ss2d_scan_macs(batch, height, width, directions, d_inner, d_state)


class SS2D(nn.Module):
    """VMamba's 2-D selective scan block (v2 forward, as UNetMamba uses it).

    in_proj splits into x and a gate z; x goes through a depthwise 3x3 conv and SiLU, then
    per direction k (row-major, column-major, both reversed) x_proj gives dt (low rank),
    B and C, dt_proj lifts dt to d_inner, and the selective scan runs; the 4 outputs are
    summed, LayerNorm'ed, gated by SiLU(z) and projected back.

    The projections act on the 2-D map once for all directions (a direction only changes
    the visiting order, which the scan op handles), so no cross-scan copies are made.
    """

    directions = 4

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        k = self.directions
        self.d_inner = d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner)
        # per direction: rows [dt_rank | B | C] of a bias-free Linear(d_inner -> ...)
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_log = nn.Parameter(torch.empty(k, d_inner, d_state))
        self.D = nn.Parameter(torch.empty(k, d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.scan = SelectiveScan2D()
        self._init_ssm(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        # x_proj as nn.Linear's default init; dt_proj weight uniform in +-dt_rank^-0.5
        bound = self.d_inner**-0.5
        self.x_proj_weight.uniform_(-bound, bound)
        bound = self.dt_rank**-0.5
        self.dt_proj_weight.uniform_(-bound, bound)
        # dt bias: softplus(bias) log-uniform in [dt_min, dt_max]; bias = inverse softplus
        log_dt = torch.rand_like(self.dt_proj_bias) * math.log(dt_max / dt_min) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=dt_init_floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A = -(1..N) for every channel; D = 1
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(n).expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        k, rank, n, d_inner = self.directions, self.dt_rank, self.d_state, self.d_inner
        # two matmuls instead of one + chunk: both halves come out contiguous
        x_in, z = (
            F.linear(x, self.in_proj.weight[:d_inner]),
            F.linear(x, self.in_proj.weight[d_inner:]),
        )
        u = F.silu(_nhwc(self.conv2d(_nchw(x_in))))
        proj = self.x_proj_weight
        dt_low = F.linear(u, proj[:, :rank].reshape(k * rank, d_inner)).view(b, h, w, k, rank)
        B = F.linear(u, proj[:, rank : rank + n].reshape(k * n, d_inner)).view(b, h, w, k, n)
        C = F.linear(u, proj[:, rank + n :].reshape(k * n, d_inner)).view(b, h, w, k, n)
        dt = torch.einsum("bhwkr,kdr->bhwkd", dt_low, self.dt_proj_weight)
        y = self.scan(u, dt, -torch.exp(self.A_log), B, C, self.D, self.dt_proj_bias)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))); x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, d_state: int, drop_path_rate: float) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim)
        self.ssm = SS2D(dim, d_state)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, MLP_RATIO * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.ssm(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class PatchExpand(nn.Module):
    """Upsampling by ``scale``: Linear(C -> scale^2 * out_dim, no bias), depth-to-space,
    LayerNorm(out_dim)."""

    def __init__(self, dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> normalised ``(B, H, W, scale^2, out_dim)`` before the
        depth-to-space (LayerNorm is per pixel, so it commutes with the rearrangement)."""
        y = self.expand(x)
        return self.norm(y.view(*y.shape[:3], self.scale * self.scale, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _depth_to_space(self.grouped(x), self.scale)


class MambaDecoder(nn.Module):
    """Mamba segmentation decoder: from the deepest feature up, per stage patch expand x2,
    concatenate the encoder feature of that scale, Linear back to its width, VSS blocks;
    then patch expand x4 and a 1x1 classifier (applied before the final depth-to-space,
    which it commutes with, so only the small logit map is rearranged)."""

    def __init__(
        self, dims: tuple[int, ...], num_classes: int, d_state: int, drop_path_rate: float
    ):
        super().__init__()
        widths = dims[::-1]  # deep to shallow
        stages = len(widths) - 1
        # drop path falls linearly from the deepest block (drop_path_rate) to 0
        rates = torch.linspace(drop_path_rate, 0.0, stages * DECODER_DEPTH).tolist()
        self.expands = nn.ModuleList(
            PatchExpand(widths[i], widths[i + 1], scale=2) for i in range(stages)
        )
        self.fuses = nn.ModuleList(
            nn.Linear(2 * widths[i + 1], widths[i + 1]) for i in range(stages)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    VSSBlock(widths[i + 1], d_state, rates[i * DECODER_DEPTH + j])
                    for j in range(DECODER_DEPTH)
                )
            )
            for i in range(stages)
        )
        self.final_expand = PatchExpand(widths[-1], widths[-1], scale=4)
        self.head = nn.Linear(widths[-1], num_classes)
        # The other layers keep torch's default init, as in the reference (VMamba's init
        # hook is not applied there); its 1x1 conv head gets Kaiming-normal init.
        nn.init.kaiming_normal_(self.head.weight, a=1)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder features (channels-last, shallow to deep) -> logits ``(B, classes, H, W)``
        and the output of every stage (for the local supervision heads)."""
        stage_outputs = self.decode_stages(features)
        return self.classify(stage_outputs[-1]), stage_outputs

    def decode_stages(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The output of every decoder stage, deep to shallow (channels-last)."""
        x = features[-1]
        stage_outputs: list[torch.Tensor] = []
        for index, (expand, fuse, stage, skip) in enumerate(
            zip(self.expands, self.fuses, self.stages, features[-2::-1], strict=True)
        ):
            x = self.refine_stage(index, stage(fuse(torch.cat([expand(x), skip], dim=-1))),
                                  stage_outputs)
            stage_outputs.append(x)
        return stage_outputs

    def refine_stage(
        self, index: int, x: torch.Tensor, previous_outputs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Hook for decoders built on this one: stage ``index``'s output before the next
        stage sees it (``previous_outputs``: the deeper stages'). The identity here."""
        return x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output -> logits ``(B, classes, H, W)``: patch expand x4 and
        the 1x1 head."""
        logits = self.head(self.final_expand.grouped(x))
        return _depth_to_space(logits, self.final_expand.scale, channels_first=True)


class LocalSupervisionHead(nn.Module):
    """Train-only LSM for one decoder stage: [3x3 conv+BN+ReLU6] + [1x1 conv+BN+ReLU6],
    dropout 0.1, 1x1 conv to the classes, bilinear upsampling to the input size."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.conv3 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU6()
        )
        self.conv1 = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU6()
        )
        self.drop = nn.Dropout(0.1)
        self.classify = nn.Conv2d(dim, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = _nchw(x)
        logits = self.classify(self.drop(self.conv3(x) + self.conv1(x)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# --- model -----------------------------------------------------------------------------------


class UNetMamba(nn.Module):
    """UNetMamba. ``forward`` takes ``(B, in_channels, H, W)`` with H and W multiples of 32
    and returns logits ``(B, num_classes, H, W)``; in training mode with the auxiliary head
    it returns ``(logits, aux_logits)``, the LSM's three stage logits summed."""

    input_multiple = 32
    decoder_class: type[MambaDecoder] = MambaDecoder  # subclasses may extend the decoder

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        aux_head: bool = True,
        embed_dim: int = 64,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        **decoder_options: bool,
    ) -> None:
        """``decoder_options``: extra keywords for ``decoder_class`` (for subclasses)."""
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        dims = tuple(embed_dim * 2**i for i in range(len(ENCODER_DEPTHS)))
        self.encoder = ResTEncoder(in_channels, dims)
        self.decoder = self.decoder_class(
            dims, num_classes, d_state, drop_path_rate, **decoder_options
        )
        self.aux_head = (
            nn.ModuleList(LocalSupervisionHead(dim, num_classes) for dim in dims[-2::-1])
            if aux_head
            else None
        )

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        logits, stage_outputs = self.decoder(self.encoder(x))
        if self.aux_head is None or not self.training:
            return logits
        return logits, self.local_supervision(stage_outputs, x.shape[-2:])

    def local_supervision(
        self, stage_outputs: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """The LSM's logits at ``size``: the sum of its heads over the decoder stages."""
        return sum(head(out, size) for head, out in zip(self.aux_head, stage_outputs, strict=True))

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_channels, self.input_multiple)

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Load the official ImageNet ResT-Lite checkpoint (``rest_lite.pth`` from
        wofmanaf/ResT, or the same tensors as safetensors) into the encoder.

        The classifier head is dropped. With ``in_channels != 3`` the stem's first conv is
        adapted as timm does: one band gets the sum of the RGB kernels; otherwise the RGB
        kernels are repeated over the bands and scaled by 3 / in_channels, which keeps the
        activations at the scale an RGB image gives (exactly, for an image whose bands are
        all alike, when in_channels is 1 or a multiple of 3). Raises ModelFileError naming
        the first key that does not fit.
        """
        state = read_state_dict(path)
        expected = self.encoder.state_dict()
        mapped = {}
        for key, tensor in state.items():
            if key.startswith(_REST_CLASSIFIER):
                continue
            ours = _rename(key, _REST_TO_OURS)
            if ours not in expected:
                raise ModelFileError(f"{path}: not a ResT-Lite checkpoint: unexpected key {key!r}")
            fitted = adapt_input_conv(tensor, self.in_channels) if ours == _INPUT_CONV else tensor
            if fitted.shape != expected[ours].shape:
                wanted = tuple(expected[ours].shape)
                if ours == _INPUT_CONV:
                    wanted = (wanted[0], 3, *wanted[2:])
                raise ModelFileError(
                    f"{path}: not a ResT-Lite checkpoint of this width: {key!r} has shape "
                    f"{tuple(tensor.shape)}, the model expects {wanted}"
                )
            mapped[ours] = fitted
        missing = [_rename(key, _OURS_TO_REST) for key in expected if key not in mapped]
        if missing:
            raise ModelFileError(f"{path}: not a ResT-Lite checkpoint: missing {missing[0]!r}")
        self.encoder.load_state_dict(mapped)


# Key names of the published ResT checkpoints <-> ours (regex substitutions, in order).
_REST_CLASSIFIER = "head."
_INPUT_CONV = "stem.conv1.weight"
_REST_TO_OURS = (
    (r"^patch_embed_(\d)\.", lambda m: f"patch_embeds.{int(m[1]) - 2}."),
    (r"^stage(\d)\.", lambda m: f"stages.{int(m[1]) - 1}."),
    (r"\.pos\.pa_conv\.", ".pixel_attn.conv."),
    (r"\.attn\.transform_conv\.", ".attn.head_mix."),
)
_OURS_TO_REST = (
    (r"^patch_embeds\.(\d)\.", lambda m: f"patch_embed_{int(m[1]) + 2}."),
    (r"^stages\.(\d)\.", lambda m: f"stage{int(m[1]) + 1}."),
    (r"\.pixel_attn\.conv\.", ".pos.pa_conv."),
    (r"\.attn\.head_mix\.", ".attn.transform_conv."),
)


def _rename(key: str, rules: tuple) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


# --- registered variants ---------------------------------------------------------------------


@register_model("unetmamba")
def unetmamba(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    embed_dim: int = 64,
    d_state: int = 16,
    drop_path_rate: float = 0.2,
) -> UNetMamba:
    """UNetMamba as published: ResT-Lite encoder (64/128/256/512), VSS decoder (d_state 16),
    14.76M parameters with the LSM for 6 classes, 13.89M deployed."""
    return UNetMamba(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_head=aux_head,
        embed_dim=embed_dim,
        d_state=d_state,
        drop_path_rate=drop_path_rate,
    )


@register_model("unetmamba_tiny")
def unetmamba_tiny(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    embed_dim: int = 16,
    d_state: int = 4,
    drop_path_rate: float = 0.2,
) -> UNetMamba:
    """UNetMamba at a quarter of the width (16/32/64/128) and d_state 4: the same structure
    for fast tests and smoke runs."""
    return unetmamba(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_head=aux_head,
        embed_dim=embed_dim,
        d_state=d_state,
        drop_path_rate=drop_path_rate,
    )
