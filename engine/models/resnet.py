"""ResNet encoders (He et al., CVPR 2016) for the segmentation models: BasicBlock for
ResNet-18/34, Bottleneck (stride on the 3x3 conv, "v1.5") for ResNet-50/101.

Parameter names follow torchvision's layout (``conv1``, ``bn1``, ``layer1`` .. ``layer4``,
``downsample.0/1``) so a torchvision or timm ImageNet checkpoint loads as it is, with
:meth:`ResNetEncoder.load_encoder_weights`. No classifier is built; the encoder returns the
four stage features (strides 4/8/16/32), with the stride of the last one or two stages
replaced by dilation for an output stride of 16 or 8 (as torchvision's
``replace_stride_with_dilation`` and DeepLab do). Initialisation as torchvision's: Kaiming
normal (fan out) convolutions, identity batch norms.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.errors import ModelFileError
from landcover.engine.models.layers import adapt_input_conv, check_input
from landcover.engine.models.registry import read_state_dict

# depth -> (block kind, blocks per stage)
RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
_CLASSIFIER = "fc."
_INPUT_CONV = "conv1.weight"


# --- blocks ----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ReLU after the first and after the residual sum."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels,
            planes,
            3,
            stride=stride,
            padding=first_dilation,
            dilation=first_dilation,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + identity, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride and dilation), 1x1 expand x4, each with BN."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes,
            planes,
            3,
            stride=stride,
            padding=first_dilation,
            dilation=first_dilation,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return F.relu(self.bn3(self.conv3(out)) + identity, inplace=True)


# --- encoder ---------------------------------------------------------------------------------


class ResNetEncoder(nn.Module):
    """ResNet-``depth`` without its classifier: ``forward`` returns the outputs of
    ``layer1`` .. ``layer4`` (NCHW), at strides 4, 8, 16, 32 for ``output_stride=32``;
    with 16 (8) the last (last two) stages keep the resolution and dilate their 3x3
    convs by 2 (2 and 4) instead. ``out_channels`` lists the four feature widths, e.g.
    (64, 128, 256, 512) for ResNet-18/34 and (256, 512, 1024, 2048) for ResNet-50.

    ``width`` (64 in every published ResNet) scales all stages, for small test models;
    ImageNet checkpoints only fit width 64.
    """

    def __init__(
        self, depth: int, in_channels: int, output_stride: int = 32, width: int = 64
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        kind, blocks = RESNET_LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # stages 3 and 4 trade their stride for dilation below the output stride
        dilate = {32: (False, False), 16: (False, True), 8: (True, True)}[output_stride]
        self._channels = width
        self._dilation = 1
        self.layer1 = self._make_layer(block, width, blocks[0], stride=1, dilate=False)
        self.layer2 = self._make_layer(block, 2 * width, blocks[1], stride=2, dilate=False)
        self.layer3 = self._make_layer(block, 4 * width, blocks[2], stride=2, dilate=dilate[0])
        self.layer4 = self._make_layer(block, 8 * width, blocks[3], stride=2, dilate=dilate[1])
        self.out_channels = tuple(width * 2**i * block.expansion for i in range(4))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(
        self, block: type[nn.Module], planes: int, count: int, stride: int, dilate: bool
    ) -> nn.Sequential:
        # as torchvision: a dilated stage's first block keeps the previous dilation
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self._channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [
            block(
                self._channels,
                planes,
                stride=stride,
                dilation=self._dilation,
                first_dilation=previous_dilation,
                downsample=downsample,
            )
        ]
        self._channels = out_channels
        layers += [
            block(
                out_channels,
                planes,
                dilation=self._dilation,
                first_dilation=self._dilation,
            )
            for _ in range(1, count)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Load an ImageNet ResNet checkpoint of torchvision's layout (torchvision's
        ``resnet50-*.pth``, timm's ResNets, or the same tensors as safetensors; a dict
        wrapping them under ``model`` or ``state_dict`` works too). Read without running
        code from the file (:func:`~landcover.engine.models.registry.read_state_dict`).

        The classifier (``fc.*``) is dropped. With ``in_channels != 3`` the first conv
        (``conv1``, trained on RGB) is adapted as timm does: one band gets the sum of the
        RGB kernels; more bands get the RGB kernels repeated over the bands (R, G, B, R,
        ...) and scaled by 3 / in_channels, which keeps the activations at the scale an
        RGB image gives. Raises ModelFileError naming the first key that does not fit.
        """
        state = read_state_dict(path)
        expected = self.state_dict()
        mapped = {}
        for key, tensor in state.items():
            if key.startswith(_CLASSIFIER):
                continue
            if key not in expected:
                raise ModelFileError(
                    f"{path}: not a ResNet-{self.depth} checkpoint: unexpected key {key!r}"
                )
            fitted = adapt_input_conv(tensor, self.in_channels) if key == _INPUT_CONV else tensor
            if fitted.shape != expected[key].shape:
                wanted = tuple(expected[key].shape)
                if key == _INPUT_CONV:
                    wanted = (wanted[0], 3, *wanted[2:])
                raise ModelFileError(
                    f"{path}: not a ResNet-{self.depth} checkpoint: {key!r} has shape "
                    f"{tuple(tensor.shape)}, the encoder expects {wanted}"
                )
            mapped[key] = fitted
        missing = [key for key in expected if key not in mapped]
        if missing:
            raise ModelFileError(
                f"{path}: not a ResNet-{self.depth} checkpoint: missing {missing[0]!r}"
            )
        self.load_state_dict(mapped)


# --- composition -----------------------------------------------------------------------------


class ResNetSegmenter(nn.Module):
    """What the ResNet-based models share (encoder -> decoder -> head, as in
    segmentation_models_pytorch): the decoder returns logits at some stride and the block
    outputs its train-only auxiliary head reads; logits come back at the input size.
    ``forward`` takes ``(B, in_channels, H, W)`` with H and W multiples of 32 and returns
    logits ``(B, num_classes, H, W)``, or ``(logits, aux_logits)`` in training mode with
    the auxiliary head."""

    input_multiple = 32

    def __init__(
        self, *, encoder: ResNetEncoder, decoder: nn.Module, aux_head: nn.Module | None,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.in_channels = encoder.in_channels
        self.num_classes = num_classes
        self.encoder = encoder
        self.decoder = decoder
        self.aux_head = aux_head

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.in_channels, self.input_multiple)
        size = x.shape[-2:]
        logits, block_outputs = self.decoder(self.encoder(x))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.aux_head is None or not self.training:
            return logits
        aux_logits = self.aux_head(block_outputs)
        return logits, F.interpolate(aux_logits, size=size, mode="bilinear", align_corners=False)

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Load an ImageNet ResNet checkpoint of torchvision's layout into the encoder
        (see :meth:`ResNetEncoder.load_encoder_weights`)."""
        self.encoder.load_encoder_weights(path)
