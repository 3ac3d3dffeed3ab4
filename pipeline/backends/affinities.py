"""``affinities``: a boundary model predicts affinities; fragments + agglomeration segment them.

This is the field's blockwise method (MALA / LSD; Funke et al. 2019, Sheridan et al. 2023), done the
way the engine stitches boundary backends (see :mod:`emseg.pipeline.stitching.agglomeration`)::

    image (z, y, x) ─▶ intensities to [0, 1] (dtype range or input_value_range; NaN = no data)
          ─▶ model: affinities (3, z, y, x) on the read box
          ─▶ fragments of the write box, cut with fragment_context voxels     stage 1
             around it; their region graph
          ─▶ seam edges from the affinities on each block face; "join" edges  stage 2
             between the pieces of a fragment that the face cut
          ─▶ agglomeration by mean affinity; union-find over the edges with   stage 3
             score <= agglomeration.threshold

Models (``model.kind``):

- ``forest``: a pixel classifier on multiscale filter features (the ilastik recipe; scikit-learn);
- ``unet``: a 3D U-Net (PyTorch) predicting affinities directly;
- ``labels``: the input is a label volume; its affinities are 1 inside an object and 0 across a
  boundary. It re-agglomerates an existing segmentation and is the exactness oracle: chunked, it
  gives back the input's partition (6-connected components) for any block shape;
- ``stored``: affinities predicted earlier (by emseg's models or any other, e.g. on a GPU node) are
  read from the volume at ``model.affinities`` (:mod:`emseg.pipeline.backends.boundary.stored`); the
  input image gives the grid and the no-data mask.

The halo must cover the model's context (:attr:`Backend.context_zyx`) plus one voxel, so that the
affinities in a block's write box do not depend on where the block was cut; a run with a smaller halo
is refused before any work.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from emseg.pipeline.stitching.agglomeration import affinities_from_labels, segment
from emseg.pipeline.backends.base import BackendParams
from emseg.pipeline.errors import ConfigError, DtypeError
from emseg.pipeline.backends.device import Device, Precision

_DTYPE_RANGE: dict[str, tuple[float, float]] = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0)}
#: agglomeration thresholds when the config and the model give none: the bundled forest's card
#: (best adapted Rand on FIB-25 z >= 170), the bundled U-Net's card, any value in (0, 1) for labels
DEFAULT_THRESHOLD: dict[str, float] = {"forest": 0.7, "unet": 0.5, "labels": 0.5, "stored": 0.5}
_LABEL_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int32", "int64")


class ModelParams(BaseModel):
    """``backend.model``: which boundary model predicts the affinities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: forest | unet | labels | stored (see the module docstring)
    kind: Literal["forest", "unet", "labels", "stored"] = "forest"
    #: a local path, an http(s)/gs/s3 URL, or "bundled" (the model trained on FIB-25 that ships with emseg)
    weights: str = "bundled"
    #: kind stored: URL, path or tensorstore spec of the affinity volume (channels 0-2 = z, y, x
    #: nearest-neighbour affinities on the input's grid; float 0..1, uint8 or uint16)
    affinities: str | dict[str, Any] | None = None
    #: kind stored: the stored voxel (z, y, x) of the input's voxel (0, 0, 0); filled in by the engine
    #: from both volumes' offsets when unset (set it only for a store whose metadata gives no offset)
    affinities_shift_zyx: tuple[int, int, int] | None = None
    #: "auto" (cuda when there is one, else cpu), "cpu", "cuda" or "cuda:N" (unet only)
    device: Device = "auto"
    #: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32" (unet only)
    precision: Precision = "auto"

    @model_validator(mode="after")
    def _stored(self) -> ModelParams:
        if self.kind == "stored" and self.affinities is None:
            raise ConfigError("backend.model.kind stored reads affinities predicted earlier: set backend.model.affinities "
                              "to their volume's URL")
        if self.kind != "stored" and (self.affinities is not None or self.affinities_shift_zyx is not None):
            raise ConfigError(f"backend.model.affinities (and affinities_shift_zyx) are read only with kind stored "
                              f"(kind is {self.kind!r}); remove them, or set backend.model.kind: stored")
        if self.kind == "stored" and self.weights != "bundled":
            raise ConfigError("backend.model.weights has no use with kind stored (the affinities are read from "
                              "backend.model.affinities); remove it")
        return self


