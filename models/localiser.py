"""Find the product in a shopper's photo before embedding it: a class-agnostic object localiser.

``LocaliserNet`` is torchvision's FCOS (anchor-free, one class: "a product") on the EfficientNet-Lite0 trunk cut
after its stride-16 blocks, with a small feature pyramid (strides 8/16/32) and a
light FCOS head. The trunk keeps its ImageNet weights (frozen); only the pyramid and head are trained, on
synthetic composites (``training/localiser.py``), so the weights file holds just those (about a megabyte).

``ActivationLocaliser`` is the untrained baseline: the box around the strongest region of the trunk's own
activation map. Both answer ``detect(image) -> list[Detection]``, best first, boxes in the image's pixels.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from models.efficientnet_lite import EfficientNetLite0, efficientnet_lite0

__all__ = [
    "ActivationLocaliser", "Detection", "Detector", "Localiser", "LocaliserConfig", "LocaliserNet", "object_crop",
    "load_localiser", "save_localiser", "plain_border_share", "looks_like_catalog_photo",
]

# Blocks of EfficientNet-Lite0 whose outputs feed the pyramid: the ends of its stride-8 and stride-16 stages. The
# stride-32 blocks (a third of the network's work) are left out: the pyramid's stride-32 level is pooled from
# stride 16, which keeps a localisation under half an embedding forward.
_TAPS = {4: 40, 10: 112}
_FORMAT = "lookalike-localiser/1"
# The weights the service loads by default and `lookalike train-detector` writes by default.
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "localiser.pt"


class LocaliserConfig(BaseModel):
    """What rebuilds a localiser; saved with its weights."""

    model_config = ConfigDict(frozen=True)

    image_size: int = Field(default=160, ge=64, le=1024, description="the photo's longer side at detection time")
    fpn_channels: int = Field(default=32, ge=16)
    head_convs: int = Field(default=1, ge=1, le=4)
    score_thresh: float = Field(default=0.3, ge=0, le=1)
    nms_thresh: float = Field(default=0.5, ge=0, le=1)
    max_detections: int = Field(default=8, ge=1)


@dataclass(frozen=True)
class Detection:
    """An object found in a photo: ``box`` (x, y, w, h) in the photo's pixels and a score in [0, 1]."""

    box: tuple[float, float, float, float]
    score: float


class Detector(Protocol):
    def detect(self, image: Image.Image) -> list[Detection]: ...


class _PyramidTrunk(nn.Module):
    """EfficientNet-Lite0 stem and blocks (frozen, always in eval mode) feeding a feature pyramid."""

    def __init__(self, net: EfficientNetLite0, channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(list(net._blocks)[: max(_TAPS) + 1])
        self.fpn = FeaturePyramidNetwork(list(_TAPS.values()), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels
        for p in [*self.stem.parameters(), *self.blocks.parameters()]:
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> _PyramidTrunk:
        super().train(mode)
        self.stem.eval()
        self.blocks.eval()
        return self

    def taps(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The trunk's feature maps that feed the pyramid (x normalised to [-1, 1])."""
        feats = OrderedDict()
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _TAPS:
                feats[str(len(feats))] = x
        return feats

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.taps(x))


class LocaliserNet(FCOS):
    """FCOS with one foreground class on the frozen EfficientNet-Lite0 trunk; images in [0, 1]."""

    def __init__(self, config: LocaliserConfig = LocaliserConfig(), pretrained_trunk: bool = True) -> None:
        trunk = _PyramidTrunk(efficientnet_lite0(pretrained=pretrained_trunk), config.fpn_channels)
        anchors = AnchorGenerator(sizes=((8,), (16,), (32,)), aspect_ratios=((1.0,),) * 3)
        head = FCOSHead(config.fpn_channels, num_anchors=1, num_classes=1, num_convs=config.head_convs)
        super().__init__(trunk, num_classes=1, min_size=config.image_size, max_size=config.image_size,
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], anchor_generator=anchors, head=head,
                         score_thresh=config.score_thresh, nms_thresh=config.nms_thresh,
                         detections_per_img=config.max_detections, topk_candidates=200)
        self.config = config

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights training changes (pyramid and head); the trunk comes from the ImageNet package."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(("backbone.stem.", "backbone.blocks."))}


def save_localiser(model: LocaliserNet, path: str | Path, recipe: dict | None = None) -> Path:
    """Write the trained part of ``model`` with its config (and how it was made) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": _FORMAT, "config": model.config.model_dump(), "state": model.trained_state(),
                "recipe": recipe or {}}, tmp)
    os.replace(tmp, path)
    return path


def load_localiser(path: str | Path) -> LocaliserNet:
    """A localiser from a weights file written by :func:`save_localiser`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a Lookalike localiser file")
    model = LocaliserNet(LocaliserConfig.model_validate(saved["config"]))
    missing, unexpected = model.load_state_dict(saved["state"], strict=False)
    if unexpected or any(not k.startswith(("backbone.stem.", "backbone.blocks.")) for k in missing):
        raise ValueError(f"{path}: weights do not match the localiser ({len(missing)} missing, {unexpected[:3]})")
    return model.eval()


def _to_tensor(image: Image.Image, long_side: int) -> tuple[torch.Tensor, float]:
    """The photo shrunk so its longer side is ``long_side``, as a [0, 1] tensor, and the factor back to pixels."""
    w, h = image.size
    scale = long_side / max(w, h)
    small = image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                        Image.Resampling.BILINEAR)
    arr = torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float().div_(255), 1.0 / scale


