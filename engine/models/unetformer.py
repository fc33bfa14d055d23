"""UNetFormer (Wang et al., "UNetFormer: A UNet-like transformer for efficient semantic
segmentation of remote sensing urban scene imagery", ISPRS J. 2022).

A ResNet-18 encoder and a light decoder of width 64: a 1x1 conv + BN on the deepest
feature, three global-local transformer blocks (b4 at stride 32, b3 at 16, b2 at 8) with
weighted fusion (WF) of the encoder skips between them, the feature refinement head (FRH)
on the stride-4 skip, and a segmentation head; the train-only auxiliary head classifies
the sum of the three blocks' outputs at stride 8. Written from the paper and the public
reference code (WangLibo1995/GeoSeg); the parameter count matches (11,724,894 for 6
classes with the auxiliary head, 11,687,518 deployed), and so do the multiply-adds at
1 x 3 x 1024 x 1024 (46.83 G; the paper reports 46.9 G "FLOPs").

Global-local attention (GLA), on NCHW maps:
- local branch: BN(conv3x3(x)) + BN(conv1x1(x));
- global branch: multi-head self-attention inside non-overlapping ``window x window``
  windows, with a Swin relative-position bias, then cross-window context by averaging
  along columns and rows (``window x 1`` and ``1 x window`` average pools);
- the sum goes through a depthwise ``window x window`` conv + BN + pointwise conv.

Maps whose side is not a multiple of the window are reflect-padded, as in the reference.
The reference needs maps at least one window wide (inputs of 256 pixels and more); here a
side shorter than the window gets a window clipped to that side instead (attention over the
whole side, the bias read from the centre of the same table), and one-pixel sides are
padded by replication where reflection is impossible, so any input multiple of 32 works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.models.registry import register_model
from landcover.engine.models.resnet import ResNetEncoder, ResNetSegmenter

DECODER_HEADS = 8
MLP_RATIO = 4
FUSION_EPS = 1e-8


# --- blocks ----------------------------------------------------------------------------------


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, relu: bool = False
) -> nn.Sequential:
    """Bias-free conv ("same" padding) + BN, optionally + ReLU6."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


def separable_conv_bn(channels: int, kernel_size: int) -> nn.Sequential:
    """Depthwise conv (padding ``(k - 1) // 2``: an even kernel loses one row and column),
    BN, pointwise conv; all bias-free."""
    return nn.Sequential(
        nn.Conv2d(
            channels,
            channels,
            kernel_size,
            padding=(kernel_size - 1) // 2,
            groups=channels,
            bias=False,
        ),
        nn.BatchNorm2d(channels),
        nn.Conv2d(channels, channels, 1, bias=False),
    )


