"""Boundary models: image in, nearest-neighbour affinities out, for the ``affinities`` backend.

Two models behind one protocol, :class:`AffinityModel`:

- ``forest`` (:mod:`emseg.pipeline.backends.boundary.forest`): a scikit-learn tree ensemble on multiscale filter
  features (the ilastik recipe), trainable in minutes on a CPU;
- ``unet`` (:mod:`emseg.pipeline.backends.boundary.unet`): a PyTorch 3D U-Net (the MALA / LSD recipe), for GPUs.

Both predict, for each voxel, how likely it is to belong to the same object as its predecessor along
z, y and x. ``load_model(kind, weights)`` builds one from a file, a URL or the bundled model.
Importing this package imports neither torch nor scikit-learn.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from emseg.pipeline.errors import ConfigError

__all__ = ["AffinityModel", "BUNDLED", "KINDS", "load_model"]

KINDS = ("forest", "unet")
#: file under pipeline/models that ``weights="bundled"`` stands for, per kind
BUNDLED = {"forest": "forest_fib25.skops", "unet": "unet_fib25.pt"}
PRECISIONS = ("auto", "fp32", "bf16")


@runtime_checkable
class AffinityModel(Protocol):
    """What a boundary model gives the ``affinities`` backend.

    Attributes
    ----------
    context_zyx
        Image context (voxels, z, y, x) on each side that the prediction at one voxel depends on;
        the backend makes the block halo at least this + 1, so that a block's core does not depend
        on where the block was cut.
    """

    context_zyx: tuple[int, int, int]

    def predict(self, image: np.ndarray, origin_zyx: tuple[int, int, int] = (0, 0, 0),
                region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """Affinities of an image.

        Parameters
        ----------
        image
            (z, y, x) float32 intensities mapped to [0, 1] (dark membranes, as in FIB-SEM and most
            EM); NaN marks voxels without data.
        origin_zyx
            Global voxel position of ``image[0, 0, 0]``. A U-Net anchors its pooling grid there, so
            that its output does not depend on where a block starts; pass the read box's start.
        region
            Slices of ``image`` where the affinities are needed (None: everywhere). Inside it they
            must be what the whole image gives; outside it a model may return 0 and skip the work
            (the engine needs a block's write box and its fragment context, not its whole halo).

        Returns
        -------
        numpy.ndarray
            (3, z, y, x) float32 in [0, 1]: ``affs[0][z, y, x]`` is the affinity of voxel (z, y, x)
            with (z-1, y, x), ``affs[1]`` with (z, y-1, x), ``affs[2]`` with (z, y, x-1) (the waterz /
            MALA convention); 1 = same object. The first plane along each axis (no predecessor inside
            the array) is 0, and so is every affinity that involves a NaN voxel.
        """
        ...


def load_model(kind: str, weights: str = "bundled", device: str = "cpu", precision: str = "auto") -> AffinityModel:
    """A boundary model ready to predict.

    Parameters
    ----------
    kind
        ``"forest"`` or ``"unet"``.
    weights
        A local path, an ``http(s)://``, ``gs://`` or ``s3://`` URL (downloaded once into the cache, see
        :mod:`emseg.pipeline.io.checkpoints`), or ``"bundled"`` (``pipeline/models/forest_fib25.skops`` or
        ``unet_fib25.pt``).
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when present). The forest runs on the CPU.
    precision
        ``"auto"`` (bf16 autocast on CUDA, fp32 on the CPU), ``"fp32"`` or ``"bf16"``. U-Net only.

    Raises
    ------
    ConfigError
        An unknown kind, precision or device.
    CheckpointError
        The weights are missing, unsafe, or do not fit the model.
    """
    if kind not in KINDS:
        raise ConfigError(f"boundary model kind {kind!r} is not known; use one of {', '.join(KINDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not known; use one of {', '.join(PRECISIONS)}")
    if not (device in ("cpu", "auto", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"device {device!r} is not known; use cpu, cuda, cuda:N or auto")
    if kind == "forest":
        from emseg.pipeline.io import checkpoints
        from emseg.pipeline.backends.boundary import forest

        path = checkpoints.resolve(weights, bundled=BUNDLED["forest"], family="forest", what="forest model")
        return forest.load(path)
    from emseg.pipeline.backends.boundary import unet

    return unet.load(weights, device=device, precision=precision)