class Localiser:
    """Runs a trained :class:`LocaliserNet` on a photo; boxes come back in the photo's own pixels."""

    def __init__(self, model: LocaliserNet) -> None:
        self.model = model.eval()
        self.config = model.config

    @classmethod
    def load(cls, path: str | Path) -> Localiser:
        return cls(load_localiser(path))

    @torch.inference_mode()
    def detect(self, image: Image.Image) -> list[Detection]:
        tensor, back = _to_tensor(image, self.config.image_size)
        out = self.predict(tensor)
        w, h = image.size
        found = []
        for (x0, y0, x1, y1), score in zip(out["boxes"].tolist(), out["scores"].tolist()):
            x0, x1 = min(max(x0 * back, 0.0), w), min(max(x1 * back, 0.0), w)
            y0, y1 = min(max(y0 * back, 0.0), h), min(max(y1 * back, 0.0), h)
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                found.append(Detection((x0, y0, x1 - x0, y1 - y0), float(score)))
        return found


    def predict(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's detections (``boxes`` x0,y0,x1,y1 in the tensor's pixels, ``scores``) for one [0, 1]
        image tensor (3,H,W); ``models.localiser_runtime`` runs the same network through another engine."""
        return self.model([tensor])[0]


class ActivationLocaliser:
    """Untrained baseline: the box around the connected region of the trunk's activation map (1280 channels,
    stride 32) that holds its peak, thresholded at ``threshold`` between the map's median and peak."""

    def __init__(self, image_size: int = 224, threshold: float = 0.5) -> None:
        net = efficientnet_lite0(pretrained=True)
        del net._fc
        self.net = net.eval()
        self.image_size = image_size
        self.threshold = threshold

    @torch.inference_mode()
    def detect(self, image: Image.Image) -> list[Detection]:
        tensor, back = _to_tensor(image, self.image_size)
        act = self.net.forward_features((tensor[None] - 0.5) / 0.5)[0].mean(0)
        act = F.interpolate(act[None, None], size=tensor.shape[1:], mode="bilinear", align_corners=False)[0, 0]
        a = act.numpy()
        low, peak = float(np.median(a)), float(a.max())
        if peak - low < 1e-6:
            return []
        mask = a >= low + self.threshold * (peak - low)
        region = _component(mask, np.unravel_index(int(a.argmax()), a.shape))
        ys, xs = np.nonzero(region)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        box = (x0 * back, y0 * back, (x1 - x0) * back, (y1 - y0) * back)
        return [Detection(tuple(float(v) for v in box), 1.0)]  # type: ignore[arg-type]


def _component(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected region of ``mask`` containing ``seed`` (grown by repeated dilation inside the mask)."""
    region = np.zeros_like(mask)
    region[seed] = True
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        if (grown == region).all():
            return region
        region = grown


def object_crop(image: Image.Image, box: Sequence[float], margin: float = 0.1,
                fill: tuple[int, int, int] = (235, 235, 235)) -> Image.Image:
    """The square around ``box`` (x, y, w, h) with ``margin`` on each side, framed as catalog photos frame a
    product; kept inside the image where it fits, padded with a light ``fill`` where it does not."""
    x, y, w, h = (float(v) for v in box)
    W, H = image.size
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    left, top = cx - side / 2, cy - side / 2
    if side <= W:
        left = min(max(left, 0.0), W - side)
    if side <= H:
        top = min(max(top, 0.0), H - side)
    left_i, top_i = int(round(left)), int(round(top))
    side_i = max(1, int(round(side)))
    if left_i >= 0 and top_i >= 0 and left_i + side_i <= W and top_i + side_i <= H:
        return image.crop((left_i, top_i, left_i + side_i, top_i + side_i))
    canvas = Image.new("RGB", (side_i, side_i), fill)
    canvas.paste(image, (-left_i, -top_i))
    return canvas


def plain_border_share(image: Image.Image, band: float = 0.05, tolerance: float = 6.0) -> float:
    """How plain the frame's outer ``band`` is: the share of steps between neighbouring border pixels (along the
    border, at 128 x 128) that change no colour channel by more than ``tolerance`` levels.

    A catalog photo (a product on a studio backdrop, flat or a gentle gradient) scores near 1; a photo of a room
    does not: sensor noise and texture break the steps. On the demo catalog's images the minimum is 0.97; on
    composites over the training photographs the median is 0.87 and the 95th percentile 0.98."""
    small = np.asarray(image.convert("RGB").resize((128, 128), Image.Resampling.BILINEAR), dtype=np.float32)
    b = max(1, int(round(128 * band)))
    steps = [np.abs(np.diff(small[:b], axis=1)), np.abs(np.diff(small[-b:], axis=1)),
             np.abs(np.diff(small[:, :b], axis=0)), np.abs(np.diff(small[:, -b:], axis=0))]
    changes = np.concatenate([s.reshape(-1, 3) for s in steps]).max(axis=1)
    return float((changes <= tolerance).mean())


def looks_like_catalog_photo(image: Image.Image, threshold: float = 0.97) -> bool:
    """True when the photo's border is plain (``plain_border_share`` >= ``threshold``): a product already framed on
    a backdrop, which cropping again only hurts (the clean demo queries lose R@1 when cropped)."""
    return plain_border_share(image) >= threshold
