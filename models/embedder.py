"""Runs an EmbeddingNet for inference through a runtime (PyTorch, OpenVINO or ONNX Runtime; see models.runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from models.checkpoint import model_fingerprint
from models.embedding import EmbeddingNet
from models.preprocess import build_normalise, build_pixel_transform, build_transform, load_image
from models.runtime import InferenceRuntime, RuntimeOptions, create_runtime


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, the CPU otherwise."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Embedder:
    """Turns images into float32 unit vectors with one model, one preprocessing, one runtime and one id.

    ``model_id`` names the network (architecture + weights); ``runtime_name`` and ``precision`` name how it
    was run. Vectors are comparable when all three match, or when the runtimes are shown to agree.
    """

    def __init__(self, model: EmbeddingNet, device: str = "auto", options: RuntimeOptions | None = None) -> None:
        self.options = options or RuntimeOptions()
        self.model = model.eval()
        self.dim = model.dim
        self.image_size = model.config.image_size
        self.transform = build_transform(self.image_size, model.mean, model.std)
        self.pixel_transform = build_pixel_transform(self.image_size)
        self.normalise = build_normalise(model.mean, model.std)
        self.model_id = model_fingerprint(model)
        self.runtime: InferenceRuntime = create_runtime(model, self.options, pick_device(device))
        self.device = self.runtime.device
        # What ``auto`` resolved to, so a copy of this embedder elsewhere (a Ray actor) makes the same vectors.
        self.options = self.options.model_copy(update={"runtime": self.runtime.name, "precision": self.runtime.precision})

    def __getstate__(self) -> dict[str, object]:
        """Pickled without the engine (compiled models do not pickle); it is rebuilt, from the cache, on load."""
        state = self.__dict__.copy()
        del state["runtime"]
        state["device"] = str(self.device)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.runtime = create_runtime(self.model, self.options, torch.device(str(state["device"])))
        self.device = self.runtime.device

    @property
    def runtime_name(self) -> str:
        return self.runtime.name

    @property
    def precision(self) -> str:
        return self.runtime.precision

    @property
    def vectors_id(self) -> str:
        """Model, runtime and precision: what the vectors' values depend on (e.g. for resumable shards)."""
        return f"{self.model_id}/{self.runtime_name}-{self.precision}"

    def reference(self) -> Embedder:
        """The same network in PyTorch fp32 on the CPU: what every runtime is checked against."""
        if (self.runtime_name, self.precision, self.device.type) == ("torch", "fp32", "cpu"):
            return self
        return Embedder(self.model, device="cpu", options=RuntimeOptions(runtime="torch", precision="fp32"))

    def load(self, source: bytes | str, max_pixels: int | None = None, max_aspect_ratio: float | None = None) -> Image.Image:
        """Decode one image at bounded cost, shrunk in Pillow to the model's input scale (see
        :func:`models.preprocess.load_image`)."""
        limits = {k: v for k, v in {"max_pixels": max_pixels, "max_aspect_ratio": max_aspect_ratio}.items()
                  if v is not None}
        return load_image(source, draft_size=self.image_size, short_side=self.image_size, **limits)  # type: ignore[arg-type]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The network's normalised float input (3,S,S); :meth:`pixels` is the cheaper form to pass around."""
        return self.transform(image)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """Resized, centre-cropped uint8 pixels (3,S,S): what workers and request threads hand to the runtime."""
        return self.pixel_transform(image)

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """uint8 pixels (N,3,S,S) from :meth:`pixels`, or a normalised float batch from :meth:`preprocess`
        -> (N,D) float32 unit vectors. Either form gives the same vectors (up to float rounding)."""
        return self.runtime.forward(self._runtime_input(batch))

    def _runtime_input(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` in the form the runtime takes: normalised for PyTorch (exactly the :meth:`preprocess`
        arithmetic), pixel values for the exported graphs (which normalise inside)."""
        is_pixels = batch.dtype == torch.uint8
        if self.runtime.input_kind == "pixels":
            if is_pixels:
                return batch
            mean = torch.tensor(self.model.mean, dtype=batch.dtype).view(-1, 1, 1)
            std = torch.tensor(self.model.std, dtype=batch.dtype).view(-1, 1, 1)
            return (batch * std + mean) * 255.0
        return self.normalise(batch.to(self.device, non_blocking=True)) if is_pixels else batch

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> (N,D) float32 unit vectors."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self.embed_tensors(torch.stack([self.pixels(im) for im in images[i:i + batch_size]]))
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts)
