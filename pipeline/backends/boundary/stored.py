"""Stored affinities: a boundary "model" that reads affinities predicted earlier from a volume.

The usual split of a large run: a GPU job predicts affinities once and stores them; fragments and
agglomeration then run on CPUs (and rerun with other parameters) without the model. With
``backend.model: {kind: stored, affinities: URL}`` the ``affinities`` backend reads each block's
affinities from that volume instead of predicting them; the input stays the image, which gives the
run its grid, voxel size and no-data mask.

The stored volume holds at least three channels, (c, z, y, x) in emseg's terms, whatever the order
on disk (:func:`emseg.pipeline.io.volume.open_channels`): channels 0, 1 and 2 are the nearest-
neighbour affinities of each voxel with its predecessor along z, y and x (offsets [-1, 0, 0],
[0, -1, 0], [0, 0, -1]: the MALA / waterz / volara convention, and what emseg's models give). Further
channels (long-range affinities, as lsd's networks predict them) are not read. Values are float in
[0, 1] (clipped; NaN reads as 0) or integers over their dtype's range (uint8 0..255 is 0..1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emseg.pipeline.errors import ConfigError, VolumeReadError
from emseg.pipeline.geometry import Box
from emseg.pipeline.io.volume import ChannelVolume, Volume, open_channels, ts_message

#: dtypes a stored affinity volume may have: floats are taken as 0..1, integers over their range
_SCALE = {"uint8": 255.0, "uint16": 65535.0, "float16": 1.0, "float32": 1.0, "float64": 1.0}
#: more channels than this on an axis that no metadata names is taken for a misread layout (the
#: most offsets of long-range affinity sets in use are a few dozen at most)
MAX_UNNAMED_CHANNELS = 32
#: float affinities outside [0, 1] by more than this are refused: they are not probabilities
_SLACK = 1e-3


class StoredAffinities:
    """Affinities read from a volume, behind the :class:`~emseg.pipeline.backends.boundary.AffinityModel` protocol.

    Parameters
    ----------
    source
        URL, path or tensorstore spec of the affinity volume (see the module docstring).
    shift_zyx
        The stored voxel (z, y, x) of the input's voxel (0, 0, 0): the input's offset minus the
        affinities' (both in voxels), so that affinities stored for a part of the input (a region of
        interest) line up with it. :func:`shift_for` works it out from both volumes' metadata.

    Raises
    ------
    ConfigError
        Fewer than three channels, or a dtype other than uint8, uint16 or float.
    VolumeNotFoundError, VolumeReadError
        Nothing readable at ``source``.
    """

    #: the affinities are read, not computed: a voxel's depend on no image around it
    context_zyx: tuple[int, int, int] = (0, 0, 0)
    meta: dict[str, Any] = {}

    def __init__(self, source: str | dict[str, Any], shift_zyx: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.volume: ChannelVolume = open_channels(source)
        self.shift = tuple(int(v) for v in shift_zyx)
        name = self.volume.source
        if self.volume.channels < 3:
            raise ConfigError(f"the stored affinities {name} have {self.volume.channels} channel(s); emseg needs the "
                              "3 nearest-neighbour affinities (z, y, x) as channels 0-2")
        if self.volume.dtype.name not in _SCALE:
            raise ConfigError(f"the stored affinities {name} are {self.volume.dtype.name}; emseg reads float (0..1), "
                              "uint8 or uint16 affinities")
        if self.volume.channels > MAX_UNNAMED_CHANNELS and self.volume.channel_axis.startswith("dim"):
            shape = [self.volume.channels, *self.volume.shape_zyx]
            raise ConfigError(f"the stored affinities {name} were read as (c, z, y, x) = {shape}, as their axes have no "
                              "names: name them (zarr v3 dimension_names, or the attribute axis_names, e.g. "
                              "[\"c^\", \"z\", \"y\", \"x\"]) or store the channels first")
        made = self.volume.attributes.get("emseg")
        if isinstance(made, dict) and isinstance(made.get("threshold"), (int, float)):
            self.meta = {"threshold": float(made["threshold"])}  # the model's own, written by write.affinities

    def shift_for(self, image: Volume) -> tuple[int, int, int]:
        """The shift (see the class) that the two volumes' offsets give: ``image.offset_zyx`` minus
        the affinities' ``offset_zyx``."""
        return tuple(int(i) - int(a) for i, a in zip(image.offset_zyx, self.volume.offset_zyx))  # type: ignore[return-value]

    def check_geometry(self, image: Volume, roi: Box) -> None:
        """Refuse affinities that do not lie on the input's grid or do not cover the run's region (before any work).

        ``roi``: the run's region of interest in zero-origin input voxels.

        Raises
        ------
        ConfigError
            Another voxel size than the input's (when both state one), or a region of interest not
            inside the stored box.
        """
        a, name = self.volume, self.volume.source
        if a.voxel_size_source is not None and not np.allclose(a.voxel_size_nm, image.voxel_size_nm, rtol=1e-6):
            raise ConfigError(f"the stored affinities {name} have voxels of {list(a.voxel_size_nm)} nm ({a.voxel_size_source}) "
                              f"but the input {image.source} of {list(image.voxel_size_nm)} nm; store them at the "
                              "input's resolution")
        lo = [s - o for s, o in zip(image.offset_zyx, self.shift)]  # where the stored box starts, in the input's coordinates
        hi = [v + n for v, n in zip(lo, a.shape_zyx)]
        want_lo = [o + s for o, s in zip(image.offset_zyx, roi.start)]
        want_hi = [o + s for o, s in zip(image.offset_zyx, roi.stop)]
        if any(w < l for w, l in zip(want_lo, lo)) or any(w > h for w, h in zip(want_hi, hi)):
            raise ConfigError(f"the stored affinities {name} cover voxels {lo}..{hi} (z, y, x, offsets included) but "
                              f"the run's region is {want_lo}..{want_hi}; store affinities for the whole region, or "
                              "set roi to the part they cover")

    def check_sample(self, roi: Box) -> None:
        """Read up to 27 boxes of 32³ spread over ``roi`` (zero-origin input voxels) before any work:
        a missing chunk, or float values outside [0, 1] (affinities stored as 0..255 floats, or
        logits), are refused here rather than in the run's tasks.

        Raises
        ------
        VolumeReadError
            A sampled chunk is missing or unreadable.
        ConfigError
            Float values below 0 or above 1 (beyond 0.001).
        """
        from emseg.pipeline.io.intensity import sample_boxes

        low, high = np.inf, -np.inf
        for start, stop in sample_boxes(roi.shape):
            box = tuple(slice(r + a + d, r + b + d) for r, a, b, d in zip(roi.start, start, stop, self.shift))
            data = self._read((slice(0, 3), *box))
            if data.dtype.kind == "f" and data.size and not np.isnan(data).all():
                low, high = min(low, float(np.nanmin(data))), max(high, float(np.nanmax(data)))
        if low < -_SLACK or high > 1 + _SLACK:
            raise ConfigError(f"the stored affinities {self.volume.source} hold values from {low:.4g} to {high:.4g}; "
                              "emseg reads float affinities in [0, 1]: store probabilities (a sigmoid of logits; "
                              "0..255 as uint8)")

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return self.volume.array[index].read().result()
        except ValueError as exc:
            text = ts_message(exc)
            if "is missing" in text or "NOT_FOUND" in text:
                raise VolumeReadError(f"a chunk of the stored affinities {self.volume.source} is missing ({text}); "
                                      "finish the prediction of this region, or narrow the run's roi") from None
            raise VolumeReadError(f"cannot read the stored affinities {self.volume.source}: {text}") from None

    def predict(self, image: np.ndarray, origin_zyx: tuple[int, int, int] = (0, 0, 0),
                region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """The stored affinities on ``region`` of the box of ``image``'s shape at ``origin_zyx``.

        ``image`` gives only the box's shape; ``origin_zyx`` is in the input's zero-origin voxels.
        Returns (3, z, y, x) float32 in [0, 1], 0 outside ``region`` and on the stored volume's
        first plane along each axis (no voxel before it). Unlike a
        model's output, the box's own first planes keep their stored values: the voxel before them
        lies outside the box but inside the volume, and the value does not depend on where the box
        was cut. Raises :class:`~emseg.pipeline.errors.VolumeReadError` when a chunk is missing or
        unreadable.
        """
        shape = image.shape
        region = region or tuple(slice(0, s) for s in shape)
        out = np.zeros((3, *shape), np.float32)
        at = [o + d for o, d in zip(origin_zyx, self.shift)]  # the box's first voxel in the stored array
        src = tuple(slice(o + r.start, o + r.stop) for o, r in zip(at, region))
        data = self._read((slice(0, 3), *src))
        scale = _SCALE[self.volume.dtype.name]
        view = out[(slice(None), *region)]
        if scale == 1.0:
            np.clip(np.nan_to_num(data, nan=0.0), 0.0, 1.0, out=view, casting="unsafe")
        else:
            np.divide(data, np.float32(scale), out=view, casting="unsafe")
        for axis, origin in enumerate(at):
            if origin == 0:  # the stored volume's first plane along this axis
                out[(axis, *(slice(None),) * axis, 0)] = 0.0
        return out
