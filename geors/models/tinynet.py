"""Tiny-Net backbone and global attention block of R2-CNN (Pang et al., TGRS 2019).

Layouts are ``(B, C, H, W)`` float tensors. Tiny-Net is small enough to be
trained from scratch on CPU; no pretrained weights are used.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["TinyNet", "GlobalAttention", "ResidualBlock", "conv_bn_relu", "fold_batchnorm"]


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """3x3 (or ``kernel``) convolution, batch norm, ReLU; 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Basic residual block (two 3x3 convs); a 1x1 projection when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj: nn.Module
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.proj = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.proj(x), inplace=True)


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [ResidualBlock(cin, cout, stride)]
    layers += [ResidualBlock(cout, cout, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class TinyNet(nn.Module):
    """Tiny-Net: five stages, stride-8 output with stride-16 semantics.

    * conv-1: two 3x3 convs, 12 channels, no downsampling (H x W)
    * conv-2: 2 residual blocks, 18 ch, stride 2 (H/2)
    * conv-3: 2 residual blocks, 36 ch, stride 2 (H/4)
    * conv-4: 3 residual blocks, 48 ch, stride 2 (H/8)
    * conv-5: 2 residual blocks, 72 ch, stride 2 (H/16)
    * zoom-out/zoom-in: conv-5 projected to 48 ch by a 1x1 conv (the channel
      counts differ), upsampled x2 (bilinear) and added to conv-4.

    A 640 x 640 input gives an ``(B, 48, 80, 80)`` output map.

    Args:
        in_channels: number of image bands.
        widths: channels of conv-1..conv-5.
        depths: residual blocks of conv-2..conv-5.
    """

    stride = 8

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, int, int, int, int] = (12, 18, 36, 48, 72),
        depths: tuple[int, int, int, int] = (2, 2, 3, 2),
    ):
        super().__init__()
        w1, w2, w3, w4, w5 = widths
        self.conv1 = nn.Sequential(conv_bn_relu(in_channels, w1), conv_bn_relu(w1, w1))
        self.conv2 = _stage(w1, w2, depths[0], 2)
        self.conv3 = _stage(w2, w3, depths[1], 2)
        self.conv4 = _stage(w3, w4, depths[2], 2)
        self.conv5 = _stage(w4, w5, depths[3], 2)
        self.lateral = nn.Conv2d(w5, w4, 1)
        self.out_channels = w4

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """All stage outputs (``conv1``..``conv5``) and the fused stride-8 map (``out``)."""
        c1 = self.conv1(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        c5 = self.conv5(c4)
        up = F.interpolate(self.lateral(c5), size=c4.shape[-2:], mode="bilinear", align_corners=False)
        return {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5, "out": c4 + up}

    def forward(self, x: Tensor) -> Tensor:
        """Stride-8 feature map ``(B, 48, ceil(H/8), ceil(W/8))``."""
        return self.forward_stages(x)["out"]


class GlobalAttention(nn.Module):
    """Global attention block: pyramid pooling (1, 2, 4), upsample, add, 1x1 conv.

    Each pooled map is upsampled bilinearly to the input size and added to the
    input; a 1x1 conv-BN-ReLU then mixes the channels. geors uses average
    pooling as in the paper's description (one public reimplementation uses
    max pooling).
    """

    def __init__(self, channels: int, bins: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.bins = bins
        self.fuse = conv_bn_relu(channels, channels, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        y = x
        for b in self.bins:
            pooled = F.adaptive_avg_pool2d(x, b)
            y = y + F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
        return self.fuse(y)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every batch norm that follows a convolution into it, in place, for inference.

    In eval mode a batch norm is a per-channel affine map, so ``BN(conv(x))``
    equals one convolution with rescaled weights and a bias. Folding removes a
    pass over every feature map: on 2 CPU cores the Tiny-Net backbone of a
    640 px tile runs ~20% faster (``benchmarks/bench_models.py``), with outputs
    equal to float rounding. Handles the pairs this package builds: a
    ``Conv2d`` followed by a ``BatchNorm2d`` inside an ``nn.Sequential``
    (:func:`conv_bn_relu`, projections) and the two pairs of a
    :class:`ResidualBlock`. The folded model cannot be trained (its batch norms
    are gone): use it only for inference.

    Returns:
        ``model`` (switched to eval mode).
    """
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, ResidualBlock) and isinstance(module.bn1, nn.BatchNorm2d):
            module.conv1 = fuse_conv_bn_eval(module.conv1, module.bn1)
            module.conv2 = fuse_conv_bn_eval(module.conv2, module.bn2)
            module.bn1, module.bn2 = nn.Identity(), nn.Identity()
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
    return model
