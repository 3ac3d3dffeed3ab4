"""Run configuration: YAML validated by pydantic, unknown keys rejected.

The keys, with their defaults::

    input: zarr://file:///data/em.zarr/raw   # a Neuroglancer-style URL, a local path, or a tensorstore spec
    output: /runs/em-seg                     # directory or URL; the segmentation is <output>/segmentation
    backend: {name: watershed}               # plus the backend's own keys (see pipeline/backends)
    blocks: {shape: [128, 128, 128], halo: [8, 8, 8]}
    cluster: {workers: 2, threads_per_worker: 1, address: null}
    write: {chunk_shape: [64, 64, 64], sharded: false}
    roi: null                                # {start: [z, y, x], stop: [z, y, x], units: voxels | nm}
    stitch: null                             # {min_overlap, min_iou, mutual_best}; null = backend's rule
    agglomeration: {threshold: null, scope: auto}  # boundary backends: merge edges with score <= threshold
    retries: 2                               # extra attempts per task before the block counts as failed
    evaluate: null                           # {groundtruth: URL, iou_threshold: 0.5, min_size: 0, ...}
    phantom: null                            # make a synthetic input (and ground truth) if none exists
    input_voxel_size_nm: null                # [z, y, x] nm, for an input whose metadata gives none
    input_value_range: null                  # [low, high] intensities mapped to 0..1 before the backend
    fill_missing: false                      # read missing input chunks as the fill value instead of failing
    postprocess: {pyramid_levels: null, meshes: true, segment_properties: true, seam_audit: true, ...}

``--set key.sub=value`` on the command line overrides one key; the value is parsed as YAML.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emseg.pipeline import backends
from emseg.pipeline.errors import ConfigError
from emseg.pipeline.stitching.seams import StitchRule

Vec3 = tuple[int, int, int]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(Strict):
    """``backend: {name: ..., <the backend's own keys>}``."""

    name: str
    params: Any = None

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, Mapping) or "name" not in data:
            raise ValueError("backend needs a name, e.g. backend: {name: watershed}")
        if "params" in data and set(data) == {"name", "params"}:
            return dict(data)
        params = {k: v for k, v in data.items() if k != "name"}
        return {"name": data["name"], "params": params}

    @model_validator(mode="after")
    def _validate_params(self) -> BackendConfig:
        raw = self.params
        if isinstance(raw, BaseModel):
            return self
        try:
            validated = backends.validate_params(self.name, dict(raw or {}))
        except ValidationError as exc:
            raise ValueError(_pydantic_message(exc, prefix="backend")) from None
        object.__setattr__(self, "params", validated)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json")}


class BlocksConfig(Strict):
    shape: Vec3 = (128, 128, 128)
    halo: Vec3 = (8, 8, 8)

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: Vec3) -> Vec3:
        if any(s <= 0 for s in v):
            raise ValueError(f"block shape must be positive on every axis, got {list(v)}")
        return v

    @field_validator("halo")
    @classmethod
    def _nonneg(cls, v: Vec3) -> Vec3:
        if any(h < 0 for h in v):
            raise ValueError(f"halo must be >= 0 on every axis, got {list(v)}")
        return v


