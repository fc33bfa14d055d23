"""AMM-FuseNet (Ma, Karakus & Rosin, "AMM-FuseNet: Attention-Based Multi-Modal Image Fusion
Network for Land Cover Mapping", Remote Sensing 2022).

One ResNet-50 encoder (output stride 16) per modality, e.g. Sentinel-2 (13 bands) and
Sentinel-1 (2 bands), or Sentinel-2 and a DEM. Each modality's features become 448 channels
at stride 4:

- channel-attention multi-level features: the outputs of ``layer1`` .. ``layer4`` are each
  projected 1x1 to 48 channels (+ BN + ReLU), weighted by ECA channel attention (global
  average pool, a 1-D conv of kernel 3 across channels, sigmoid), upsampled to ``layer1``'s
  size and concatenated (4 x 48 = 192);
- a DenseASPP on the ``layer1`` features: dilated 3x3 convs (rates 3, 6, 12, 18) to 256
  channels, each followed by BN, ECA and ReLU, every branch seeing the input and all
  earlier branches' outputs (densely connected), plus an image-pooling branch; the input,
  the four branches and the pooling branch (256 + 4 x 256 + 256 = 1536) go 1x1 to 256
  (+ BN + ReLU) and through dropout 0.1.

Fusion: the modalities' 448-channel maps are concatenated (896 for two), a 3x3 conv to 256
(+ BN + ReLU) and a 1x1 conv to the classes follow, and the logits are upsampled x4
(bilinear) to the input size. With two modalities (13 + 2 bands) and 7 classes the network
has 62,200,055 parameters (the paper: about 62M).

Not in the paper: a train-only auxiliary head (per modality a 1x1 classifier on its 448
channels, summed), so every modality stream is made discriminative on its own; it is
dropped in the deploy form. The pooling branch has no BN (a 1x1 map would break training
with batch size 1). The ResNets come from :mod:`landcover.engine.models.resnet`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.errors import ConfigError
from landcover.engine.models.layers import check_input
from landcover.engine.models.registry import register_model
from landcover.engine.models.resnet import ResNetEncoder

PROJECTION_CHANNELS = 48
ASPP_RATES = (3, 6, 12, 18)
ECA_KERNEL = 3
DROPOUT = 0.1


# --- blocks ----------------------------------------------------------------------------------


class ECA(nn.Module):
    """Efficient channel attention: ``x * sigmoid(conv1d_k(GAP(x)))`` across channels."""

    def __init__(self, kernel_size: int = ECA_KERNEL) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.conv(x.mean(dim=(2, 3))[:, None, :])  # (B, 1, C)
        return x * torch.sigmoid(weights)[:, 0, :, None, None]


class ConvBnAct(nn.Sequential):
    """Conv (no bias) + BN (+ ECA) + ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
        eca: bool = False,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if eca:
            layers.append(ECA())
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class MultiLevelAttention(nn.Module):
    """Each encoder stage projected 1x1 to ``channels`` (+ BN + ReLU), ECA-weighted,
    upsampled to the first stage's size and concatenated."""

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(ConvBnAct(c, channels) for c in in_channels)
        self.attention = nn.ModuleList(ECA() for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        levels = []
        for project, attend, feature in zip(
            self.projections, self.attention, features, strict=True
        ):
            level = attend(project(feature))
            if level.shape[-2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            levels.append(level)
        return torch.cat(levels, dim=1)


class DenseASPP(nn.Module):
    """Densely connected dilated 3x3 branches (conv + BN + ECA + ReLU) and an image-pooling
    branch; everything (input included) concatenated, 1x1 to ``channels``, dropout."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int] = ASPP_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            ConvBnAct(in_channels + i * channels, channels, 3, dilation=rate, eca=True)
            for i, rate in enumerate(rates)
        )
        self.pool = nn.Conv2d(in_channels, channels, 1)
        total = in_channels + (len(rates) + 1) * channels
        self.project = ConvBnAct(total, channels)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = [x]
        for branch in self.branches:
            dense.append(branch(torch.cat(dense, dim=1)))
        pooled = F.relu(self.pool(x.mean(dim=(2, 3), keepdim=True)))
        dense.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return self.dropout(self.project(torch.cat(dense, dim=1)))


class ModalityBranch(nn.Module):
    """One modality: ResNet (output stride 16), multi-level attention and DenseASPP on the
    stride-4 features -> ``out_channels`` at stride 4."""

    def __init__(
        self, in_channels: int, depth: int, width: int, projection_channels: int,
        aspp_channels: int,
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(depth, in_channels, output_stride=16, width=width)
        widths = self.encoder.out_channels
        self.levels = MultiLevelAttention(widths, projection_channels)
        self.aspp = DenseASPP(widths[0], aspp_channels)
        self.out_channels = len(widths) * projection_channels + aspp_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return torch.cat([self.levels(features), self.aspp(features[0])], dim=1)


# --- model -----------------------------------------------------------------------------------


class AMMFuseNet(nn.Module):
    """AMM-FuseNet. ``forward`` takes the modalities' bands concatenated,
    ``(B, in_channels, H, W)`` with H and W multiples of 32, and returns logits
    ``(B, num_classes, H, W)``; in training mode with the auxiliary head
    ``(logits, aux_logits)``."""

    input_multiple = 32

    def __init__(
        self,
        *,
        num_classes: int,
        modality_channels: Sequence[int],
        aux_head: bool = True,
        resnet_depth: int = 50,
        resnet_width: int = 64,
        projection_channels: int = PROJECTION_CHANNELS,
        aspp_channels: int = 256,
        fusion_channels: int = 256,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.modality_channels = tuple(modality_channels)
        self.in_channels = sum(self.modality_channels)
        self.branches = nn.ModuleList(
            ModalityBranch(c, resnet_depth, resnet_width, projection_channels, aspp_channels)
            for c in self.modality_channels
        )
        branch_channels = self.branches[0].out_channels
        self.fuse = ConvBnAct(len(self.branches) * branch_channels, fusion_channels, 3)
        self.classify = nn.Conv2d(fusion_channels, num_classes, 1)
        self.aux_head = (
            nn.ModuleList(nn.Conv2d(branch_channels, num_classes, 1) for _ in self.branches)
            if aux_head else None
        )

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        parts = torch.split(x, self.modality_channels, dim=1)
        streams = [branch(part) for branch, part in zip(self.branches, parts, strict=True)]
        size = x.shape[-2:]
        logits = self.classify(self.fuse(torch.cat(streams, dim=1)))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.aux_head is None or not self.training:
            return logits
        aux_logits = sum(head(s) for head, s in zip(self.aux_head, streams, strict=True))
        return logits, F.interpolate(aux_logits, size=size, mode="bilinear", align_corners=False)

    def _check_input(self, x: torch.Tensor) -> None:
        layout = f"modalities of {', '.join(map(str, self.modality_channels))} bands"
        check_input(x, self.in_channels, self.input_multiple, layout)

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Load one ImageNet ResNet checkpoint into every modality's encoder (each first
        conv adapted to its band count, see :meth:`ResNetEncoder.load_encoder_weights`)."""
        for branch in self.branches:
            branch.encoder.load_encoder_weights(path)


# --- registered variants ---------------------------------------------------------------------


@register_model("ammfusenet")
def ammfusenet(
    *,
    num_classes: int,
    in_channels: int = 3,
    aux_head: bool = True,
    modality_channels: list[int] | None = None,
    resnet_depth: int = 50,
    resnet_width: int = 64,
    projection_channels: int = PROJECTION_CHANNELS,
    aspp_channels: int = 256,
    fusion_channels: int = 256,
) -> AMMFuseNet:
    """AMM-FuseNet as published: a ResNet-50 (output stride 16) per modality, 48-channel
    ECA multi-level features and a 256-channel DenseASPP per modality, 256-channel fusion.

    ``modality_channels`` gives the band count of each modality in input order (default: one
    modality of all ``in_channels``), e.g. ``[13, 2]`` for Sentinel-2 + Sentinel-1. Smaller
    ``resnet_depth`` (18, 34), ``resnet_width`` and channel counts give fast test models.
    """
    modality_channels = [in_channels] if modality_channels is None else list(modality_channels)
    if not modality_channels or any(c < 1 for c in modality_channels):
        raise ConfigError(
            f"ammfusenet: modality_channels {modality_channels} must list band counts >= 1"
        )
    if sum(modality_channels) != in_channels:
        raise ConfigError(
            f"ammfusenet: modality_channels {modality_channels} add up to "
            f"{sum(modality_channels)}, not in_channels={in_channels}"
        )
    return AMMFuseNet(
        num_classes=num_classes,
        modality_channels=modality_channels,
        aux_head=aux_head,
        resnet_depth=resnet_depth,
        resnet_width=resnet_width,
        projection_channels=projection_channels,
        aspp_channels=aspp_channels,
        fusion_channels=fusion_channels,
    )