class Params(BackendParams):
    """Config keys of the ``affinities`` backend (``backend: {name: affinities, ...}``)."""

    model: ModelParams = ModelParams()
    #: how blocks are cut into fragments: "watershed" (distance-transform seeds, seeded watershed on
    #: the mean affinity; for learned models) or "zwatershed" (waterz's watershed on the affinity
    #: graph; exact on binary affinities). None: zwatershed for model.kind labels, else watershed
    fragments: Literal["watershed", "zwatershed"] | None = None
    #: watershed fragments: interior = mean affinity above this; seeds = distance-transform maxima
    #: at least seed_min_distance apart (voxels of the finest axis). 0.7 and 3 were best of
    #: {0.5, 0.7} x {3, 5} on FIB-25 z >= 170 with the bundled forest (docs/agglomeration.md)
    seed_threshold: float = Field(0.7, gt=0.0, lt=1.0)
    seed_min_distance: float = Field(3.0, ge=0.0)
    #: voxels of affinities on each side of the write box (within the read box: at most the halo)
    #: that a block's fragments are cut with before being cropped to the write box, so that a
    #: fragment near a block face is the one the whole volume would have (16 was enough on FIB-25 and
    #: the phantom, not on noisy affinities with wide boundary bands, which needed 24:
    #: docs/agglomeration.md, "How much the block shape matters")
    fragment_context: int = Field(16, ge=0)
    #: zwatershed fragments: thresholds on the affinities (waterz's defaults)
    aff_threshold_low: float = Field(0.0001, ge=0.0, lt=1.0)
    aff_threshold_high: float = Field(0.9999, gt=0.0, le=1.0)
    #: the input's voxel size (z, y, x, nm): filled in from the input's metadata by the engine when
    #: unset; it makes seed distances physical on anisotropic data
    voxel_size_zyx: tuple[float, float, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> Params:
        if not self.aff_threshold_low < self.aff_threshold_high:
            raise ConfigError(
                f"backend.aff_threshold_low ({self.aff_threshold_low}) must be below aff_threshold_high "
                f"({self.aff_threshold_high})"
            )
        return self


class Backend:
    """A boundary backend: :meth:`affinities` per block; the engine makes fragments and edges."""

    name: ClassVar[str] = "affinities"
    #: boundary backends are stitched through fragments and scored edges, not overlap IoU
    kind: ClassVar[str] = "boundary"
    input_dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "float32", "uint32", "uint64", "int32", "int64")
    #: float images are intensities in 0..1 (the run's input_value_range maps other ranges there)
    float_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    min_halo: ClassVar[int] = 1
    default_stitch: ClassVar[dict[str, Any]] = {"min_overlap": 1, "min_iou": 0.0, "mutual_best": False}

    def __init__(self, params: Params) -> None:
        self.params = params
        self._model: Any = None

    # the model ---------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        m = self.params.model
        if self._model is None and m.kind == "stored":
            from emseg.pipeline.backends.boundary.stored import StoredAffinities

            self._model = StoredAffinities(m.affinities, m.affinities_shift_zyx or (0, 0, 0))  # type: ignore[arg-type]
        elif self._model is None and m.kind != "labels":
            from emseg.pipeline.backends.boundary import load_model

            self._model = load_model(m.kind, m.weights, device=m.device, precision=m.precision)
        return self._model

    @property
    def context_zyx(self) -> tuple[int, int, int]:
        """Voxels of image context (z, y, x) on each side that a voxel's affinities depend on."""
        if self.params.model.kind == "labels":
            return (0, 0, 0)
        return tuple(int(c) for c in self.model.context_zyx)  # type: ignore[return-value]

    @property
    def default_threshold(self) -> float:
        """The agglomeration threshold the model recommends: ``threshold`` in its metadata when it
        records one, else :data:`DEFAULT_THRESHOLD` of its kind (the bundled models' cards)."""
        kind = self.params.model.kind
        if kind == "labels":
            return DEFAULT_THRESHOLD[kind]
        meta = getattr(self.model, "meta", None) or {}
        return float(meta.get("threshold", DEFAULT_THRESHOLD[kind]))

    def check_input(self, dtype: np.dtype | str) -> None:
        """Refuse an input dtype the chosen model cannot take, before any work."""
        name = np.dtype(dtype).name
        kind = self.params.model.kind
        ok = _LABEL_DTYPES if kind == "labels" else ("uint8", "uint16", "float32")
        if kind == "stored":  # the input gives only the grid and the no-data mask (NaN)
            return
        if name not in ok:
            raise DtypeError(
                f"backend 'affinities' with model.kind {kind!r} takes {' or '.join(ok)} input, but the input is "
                f"{name}; " + ("choose model.kind labels for a label volume" if kind != "labels"
                               else "give a label volume, or choose model.kind forest or unet for an image")
            )

    # per block ---------------------------------------------------------------------------------
    def normalise(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Intensities to float32 [0, 1] and the data mask (False where NaN); (image, None) if all data.

        Integer images by their dtype's range (uint8 0..255, uint16 0..65535); float images are taken
        as 0..1 already (the engine maps ``input_value_range`` there before the backend sees them).
        """
        if image.dtype.kind == "f":
            x = image.astype(np.float32, copy=False)
            nan = np.isnan(x)
            low, high = 0.0, 1.0
        else:
            nan = None
            low, high = _DTYPE_RANGE.get(image.dtype.name, (0.0, 1.0))
            x = image.astype(np.float32)
        if (low, high) != (0.0, 1.0):
            x = (x - np.float32(low)) / np.float32(high - low)
        x = np.clip(x, 0.0, 1.0)
        if nan is not None and nan.any():
            x = np.where(nan, np.float32(np.nan), x)
            return x, ~nan
        return x, None

    def data_mask(self, image: np.ndarray) -> np.ndarray | None:
        """The data mask :meth:`affinities` returns for ``image``, without running the model: the
        label volume's non-zero voxels for ``model.kind`` labels, else False where a float image is
        NaN (None when every voxel has data). Stage 1 uses it with affinities stored by ``1-predict``."""
        if self.params.model.kind == "labels":
            return image != 0
        if image.dtype.kind == "f":
            nan = np.isnan(image)
            return ~nan if nan.any() else None
        return None

    def affinities(
        self, image: np.ndarray, origin_zyx: tuple[int, int, int] = (0, 0, 0),
        region: tuple[slice, slice, slice] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` (z, y, x) in; affinities ``(3, z, y, x)`` float32 and the data mask (or None) out.

        ``origin_zyx`` is the input voxel of ``image[0, 0, 0]``: the U-Net aligns its pooling grid to
        the volume with it, so that a block predicts what the whole volume would. ``region`` (slices of
        ``image``, None = all): where the affinities are needed; the model may leave them 0 elsewhere
        (:class:`emseg.pipeline.backends.boundary.AffinityModel`).
        """
        if self.params.model.kind == "labels":
            return affinities_from_labels(image), image != 0
        x, mask = self.normalise(image)
        affs = np.asarray(self.model.predict(x, tuple(int(o) for o in origin_zyx), region=region), np.float32)
        if affs.shape != (3, *image.shape):
            raise RuntimeError(f"the {self.params.model.kind} model returned affinities of shape {affs.shape} "
                               f"for an image of {image.shape}; expected {(3, *image.shape)}")
        if mask is not None:
            affs[:, ~mask] = 0.0
        return affs, mask

    def fragment_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`emseg.pipeline.stitching.agglomeration.fragments` these params ask for."""
        p = self.params
        method = p.fragments or ("zwatershed" if p.model.kind == "labels" else "watershed")
        return {"method": method, "seed_threshold": p.seed_threshold,
                "seed_min_distance": p.seed_min_distance, "voxel_size_zyx": p.voxel_size_zyx,
                "aff_threshold_low": p.aff_threshold_low, "aff_threshold_high": p.aff_threshold_high}

    def segment(self, image: np.ndarray) -> np.ndarray:
        """The whole block at the default threshold (the instance-backend protocol; the engine uses
        :meth:`affinities` and stitches through fragments instead)."""
        affs, mask = self.affinities(image)
        return segment(affs, self.default_threshold, mask, **self.fragment_options())
