"""Block slices as SAM2 video frames, and their image features computed once per frame.

A block ``(f, h, w)`` (the propagation axis first) becomes ``f`` frames: intensities to [0, 1],
resized to the model's square ``image_size``, the grey value repeated into the three channels and
normalised with the ImageNet mean and standard deviation that SAM2 was trained with. No JPEG folder:
the frames come from the array in memory.

The image encoder runs once per frame, a few frames per call; its features are kept for the whole
block, because the propagation visits every frame at least twice (forward and backward) and once
more for each group of objects. They live on the compute device, or in CPU memory for long blocks
(``offload=True``), and move to the device one frame at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from emseg.pipeline.errors import DtypeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def to_unit(block: np.ndarray) -> np.ndarray:
    """Intensities as float32 in [0, 1]: integers by their dtype's maximum, floats clipped.

    >>> to_unit(np.array([0, 51, 255], np.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    """
    if np.issubdtype(block.dtype, np.integer) and not np.issubdtype(block.dtype, np.signedinteger):
        return block.astype(np.float32) / np.float32(np.iinfo(block.dtype).max)
    if np.issubdtype(block.dtype, np.floating):
        return np.clip(block.astype(np.float32), 0.0, 1.0)
    raise DtypeError(
        f"SAM2 frames need unsigned integer or float images, got {block.dtype}; "
        "convert the volume to uint8 (or float in [0, 1])"
    )


def grey_frames(slices: np.ndarray, image_size: int, device: Any) -> torch.Tensor:
    """Slices ``(f, h, w)`` as ``(f, 1, S, S)`` float32 in [0, 1] on ``device``, ``S = image_size``."""
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(np.ascontiguousarray(to_unit(slices)))[:, None].to(device)
    if grey.shape[-2:] != (image_size, image_size):
        shrinking = grey.shape[-2] > image_size or grey.shape[-1] > image_size
        grey = F.interpolate(
            grey, size=(image_size, image_size), mode="bilinear", align_corners=False,
            antialias=shrinking,
        ).clamp_(0.0, 1.0)
    return grey


def normalise(grey: torch.Tensor) -> torch.Tensor:
    """``(n, 1, S, S)`` grey frames in [0, 1] -> ``(n, 3, S, S)`` normalised model input."""
    import torch

    mean = torch.tensor(IMG_MEAN, dtype=torch.float32, device=grey.device)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32, device=grey.device)[:, None, None]
    return (grey.expand(-1, 3, -1, -1) - mean) / std


class FrameFeatures:
    """The image features of every frame of a block, from one pass of the image encoder.

    Parameters
    ----------
    predictor
        A ``SAM2VideoPredictor`` (only its image encoder and feature layout are used here).
    slices
        ``(f, h, w)`` image, the propagation axis first.
    offload
        Keep the features in CPU memory and move one frame at a time to the device.
    encoder_batch
        Frames per image-encoder call.
    """

    def __init__(
        self, predictor: Any, slices: np.ndarray, *, offload: bool = False, encoder_batch: int = 4
    ) -> None:
        import torch

        self.predictor = predictor
        self.device = predictor.device
        self.storage = torch.device("cpu") if offload else self.device
        self.num_frames, self.height, self.width = (int(n) for n in slices.shape)
        self.image_size = int(predictor.image_size)
        self.encoded = 0  # image-encoder frame count, to check that each frame is encoded once
        self._fpn: list[list[torch.Tensor]] = []
        self._pos: list[torch.Tensor] = []
        for start in range(0, self.num_frames, encoder_batch):
            chunk = slices[start : start + encoder_batch]
            images = normalise(grey_frames(chunk, self.image_size, self.device))
            out = predictor.forward_image(images)
            self.encoded += len(chunk)
            if not self._pos:  # position encodings depend on the size only: keep one copy
                self._pos = [self._keep(p[:1]) for p in out["vision_pos_enc"]]
            levels = [self._keep(f) for f in out["backbone_fpn"]]
            for i in range(len(chunk)):
                self._fpn.append([level[i : i + 1] for level in levels])

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` in storage: as is on the device, or in pinned CPU memory when offloaded."""
        if self.storage == self.device:
            return tensor
        kept = tensor.to(self.storage)
        return kept.pin_memory() if self.device.type == "cuda" else kept

    def features(self, frame: int, batch: int) -> tuple[list, list, list]:
        """Flattened features of ``frame`` for ``batch`` objects: ``(feats, pos, sizes)``.

        The layout is the one ``SAM2Base.track_step`` takes (``(h*w, batch, c)`` per level); the
        batch is an expanded view, not a copy.
        """
        backbone_out = {
            "backbone_fpn": [
                f.to(self.device, non_blocking=True).expand(batch, -1, -1, -1)
                for f in self._fpn[frame]
            ],
            "vision_pos_enc": [
                p.to(self.device, non_blocking=True).expand(batch, -1, -1, -1) for p in self._pos
            ],
        }
        _, feats, pos, sizes = self.predictor._prepare_backbone_features(backbone_out)
        return feats, pos, sizes
