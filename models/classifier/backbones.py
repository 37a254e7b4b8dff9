"""Registry of classifier backbones: a name maps to one builder.

Every backbone is split into a convolutional ``features`` trunk, producing ``(B, C, h, w)``,
and its channel count ``C``; :class:`models.classifier.network.ChestNet` adds global average
pooling and one linear layer with five outputs. Because every head is "global average pooling
then linear", class activation maps (CAM, Zhou et al. 2016) are exact for every backbone here
(Grad-CAM reduces to CAM for such heads), see :mod:`models.classifier.regions`.

All backbones are built with ``weights=None`` (nothing is downloaded) and take ONE input channel:
the first convolution is rebuilt with ``in_channels=1`` (with random initial weights there is no
reason to repeat the grey image to three channels).

Names:

``resnet50`` (default), ``densenet121``, ``efficientnet_b0``
    torchvision architectures for real use.
``resnet18``
    A smaller torchvision ResNet for CPU work.
``cxr_tiny``
    A small plain CNN (about 0.3 M parameters, output stride 8) used by the demo models: fast on
    two CPU cores and fine enough (16 x 16 activation grid at 128 px) for finding regions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision import models as tvm

#: The backbone used when none is named.
DEFAULT_BACKBONE = "resnet50"


@dataclass
class Backbone:
    """A convolutional trunk and the number of channels it outputs."""

    features: nn.Module  # (B, 1, S, S) -> (B, C, h, w)
    channels: int


def _one_channel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv``'s geometry that takes one input channel."""
    return nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
    )


def _resnet(builder: Callable[..., tvm.ResNet]) -> Backbone:
    net = builder(weights=None)
    net.conv1 = _one_channel_conv(net.conv1)
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return Backbone(features=features, channels=net.fc.in_features)


def _densenet121() -> Backbone:
    net = tvm.densenet121(weights=None)
    net.features.conv0 = _one_channel_conv(net.features.conv0)
    # torchvision applies ReLU after the last norm layer in forward(); keep it in the trunk.
    features = nn.Sequential(net.features, nn.ReLU(inplace=False))
    return Backbone(features=features, channels=net.classifier.in_features)


def _efficientnet_b0() -> Backbone:
    net = tvm.efficientnet_b0(weights=None)
    stem = net.features[0][0]
    net.features[0][0] = _one_channel_conv(stem)
    return Backbone(features=net.features, channels=net.classifier[1].in_features)


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _cxr_tiny() -> Backbone:
    features = nn.Sequential(
        _conv_block(1, 16, 2),  # S/2
        _conv_block(16, 32, 2),  # S/4
        _conv_block(32, 32, 1),
        _conv_block(32, 64, 2),  # S/8
        _conv_block(64, 64, 1),
        nn.Sequential(  # wider receptive field at the same resolution
            nn.Conv2d(64, 96, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(96), nn.ReLU(inplace=True)
        ),
        nn.Sequential(
            nn.Conv2d(96, 128, 3, padding=4, dilation=4, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True)
        ),
    )
    return Backbone(features=features, channels=128)


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "resnet50": lambda: _resnet(tvm.resnet50),
    "densenet121": _densenet121,
    "efficientnet_b0": _efficientnet_b0,
    "resnet18": lambda: _resnet(tvm.resnet18),
    "cxr_tiny": _cxr_tiny,
}


def build_backbone(name: str) -> Backbone:
    """Build a backbone by name (random weights, one input channel).

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown classifier backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None
    return builder()
