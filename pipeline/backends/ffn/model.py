"""The flood-filling network and the torch predictor that flood-fill inference calls.

The architecture follows the published FFN (Januszewski et al., Nature Methods 2018): the image and
the current object map (logits) enter as two channels; a stem of two 3x3x3 convolutions and a stack of
residual modules (ReLU, conv, ReLU, conv, plus the input) follow; a 1x1x1 convolution gives a logit
*update* that is added to the input object map::

    image ─┐
           ├─ cat ─ conv ─ relu ─ conv ─ [res] x depth ─ relu ─ conv1x1 ─ (+) ─▶ new logits
    pom  ──┘                                                               ▲
      └────────────────────────────────────────────────────────────────────┘

Every convolution keeps the spatial size (padding 1), so the output covers the whole FOV.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from emseg.pipeline.backends.ffn.config import ModelConfig
from emseg.pipeline.backends import device as devices


class ResidualModule(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3x3x3 convolutions of ``width`` channels."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(width, width, 3, padding=1)
        self.conv2 = nn.Conv3d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class FFN(nn.Module):
    """The flood-filling network.

    Parameters
    ----------
    config
        Depth and width (FOV and step do not change the weights: the network is fully convolutional,
        but it is trained for, and should be run at, ``config.fov_size``).

    Examples
    --------
    >>> net = FFN(ModelConfig(fov_size=(9, 9, 9), step=(2, 2, 2), depth=1, width=4))
    >>> net(torch.zeros(2, 1, 9, 9, 9), torch.zeros(2, 1, 9, 9, 9)).shape
    torch.Size([2, 1, 9, 9, 9])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv3d(2, w, 3, padding=1), nn.ReLU(), nn.Conv3d(w, w, 3, padding=1)
        )
        self.body = nn.Sequential(*[ResidualModule(w) for _ in range(config.depth)])
        self.head = nn.Conv3d(w, 1, 1)
        # Start close to "no update": the first predictions return the input object map.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor, pom_logits: torch.Tensor) -> torch.Tensor:
        """Update the object map.

        Parameters
        ----------
        image
            ``(B, 1, z, y, x)`` normalised image.
        pom_logits
            ``(B, 1, z, y, x)`` current object map as logits.

        Returns
        -------
        torch.Tensor
            ``(B, 1, z, y, x)`` new logits, float32.
        """
        h = self.body(self.stem(torch.cat([image, pom_logits.to(image.dtype)], dim=1)))
        update = self.head(torch.relu(h))
        return pom_logits.float() + update.float()


class TorchPredictor:
    """Adapts an :class:`FFN` to the numpy predictor protocol of :mod:`emseg.pipeline.backends.ffn.inference`.

    Parameters
    ----------
    net
        The network; it is moved to ``device`` and put in eval mode.
    device, precision
        Where and how to run; bf16 uses autocast.
    """

    def __init__(self, net: FFN, device: str, precision: str) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.precision = precision
        self.fov_size = net.config.fov_size
        #: FOVs evaluated so far (for benchmarks)
        self.fovs = 0

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, pom_logits: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """``(B, z, y, x)`` normalised image and logits in, ``(B, z, y, x)`` new logits out."""
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[:, None]
        pom = torch.from_numpy(np.ascontiguousarray(pom_logits, dtype=np.float32))[:, None]
        img = img.to(self.device, non_blocking=True)
        pom = pom.to(self.device, non_blocking=True)
        with devices.autocast(self.device, self.precision):
            out = self.net(img, pom)
        self.fovs += image.shape[0]
        return out[:, 0].float().cpu().numpy()
