"""AMMUNet (Yang & Zheng, "AMMUNet: Multi-Scale Attention Map Merging for Remote Sensing
Image Segmentation", IEEE GRSL 2024).

A ResNet-50 encoder (features 256/512/1024/2048 at strides 4..32) and an attention map
merging decoder of width D = 256 (8 heads of 32 channels, FFN 1024): a 1x1 conv + BN on the
deepest feature, then three transformer blocks from deep to shallow, each followed by a
fusion with the next encoder skip (upsample x2, concatenate with conv1x1 + BN (skip),
conv3x3 + BN + ReLU), then a segmentation head (conv3x3 + BN + ReLU6, dropout, 1x1) at
stride 4 and bilinear upsampling. A train-only auxiliary head classifies the sum of the
three block outputs at stride 8, as UNetFormer's does. Written from the paper's
description as summarised in the project's model sheet (docs: MODELS.md); the choices it
leaves open are listed below. No code was transcribed.

Blocks (pre-norm, BN as in UNetFormer-style decoders): ``x + proj(MHSA(BN(x)))``, then
``x + FFN(BN(x))`` with FFN = conv1x1 (D -> 4D) + ReLU6 + conv1x1 (4D -> D). q, k, v come
from one bias-free conv1x1; per head h with queries q_i, keys k_j (scale s = 32^-1/2):

Deepest level (stride 32, N tokens): full MHSA with a relative position bias
    A = softmax(s q k^T + B),    out = A v,
    B[i, j] = T[dy(i, j), dx(i, j)] from a learnable table T of (2g-1) x (2g-1) offsets,
g = ``base_grid`` (16: the deepest grid of the 512-pixel training crops). A larger grid
(n > g along an axis) reads the table resampled bicubically to (2n-1) entries along that
axis (corners aligned: the zero offset and the extreme offsets keep their learned values,
offset k reads the learned bias of offset k (g-1)/(n-1)), as ViT/Swin fine-tuning does
for larger windows; a smaller grid reads the table's centre. The map passed on to the next
level is the identity-masked one, P = A (1 - I): the attention each token pays to itself
is the part the finer level re-resolves.

Finer levels (strides 16 and 8): granular MHSA. Tokens are grouped in 2x2 granules; since
each level doubles the previous grid, granule g(i) of a fine token i IS one token of the
coarser level. Inside each granule, attention with a shared 3x3 relative-position table
(offsets -1..1, one small table per block, shared by all granules):
    L = softmax(s q k^T + b)     (4 x 4 per granule).
The coarser maps are merged in through the fixed identity-mask template: the level's
full attention map would be
    M[i, j] = L[i, j]                  if g(i) = g(j)   (template I: own granule)
    M[i, j] = P_c[g(i), g(j)] / 4      otherwise        (template 1 - I: coarser map),
P_c the coarser level's passed map (diagonal zero, so the two parts never overlap). Rows
of M sum to 1 + (row g(i) of P_c): at stride 16, 2 - A[g(i), g(i)] (added, not
renormalised). M is never built: the coarse part acts on granule-averaged values,
    out_i = sum_{j in g(i)} L[i, j] v_j  +  (P_c v_bar)[g(i)],   v_bar[G] = mean_{j in G} v_j,
and P_c itself, when it is a granular level's map, is applied the same way, one level
down: P_c v_bar = L_c^0 v_bar (per granule) + lift(P_cc mean(v_bar)), with L_c^0 = L_c (1 - I)
its identity-masked local map. So the level at stride 8 sees the stride-16 and stride-32
maps, and every token has global context, for the cost of the 4x4 local maps plus one
N x N product at the deepest level. The largest attention tensor is the deepest map:
8 N^2 floats, N = (H/32)(W/32) (32 MB for a 1024 x 1024 tile); the finer levels hold
16 values per granule and head (a full stride-8 map would be 8.6 GB at 1024).

Design decisions where the paper leaves room:
- fusion by concatenation (as the project's model sheet describes it) instead of
  UNetFormer's weighted sum;
- the coarse contribution is added unscaled (the paper's "add"), the identity mask being
  the template that keeps the two parts apart;
- ResNet-50 at output stride 32 (plain strides, torchvision layout: ImageNet weights load
  with :meth:`AMMUNet.load_encoder_weights`).
Parameters (6 classes): 31,592,152 with the auxiliary head, 31,000,280 deployed (ResNet-50
23.51M, decoder 7.49M); the paper's "about 32M" counts its UNetFormer-style decoder, whose
global-local blocks add local conv branches and a separable window-sized projection that
this decoder leaves out. Multiply-adds at 1 x 3 x 1024 x 1024: 251.7 G (encoder 85.4 G,
decoder 166.3 G, most of it the width-256 3x3 convs of the last fusion and the head at
stride 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.models.registry import register_model
from landcover.engine.models.resnet import ResNetEncoder, ResNetSegmenter
from landcover.engine.models.unetformer import (
    AuxiliaryHead,
    SegmentationHead,
    conv_bn,
    relative_position_index,
)

DECODER_HEADS = 8
FFN_RATIO = 4
GRANULE = 2  # granules are 2 x 2 tokens: one token of the next coarser level


# --- attention map merging -------------------------------------------------------------------


def to_granules(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, H, W, d)`` -> ``(B, heads, H/2, W/2, 4, d)``, granule tokens row-major."""
    b, heads, h, w, d = x.shape
    x = x.view(b, heads, h // GRANULE, GRANULE, w // GRANULE, GRANULE, d)
    return x.transpose(3, 4).reshape(b, heads, h // GRANULE, w // GRANULE, GRANULE**2, d)


def from_granules(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_granules`."""
    b, heads, hg, wg, _, d = x.shape
    x = x.view(b, heads, hg, wg, GRANULE, GRANULE, d).transpose(3, 4)
    return x.reshape(b, heads, hg * GRANULE, wg * GRANULE, d)


def apply_passed_maps(maps: list[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """The identity-masked merged attention map of a level, applied to values ``v``
    ``(B, heads, H, W, d)`` on that level's grid, without building the map.

    ``maps`` runs deep to fine: the deepest masked map ``(B, heads, N, N)``, then one masked
    local map ``(B, heads, H/2, W/2, 4, 4)`` per granular level, the last on ``v``'s grid.
    """
    *coarser, finest = maps
    if not coarser:
        b, heads, h, w, d = v.shape
        return (finest @ v.reshape(b, heads, h * w, d)).view_as(v)
    granules = to_granules(v)
    coarse = apply_passed_maps(coarser, granules.mean(dim=-2))
    return from_granules(finest @ granules + coarse.unsqueeze(-2))


def mask_identity(attn: torch.Tensor) -> torch.Tensor:
    """``attn (1 - I)`` over the last two dimensions: what a token pays to itself removed."""
    identity = torch.eye(attn.shape[-1], dtype=torch.bool, device=attn.device)
    return attn.masked_fill(identity, 0.0)


def resized_bias_grid(table: torch.Tensor, reach: int, height: int, width: int) -> torch.Tensor:
    """``(heads, 2*ny - 1, 2*nx - 1)`` relative-position biases for offsets up to
    ``ny = max(height, reach)``, ``nx = max(width, reach)``: the ``(2*reach - 1)^2`` table,
    resampled bicubically (corners aligned) along an axis where the grid outgrows it."""
    heads = table.shape[-1]
    side = 2 * reach - 1
    grid = table.t().reshape(1, heads, side, side)
    size = (2 * max(height, reach) - 1, 2 * max(width, reach) - 1)
    if size != (side, side):
        grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=True)
    return grid[0]


# --- blocks ----------------------------------------------------------------------------------


class _Attention(nn.Module):
    """q, k, v projection (bias-free conv1x1) and output projection of one block."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> q, k, v stacked: ``(3, B, heads, H, W, C/heads)``."""
        b, c, h, w = x.shape
        qkv = self.qkv(x).view(b, 3, self.num_heads, c // self.num_heads, h, w)
        return qkv.permute(1, 0, 2, 4, 5, 3)

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """``(B, heads, H, W, d)`` -> projected ``(B, heads*d, H, W)``."""
        b, heads, h, w, d = out.shape
        return self.proj(out.permute(0, 1, 4, 2, 3).reshape(b, heads * d, h, w))


class GlobalAttention(_Attention):
    """Full MHSA with an interpolable relative-position bias (the deepest level). Returns
    the output and the identity-masked attention map, ``[P]`` (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, base_grid: int) -> None:
        super().__init__(dim, num_heads)
        self.base_grid = base_grid
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * base_grid - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self, height: int, width: int) -> torch.Tensor:
        """``(heads, N, N)`` bias for a ``height x width`` grid."""
        grid = resized_bias_grid(self.relative_position_bias_table, self.base_grid, height, width)
        reach_y, reach_x = (grid.shape[-2] + 1) // 2, (grid.shape[-1] + 1) // 2
        index = relative_position_index(height, width, reach_y, reach_x).to(grid.device)
        return grid.flatten(1)[:, index]

    def forward(
        self, x: torch.Tensor, maps: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.num_heads, h * w, -1) for t in self.heads(x))
        attn = (self.scale * q @ k.transpose(-2, -1) + self.relative_position_bias(h, w)).softmax(
            dim=-1
        )
        out = (attn @ v).view(b, self.num_heads, h, w, -1)
        return self.merge_heads(out), [*maps, mask_identity(attn)]


class GranularAttention(_Attention):
    """Granular MHSA: attention inside 2x2 granules with a shared 3x3 relative-position
    table, plus the coarser levels' maps on granule-averaged values. Returns the output and
    ``maps`` with this level's masked local map appended."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, num_heads)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * GRANULE - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        index = relative_position_index(GRANULE, GRANULE, GRANULE, GRANULE)
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(
        self, x: torch.Tensor, maps: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        q, k, v = (to_granules(t) for t in self.heads(x))
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)
        local = (self.scale * q @ k.transpose(-2, -1) + bias[:, None, None]).softmax(dim=-1)
        coarse = apply_passed_maps(maps, v.mean(dim=-2)).unsqueeze(-2)
        out = from_granules(local @ v + coarse)
        return self.merge_heads(out), [*maps, mask_identity(local)]


class MergingBlock(nn.Module):
    """``x + attn(BN(x))``; ``x + FFN(BN(x))``; the attention also passes maps on."""

    def __init__(self, attn: _Attention, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = attn
        self.norm2 = nn.BatchNorm2d(dim)
        self.ffn = nn.Sequential(
            nn.Conv2d(dim, FFN_RATIO * dim, 1), nn.ReLU6(), nn.Conv2d(FFN_RATIO * dim, dim, 1)
        )

    def forward(
        self, x: torch.Tensor, maps: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, maps = self.attn(self.norm1(x), maps)
        x = x + out
        return x + self.ffn(self.norm2(x)), maps


class SkipFusion(nn.Module):
    """Upsample x2, concatenate with conv1x1 + BN (skip), conv3x3 + BN + ReLU."""

    def __init__(self, skip_channels: int, dim: int) -> None:
        super().__init__()
        self.skip_conv = conv_bn(skip_channels, dim, 1)
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU()
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, self.skip_conv(skip)], dim=1))


class AttentionMapMergingDecoder(nn.Module):
    """conv1x1 + BN (deepest) -> global block -> fusion(skip 3) -> granular block ->
    fusion(skip 2) -> granular block -> fusion(skip 1) -> segmentation head (stride 4).
    Also returns the three block outputs for the auxiliary head."""

    def __init__(
        self, encoder_channels: tuple[int, ...], dim: int, num_classes: int, base_grid: int
    ) -> None:
        super().__init__()
        self.pre_conv = conv_bn(encoder_channels[-1], dim, 1)
        self.blocks = nn.ModuleList(
            [
                MergingBlock(GlobalAttention(dim, DECODER_HEADS, base_grid), dim),
                MergingBlock(GranularAttention(dim, DECODER_HEADS), dim),
                MergingBlock(GranularAttention(dim, DECODER_HEADS), dim),
            ]
        )
        self.fusions = nn.ModuleList(
            SkipFusion(channels, dim) for channels in encoder_channels[-2::-1]
        )
        self.head = SegmentationHead(dim, num_classes, nn.Dropout2d(0.1))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, maps = self.pre_conv(features[-1]), []
        block_outputs = []
        for block, fusion, skip in zip(self.blocks, self.fusions, features[-2::-1], strict=True):
            x, maps = block(x, maps)
            block_outputs.append(x)
            x = fusion(x, skip)
        return self.head(x), block_outputs


# --- model -----------------------------------------------------------------------------------


class AMMUNet(ResNetSegmenter):
    """AMMUNet. ``forward`` takes ``(B, in_channels, H, W)`` with H and W multiples of 32
    and returns logits ``(B, num_classes, H, W)``; in training mode with the auxiliary head
    it returns ``(logits, aux_logits)``."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        aux_head: bool = True,
        encoder_depth: int = 50,
        encoder_width: int = 64,
        decoder_channels: int = 256,
        base_grid: int = 16,
    ) -> None:
        encoder = ResNetEncoder(encoder_depth, in_channels, width=encoder_width)
        decoder = AttentionMapMergingDecoder(
            encoder.out_channels, decoder_channels, num_classes, base_grid
        )
        super().__init__(
            encoder=encoder,
            decoder=decoder,
            aux_head=AuxiliaryHead(decoder_channels, num_classes) if aux_head else None,
            num_classes=num_classes,
        )


# --- registered variants ---------------------------------------------------------------------


@register_model("ammunet")
def ammunet(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    encoder_depth: int = 50,
    encoder_width: int = 64,
    decoder_channels: int = 256,
    base_grid: int = 16,
) -> AMMUNet:
    """AMMUNet: ResNet-50 encoder, attention map merging decoder of width 256 (8 heads,
    FFN 1024), relative-position table for a 16 x 16 deepest grid (512-pixel crops).
    ``encoder_width``, ``decoder_channels`` (a multiple of 8) and ``encoder_depth`` shrink
    it for tests."""
    return AMMUNet(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_head=aux_head,
        encoder_depth=encoder_depth,
        encoder_width=encoder_width,
        decoder_channels=decoder_channels,
        base_grid=base_grid,
    )
