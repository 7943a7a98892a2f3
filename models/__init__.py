"""The embedding model: backbones, embedding head, preprocessing, checkpoints and inference."""

from models.backbones import UnknownBackbone, WeightsUnavailable, available_backbones, create_backbone
from models.checkpoint import CheckpointError, build_model, load_checkpoint, model_fingerprint, save_checkpoint
from models.embedder import Embedder, pick_device
from models.embedding import EmbeddingNet, ModelConfig
from models.preprocess import ImageRejected, build_transform, load_image
from models.runtime import RuntimeOptions, RuntimeUnavailable

__all__ = [
    "CheckpointError", "Embedder", "EmbeddingNet", "ImageRejected", "ModelConfig", "UnknownBackbone",
    "WeightsUnavailable", "available_backbones", "build_model", "build_transform", "create_backbone",
    "load_checkpoint", "load_image", "model_fingerprint", "pick_device", "save_checkpoint", "RuntimeOptions",
    "RuntimeUnavailable",
]
