"""The embedding network: backbone trunk, GeM pooling, optional projection, L2 normalisation."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from models.backbones import create_backbone


class ModelConfig(BaseModel):
    """Everything needed to rebuild a network; saved inside every checkpoint."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights_path: str | None = None
    embedding_dim: int | None = Field(default=None, ge=8, description="None keeps the backbone's width")
    gem_p: float = Field(default=3.0, gt=0)
    image_size: int = Field(default=224, ge=32, le=1024)
    seed: int = 0


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.), with a learnable exponent."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class EmbeddingNet(nn.Module):
    """Maps a normalised image batch (N,3,H,W) to unit-length embeddings (N,D)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # random-init layers are reproducible from the config
            backbone = create_backbone(config.backbone, config.pretrained, config.weights_path)
            self.trunk = backbone.trunk
            self.pool = GeM(config.gem_p)
            self.head: nn.Module = (
                nn.Linear(backbone.channels, config.embedding_dim, bias=False)
                if config.embedding_dim is not None
                else nn.Identity()
            )
        self.mean = backbone.mean
        self.std = backbone.std
        self.dim = config.embedding_dim or backbone.channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.trunk(images))
        return F.normalize(self.head(features.to(images.dtype)).float(), dim=-1)