def pad_end(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """Pad an NCHW map at its bottom and right by reflection, or by replication along a side
    too short to reflect ``bottom`` (``right``) rows (columns)."""
    height, width = x.shape[-2:]
    if bottom:
        x = F.pad(x, (0, 0, 0, bottom), mode="reflect" if bottom < height else "replicate")
    if right:
        x = F.pad(x, (0, right, 0, 0), mode="reflect" if right < width else "replicate")
    return x


def relative_position_index(height: int, width: int, reach_y: int, reach_x: int) -> torch.Tensor:
    """``(height*width, height*width)`` indices into a relative-position table of
    ``(2*reach_y - 1) x (2*reach_x - 1)`` offsets (flattened row-major, Swin's index) for the
    tokens of a ``height x width`` grid; ``height <= reach_y`` and ``width <= reach_x``."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + reach_y - 1
    dx = xs[:, None] - xs[None, :] + reach_x - 1
    return dy * (2 * reach_x - 1) + dx


class GlobalLocalAttention(nn.Module):
    """GLA (see the module docstring) on an NCHW map of ``dim`` channels."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.local3 = conv_bn(dim, dim, 3)
        self.local1 = conv_bn(dim, dim, 1)
        self.proj = separable_conv_bn(dim, window)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # means over ``window`` rows (columns); with one row (column) padded first, as the
        # reference does, the output keeps the input's size
        half = window // 2 - 1
        self.pool_rows = nn.AvgPool2d((window, 1), stride=1, padding=(half, 0))
        self.pool_cols = nn.AvgPool2d((1, window), stride=1, padding=(0, half))

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention inside windows, with relative-position bias."""
        b, c, h, w = x.shape
        wh, ww = min(self.window, h), min(self.window, w)
        x = pad_end(x, -h % wh, -w % ww)
        hp, wp = x.shape[-2:]
        nh, nw, heads = hp // wh, wp // ww, self.num_heads
        # channels of qkv are ordered (q/k/v, head, head_dim), as in the reference
        qkv = self.qkv(x).view(b, 3, heads, c // heads, nh, wh, nw, ww)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * nh * nw, heads, wh * ww, -1)
        index = relative_position_index(wh, ww, self.window, self.window).to(x.device)
        bias = self.relative_position_bias_table[index].permute(2, 0, 1)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        out = out.view(b, nh, nw, heads, wh, ww, c // heads).permute(0, 3, 6, 1, 4, 2, 5)
        return out.reshape(b, c, hp, wp)[:, :, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local1(x) + self.local3(x)
        attn = self.window_attention(x)
        out = self.pool_rows(pad_end(attn, 1, 0)) + self.pool_cols(pad_end(attn, 0, 1))
        out = self.proj(pad_end(out + local, 1, 1))
        return out[:, :, : x.shape[-2], : x.shape[-1]]


class TransformerBlock(nn.Module):
    """x + GLA(BN(x)); x + MLP(BN(x)), the MLP as 1x1 convs with ReLU6 between."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = GlobalLocalAttention(dim, num_heads, window)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, MLP_RATIO * dim, 1), nn.ReLU6(), nn.Conv2d(MLP_RATIO * dim, dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class WeightedFusion(nn.Module):
    """Upsample x2, then ``w0 * conv1x1(skip) + w1 * x`` with ``w = relu(weights)`` summing
    to one, then conv3x3 + BN + ReLU6."""

    def __init__(self, skip_channels: int, dim: int) -> None:
        super().__init__()
        self.pre_conv = nn.Conv2d(skip_channels, dim, 1, bias=False)
        self.weights = nn.Parameter(torch.ones(2))
        self.post_conv = conv_bn(dim, dim, 3, relu=True)

    def fuse(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        weights = F.relu(self.weights)
        weights = weights / (weights.sum() + FUSION_EPS)
        return self.post_conv(weights[0] * self.pre_conv(skip) + weights[1] * x)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(x, skip)


class FeatureRefinementHead(WeightedFusion):
    """Weighted fusion with the stride-4 skip, then spatial (depthwise conv 3x3 + sigmoid)
    and channel (squeeze-excite, reduction 16) attention, summed, a separable conv + BN
    and a 1x1 conv + BN shortcut, ReLU6."""

    def __init__(self, skip_channels: int, dim: int) -> None:
        super().__init__(skip_channels, dim)
        self.spatial = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Sigmoid())
        self.channel = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim // 16, 1, bias=False),
            nn.ReLU6(),
            nn.Conv2d(dim // 16, dim, 1, bias=False),
            nn.Sigmoid(),
        )
        self.shortcut = conv_bn(dim, dim, 1)
        self.proj = separable_conv_bn(dim, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.fuse(x, skip)
        refined = self.spatial(x) * x + self.channel(x) * x
        return F.relu6(self.proj(refined) + self.shortcut(x))


class SegmentationHead(nn.Sequential):
    """conv3x3 + BN + ReLU6, dropout, bias-free 1x1 conv to the classes."""

    def __init__(self, dim: int, num_classes: int, dropout: nn.Module) -> None:
        super().__init__(
            conv_bn(dim, dim, 3, relu=True), dropout, nn.Conv2d(dim, num_classes, 1, bias=False)
        )


class UNetFormerDecoder(nn.Module):
    """Deepest feature -> 1x1 conv + BN -> b4 -> WF(skip 3) -> b3 -> WF(skip 2) -> b2 ->
    FRH(skip 1) -> segmentation head (at stride 4). Also returns the three block outputs
    for the auxiliary head."""

    def __init__(
        self, encoder_channels: tuple[int, ...], dim: int, num_classes: int, window: int
    ) -> None:
        super().__init__()
        self.pre_conv = conv_bn(encoder_channels[-1], dim, 1)
        self.blocks = nn.ModuleList(TransformerBlock(dim, DECODER_HEADS, window) for _ in range(3))
        self.fusions = nn.ModuleList(
            WeightedFusion(channels, dim) for channels in encoder_channels[-2:0:-1]
        )
        self.refine = FeatureRefinementHead(encoder_channels[0], dim)
        self.head = SegmentationHead(dim, num_classes, nn.Dropout2d(0.1))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.blocks[0](self.pre_conv(features[-1]))
        block_outputs = [x]
        for fusion, block, skip in zip(
            self.fusions, self.blocks[1:], features[-2:0:-1], strict=True
        ):
            x = block(fusion(x, skip))
            block_outputs.append(x)
        return self.head(self.refine(x, features[0])), block_outputs


class AuxiliaryHead(nn.Module):
    """Train-only: the three block outputs upsampled to stride 8 (bilinear, corners
    aligned, as the reference's UpsamplingBilinear2d) and summed, then a segmentation head
    (dropout 0.1)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = SegmentationHead(dim, num_classes, nn.Dropout(0.1))

    def forward(self, block_outputs: list[torch.Tensor]) -> torch.Tensor:
        size = block_outputs[-1].shape[-2:]
        summed = block_outputs[-1] + sum(
            F.interpolate(out, size=size, mode="bilinear", align_corners=True)
            for out in block_outputs[:-1]
        )
        return self.head(summed)


# --- model -----------------------------------------------------------------------------------


class UNetFormer(ResNetSegmenter):
    """UNetFormer. ``forward`` takes ``(B, in_channels, H, W)`` with H and W multiples of 32
    and returns logits ``(B, num_classes, H, W)``; in training mode with the auxiliary head
    it returns ``(logits, aux_logits)``."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        aux_head: bool = True,
        encoder_depth: int = 18,
        encoder_width: int = 64,
        decoder_channels: int = 64,
        window_size: int = 8,
    ) -> None:
        encoder = ResNetEncoder(encoder_depth, in_channels, width=encoder_width)
        decoder = UNetFormerDecoder(
            encoder.out_channels, decoder_channels, num_classes, window_size
        )
        super().__init__(
            encoder=encoder,
            decoder=decoder,
            aux_head=AuxiliaryHead(decoder_channels, num_classes) if aux_head else None,
            num_classes=num_classes,
        )


# --- registered variants ---------------------------------------------------------------------


@register_model("unetformer")
def unetformer(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    encoder_depth: int = 18,
    encoder_width: int = 64,
    decoder_channels: int = 64,
    window_size: int = 8,
) -> UNetFormer:
    """UNetFormer as published: ResNet-18 encoder, decoder width 64, window 8, 8 heads;
    11,724,894 parameters with the auxiliary head for 6 classes. ``encoder_width`` and
    ``decoder_channels`` shrink it for tests; ``encoder_depth`` picks another ResNet."""
    return UNetFormer(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_head=aux_head,
        encoder_depth=encoder_depth,
        encoder_width=encoder_width,
        decoder_channels=decoder_channels,
        window_size=window_size,
    )