class ClusterConfig(Strict):
    #: worker processes of the local cluster (ignored with an address)
    workers: int = Field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)), ge=1)
    threads_per_worker: int = Field(1, ge=1)
    #: an existing scheduler, e.g. tcp://host:8786; None starts a local cluster
    address: str | None = None
    memory_limit: str = "auto"
    #: Dask worker resources that the tasks running a model (SAM2, FFN, a forest or U-Net) ask for
    #: (1-predict with write.affinities, else stage 1), e.g. {GPU: 1}: only workers started with them
    #: (`dask worker --resources GPU=1`) run the model, one task per unit, while every worker runs
    #: the other tasks. A local cluster gives them to its first worker process. null = any worker
    #: runs any task
    model_resources: dict[str, float] | None = None

    @field_validator("model_resources")
    @classmethod
    def _resources(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (not v or any(not k or amount <= 0 for k, amount in v.items())):
            raise ValueError(f"{v} must name at least one resource, each with an amount above 0 (e.g. {{GPU: 1}}), "
                             "or be null")
        return v


class WriteConfig(Strict):
    """How the output segmentation is stored (Neuroglancer precomputed)."""

    chunk_shape: Vec3 = (64, 64, 64)
    encoding: Literal["compressed_segmentation", "raw"] = "compressed_segmentation"
    #: sharded precomputed; shards are chosen to match the block shape when not given
    sharded: bool = False
    #: explicit sharding bits (preshift_bits, minishard_bits, shard_bits); null = derived
    sharding_bits: tuple[int, int, int] | None = None
    #: boundary backends: the model predicts each block's write box once (stage 1-predict) into
    #: <output>/affinities (zarr, (3, z, y, x), chunks (3, *chunk_shape), blosc-lz4), and stage 1 cuts fragments
    #: from the stored write box and fragment context: the context that neighbouring blocks share is
    #: predicted once, not by each of them, and is the whole volume's. Fragments and agglomeration can
    #: be rerun later without the model (backend.model.kind: stored). uint8 (0..255, 3 bytes per
    #: voxel, what lsd and volara store) or float32 (exact, 12 bytes per voxel); null = not stored,
    #: each block predicts its write box and fragment context itself
    affinities: Literal["uint8", "float32"] | None = None


class Region(Strict):
    """A half-open box of voxels, ``[start, stop)``, z, y, x: the training and validation regions of
    ``emseg train`` and ``emseg train-ffn``."""

    start: Vec3
    stop: Vec3

    @model_validator(mode="after")
    def _nonempty(self) -> Region:
        if any(b <= a for a, b in zip(self.start, self.stop)):
            raise ValueError(f"region stop {list(self.stop)} must exceed start {list(self.start)}")
        return self


class RegionConfig(Strict):
    """A region of interest in the input's own coordinates (its voxel offset included)."""

    start: tuple[float, float, float]
    stop: tuple[float, float, float]
    units: Literal["voxels", "nm"] = "voxels"


class EnclosedConfig(Strict):
    """``agglomeration.enclosed``: after agglomeration, merge segments that one neighbour encloses
    (``emseg.pipeline.stitching.inclusions``; in blockwise scope from the hood of each 2 x 2 x 2
    group of blocks: ``BlockGrid.hood``). Chosen on FIB-25's training part
    (z < 150) with the bundled forest at its threshold 0.7; docs/agglomeration.md has the numbers."""

    #: a group of segments whose every way to the region's faces (or to voxels without data) passes
    #: through one segment merges into it (NeuroProof's inclusion removal)
    inclusions: bool = True
    #: a segment that shares more than this fraction of its surface (faces on the region's boundary
    #: included) with one neighbour of larger surface merges into it; null = not at all
    majority: float | None = Field(0.5, ge=0.5, lt=1.0)
    #: neither rule merges across faces whose score (1 - mean affinity) exceeds this: a confident boundary
    max_score: float = Field(0.85, ge=0.0, le=1.0)


class SmallConfig(Strict):
    """``agglomeration.small``: after agglomeration (and the enclosed-segment merges), merge segments of
    fewer than ``min_size`` voxels along their best-scoring contact (size-dependent single linkage,
    ``emseg.pipeline.stitching.small.small_merges``; in blockwise scope from the hood of each
    2 x 2 x 2 group of blocks). Chosen on FIB-25's training
    part (z < 150) with the bundled forest at its threshold 0.7; docs/agglomeration.md has the numbers."""

    #: voxels: a segment smaller than this merges into a neighbour (sizes add as segments join);
    #: 5000 voxels are 0.005 um^3 at FIB-25's 10 nm
    min_size: int = Field(5000, ge=1)
    #: never across contacts whose score (1 - mean affinity) exceeds this: a confident boundary keeps
    #: even a tiny object (so binary affinities, the labels oracle, keep every object)
    max_score: float = Field(0.8, ge=0.0, le=1.0)


class AgglomerationConfig(Strict):
    """Boundary backends (``affinities``): where the global agglomeration stops.

    Changing ``threshold`` on a finished output reruns only union-find and relabel (stages 3-4),
    never inference: the scored edges are kept in scratch.
    """

    #: merge every fragment edge whose agglomeration score (1 - mean affinity of the two regions'
    #: shared faces when they merge) is at most this; null = the model's recommended threshold (its
    #: model card), 0.5 for model.kind labels
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    #: "global": one agglomeration of the whole region graph (one task; the result does not depend
    #: on the block shape beyond where fragments were cut; memory grows with the graph, about 0.8 KB
    #: and 30 us of CPU per fragment edge, ~1 edge per 180 voxels on FIB-25). "blockwise": each
    #: 2 x 2 x 2 group of blocks agglomerates its edges with the region graphs and seams of its
    #: hood, the group and one block around it, as context (scales without limit; near the global
    #: result, docs/agglomeration.md). "auto":
    #: global up to global_max_voxels of region of interest, blockwise beyond
    scope: Literal["auto", "global", "blockwise"] = "auto"
    global_max_voxels: int = Field(1_000_000_000, ge=0)
    #: merge segments that one neighbour encloses after the threshold (mitochondria split off their
    #: neurite); null = off. Changing it reruns stages 3-4 only, like the threshold
    enclosed: EnclosedConfig | None = EnclosedConfig()
    #: then merge segments smaller than small.min_size voxels along their best contact (splinters of
    #: neurites along stretches of false boundary); null = off. Reruns stages 3-4 only
    small: SmallConfig | None = SmallConfig()

    @field_validator("enclosed", "small", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        """``false`` (or YAML's ``off`` / ``no``) turns a rule off like ``null``; ``true`` gives its defaults."""
        if value is False:
            return None
        if value is True:
            return {}
        if not isinstance(value, (Mapping, BaseModel)) and value is not None:
            raise ValueError(f"give a mapping of the rule's keys, null (or false) to turn it off, or true for its "
                             f"defaults; got {value!r}")
        return value


class EvaluateConfig(Strict):
    groundtruth: str | dict[str, Any]
    iou_threshold: float = Field(0.5, gt=0.0, le=1.0)
    min_size: int = Field(0, ge=0)
    #: also score only the ground-truth objects (and segments) of at least this many voxels, printed
    #: on a line of its own (DESIGN.md's convention on FIB-25, where many bodies are tiny fragments:
    #: all bodies, and bodies of 1000 voxels or more); null = not
    also_min_size: int | None = Field(1000, ge=1)
    ignore_gt_zero: bool = True
    #: score on the finer grid when the ground truth's voxel size is a whole multiple (or fraction) of
    #: the input's; without it, different voxel sizes are refused
    resample: bool = False


class PhantomConfig(Strict):
    """Make a synthetic EM-like input (image at ``input``, labels at ``evaluate.groundtruth``)."""

    shape: Vec3 = (256, 256, 256)
    seed: int = 0
    #: FIB-25's voxel size, on which the phantom's look is calibrated (docs/phantom.md)
    voxel_size_nm: tuple[float, float, float] = (10.0, 10.0, 10.0)
    chunk_shape: Vec3 = (64, 64, 64)
    #: extra keys of emseg.pipeline.quality.phantom.PhantomParams
    options: dict[str, Any] = Field(default_factory=dict)


class PostprocessConfig(Strict):
    """Viewing outputs made after a complete run: pyramids, meshes, segment properties, seam audit."""

    #: coarser scales of the segmentation (mode) and image (average); null = until one chunk, 0 = none
    pyramid_levels: int | None = Field(None, ge=0)
    #: also write <output>/image: a precomputed copy of the input over the region of interest with
    #: averaged coarser scales, for viewing (costs the image's size again); the input is never written
    image_pyramid: bool = False
    meshes: bool = True
    #: pyramid scale the meshes are made from (0 = full resolution)
    mesh_scale: int = Field(0, ge=0)
    #: legacy | multires | sharded (multi-resolution, sharded); auto = sharded when write.sharded
    mesh_format: Literal["auto", "legacy", "multires", "sharded"] = "auto"
    #: simplification: target triangle reduction factor and largest vertex displacement (voxels)
    mesh_reduction: int = Field(10, ge=0)
    mesh_max_error: float = Field(1.0, gt=0)
    #: levels of detail of multi-resolution meshes
    mesh_lods: int = Field(3, ge=1, le=8)
    segment_properties: bool = True
    seam_audit: bool = True
    #: audit the edges whose IoU lies within this distance of stitch.min_iou
    seam_audit_margin: float = Field(0.15, ge=0, le=1)
    seam_audit_limit: int = Field(100_000, ge=1)
    #: also write <output>/segmentation.ome.zarr, an OME-NGFF label image of every scale: "0.4" (zarr v2)
    #: or "0.5" (zarr v3); stage 10
    ome_zarr: Literal["0.4", "0.5"] | None = None
    #: TEASAR skeletons per segment (kimimaro), joined across the seams: stage 9
    skeletons: bool = False
    #: pyramid scale to skeletonize (0 = full resolution; coarser is much faster, as with igneous's mip)
    skeleton_scale: int = Field(0, ge=0)
    #: unsharded | sharded; auto = sharded when write.sharded
    skeleton_format: Literal["auto", "unsharded", "sharded"] = "auto"
    #: TEASAR invalidation ball: radius = scale * distance-to-boundary + const (nm); kimimaro's defaults
    skeleton_teasar_scale: float = Field(1.5, gt=0)
    skeleton_teasar_const: float = Field(300.0, ge=0)
    #: objects under this many voxels in a block are not skeletonized there (unless they touch its faces)
    skeleton_dust_voxels: int = Field(100, ge=0)
    #: after joining: drop pieces under this much cable (nm) and remove ticks shorter than this (nm)
    skeleton_dust_nm: float = Field(0.0, ge=0)
    skeleton_tick_nm: float = Field(0.0, ge=0)


class Config(Strict):
    input: str | dict[str, Any]
    output: str
    #: the input's voxel size (z, y, x, nm) where its metadata gives none; refused if it disagrees
    input_voxel_size_nm: tuple[float, float, float] | None = None
    #: input intensities that stage 1 maps linearly to 0..1 (float32) before the backend sees them
    input_value_range: tuple[float, float] | None = None
    #: read a missing input chunk as the store's fill value (default: the block fails, naming the chunk)
    fill_missing: bool = False
    backend: BackendConfig = Field(default_factory=lambda: BackendConfig(name="watershed"))
    blocks: BlocksConfig = BlocksConfig()
    cluster: ClusterConfig = ClusterConfig()
    write: WriteConfig = WriteConfig()
    roi: RegionConfig | None = None
    stitch: StitchRule | None = None
    agglomeration: AgglomerationConfig = AgglomerationConfig()
    retries: int = Field(2, ge=0)
    evaluate: EvaluateConfig | None = None
    phantom: PhantomConfig | None = None
    #: viewing outputs after a complete run; null skips them all
    postprocess: PostprocessConfig | None = Field(default_factory=PostprocessConfig)
    #: keep every scratch object after a complete run (by default only what a later step needs stays:
    #: done-markers, scored edges, core labels, the union-find result; pipeline/io/scratch.py)
    keep_scratch: bool = False

    @field_validator("input_voxel_size_nm")
    @classmethod
    def _positive_voxel(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and not all(x > 0 and x < float("inf") for x in v):
            raise ValueError(f"input_voxel_size_nm must be positive on every axis (z, y, x nm), got {list(v)}")
        return v

    @field_validator("input_value_range")
    @classmethod
    def _ordered_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"input_value_range must be [low, high] with low < high, got {list(v)}")
        return v

    def stitch_rule(self) -> StitchRule:
        if self.stitch is not None:
            return self.stitch
        return StitchRule(**backends.module(self.backend.name).Backend.default_stitch)

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["backend"] = self.backend.to_dict()
        return data


def _pydantic_message(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    lengths: dict[str, tuple[int, Any]] = {}  # a list of the wrong length: its key -> (expected, given)
    for err in exc.errors():
        path = ((prefix,) if prefix else ()) + tuple(err["loc"])
        loc = ".".join(str(p) for p in path)
        if err["type"] == "missing" and len(path) > 1 and isinstance(path[-1], int):
            name = ".".join(str(p) for p in path[:-1])
            expected = max(lengths.get(name, (0, None))[0], path[-1] + 1)
            lengths[name] = (expected, err.get("input"))
            continue
        if err["type"] == "too_long":
            lengths[loc] = (int((err.get("ctx") or {}).get("max_length", 0)), err.get("input"))
            continue
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key {loc!r}; remove it or check its spelling")
        elif err["type"] == "missing":
            lines.append(f"missing config key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc and f"'{loc}" not in msg else msg)
    for name, (expected, given) in lengths.items():
        shown = list(given) if isinstance(given, list | tuple) else given
        lines.append(f"{name} takes {expected} values, got {shown}"
                     + (" (one per axis: z, y, x)" if expected == 3 else ""))
    return "; ".join(lines)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. --set blocks.shape=[64,64,64]), got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or "invalid YAML")
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({problem}); quote it or fix its brackets, "
                "e.g. --set blocks.shape=[64,64,64]"
            ) from None
        out.append((key.strip(), parsed))
    return out


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Mapping[str, Any], overrides: Sequence[str] = (), *, where: str = "") -> M:
    """Validate ``data`` as ``model`` after applying ``key=value`` overrides (``data`` is not changed).

    The one loader of emseg's YAML + ``--set`` + pydantic configs (runs, training, the SLURM launcher).
    Raises :class:`ConfigError` with one line per problem (unknown keys, missing keys, wrong values),
    prefixed with ``where`` (e.g. the file) when given.
    """
    data = copy.deepcopy(dict(data))
    for key, value in parse_overrides(overrides):
        _set(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msg = _pydantic_message(exc)
        raise ConfigError(f"{where}: {msg}" if where else msg) from None


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """The mapping in a YAML file; :class:`ConfigError` (naming ``what`` and the path) when the file is
    missing, is not YAML, or does not hold a mapping."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {os.fspath(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {os.fspath(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {os.fspath(path)!r} must hold a mapping of keys")
    return data


def from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Validate a run config mapping after applying ``key=value`` overrides (the caller's mapping is not changed)."""
    return validate(Config, data, overrides)


def load(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Load a YAML run config and apply ``key=value`` overrides."""
    return validate(Config, read_yaml(path), overrides)
