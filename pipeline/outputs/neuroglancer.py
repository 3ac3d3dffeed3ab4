"""The Neuroglancer viewer state of a run: built here, and only here.

``segment`` stores it in ``run.json``, ``emseg link`` prints it and ``emseg view`` serves it; all three
call :func:`run_state`. The state has up to three layers:

- ``image``: the run's input (or another image). Precomputed volumes carry their voxel size and offset,
  which Neuroglancer reads itself. Zarr (v2, v3) and n5 arrays do not say so in a form Neuroglancer
  reads, so their source gets a coordinate transform: ``inputDimensions`` names the array's own axes as
  Neuroglancer names them (``_ARRAY_DIMENSIONS`` or ``d0, d1, ...`` for zarr v2, ``dimension_names`` or
  ``dim_0, ...`` for zarr v3, n5 ``axes`` or ``x, y, z``) with the voxel size emseg read from the
  metadata, ``outputDimensions`` maps each to the z, y or x axis emseg segmented it as, and the matrix
  adds the voxel offset. Without ``inputDimensions`` Neuroglancer takes the array's axes as unitless and
  draws one flat chunk of the image.
- ``segmentation``: the output, precomputed (voxel size and offset in its ``info``). Every segment is
  coloured in the 2D panels (``notSelectedAlpha``); the largest are selected, so their meshes load in
  the 3D panel.
- ``seam audit``: point annotations of the stitching edges whose score (IoU, or a boundary backend's
  mean affinity) fell near the merge threshold (stage 8); the layer's name says which and how near.

The state's global axes are x, y, z in metres at the input's voxel size; ``position`` is a voxel in those
units (offset included).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from emseg.pipeline.io import urls

#: the public Neuroglancer client; any deployment takes the same state in its URL fragment. It can read
#: only what a browser can fetch by itself (gs://, s3://, http(s)://), never local files.
VIEWER = "https://neuroglancer-demo.appspot.com/"

#: segments selected in a new view: their meshes load in the 3D panel
SELECTED = 20

#: opacity of segments in the 2D panels, selected or not: all segments are coloured there
SEGMENT_ALPHA = 0.5

#: Neuroglancer's default names for n5 axes without an ``axes`` attribute
_N5_DEFAULT_AXES = ("x", "y", "z", "t", "c")


def layer_source(url: str | Mapping[str, Any]) -> str | None:
    """The Neuroglancer data-source URL of a volume URL (absolute, format named), or None for a spec.

    >>> layer_source("precomputed://gs://bucket/image")
    'precomputed://gs://bucket/image'
    >>> layer_source("zarr:///data/x.zarr/raw")
    'zarr2://file:///data/x.zarr/raw'
    """
    if not isinstance(url, str):
        return None
    parsed = urls.parse(url)
    fmt = {"zarr": "zarr2", "zarr2": "zarr2"}.get(parsed.format, parsed.format)
    return f"{fmt}://{parsed.store}"


def source_url(source: str | Mapping[str, Any] | None) -> str | None:
    """The URL of a layer's source, whether it is a string or a ``{"url": ..., "transform": ...}``."""
    if isinstance(source, Mapping):
        return source.get("url")
    return source


def is_local(source: str | Mapping[str, Any] | None) -> bool:
    """True for sources a browser cannot fetch by itself (local files): serve them with ``emseg view``."""
    url = source_url(source)
    return url is not None and ("://file://" in url or "://memory://" in url)


def native_axes(url: str) -> tuple[list[str], list[str]] | None:
    """How Neuroglancer names a zarr/n5 array's axes, and which emseg axis each one is.

    Returns ``(neuroglancer_names, emseg_axes)``, one entry per array dimension in storage order;
    ``emseg_axes`` holds ``"z"``, ``"y"`` or ``"x"`` for the three spatial axes and the Neuroglancer
    name for singleton axes (which emseg drops). The emseg side is
    :func:`emseg.pipeline.io.volume.axis_metadata`, the rule :func:`emseg.pipeline.io.volume.open_volume` follows
    (docs/input.md). Returns None for precomputed volumes (Neuroglancer reads their geometry itself).

    Raises :class:`~emseg.pipeline.errors.VolumeNotFoundError` when the volume cannot be opened.
    """
    import tensorstore as ts

    from emseg.pipeline.io import volume
    from emseg.pipeline.errors import VolumeNotFoundError

    parsed = urls.parse(url)
    if parsed.format == "precomputed":
        return None
    spec = volume.spec_for(url)
    try:
        arr = ts.open(spec, read=True).result()
    except ValueError as exc:
        raise VolumeNotFoundError(f"cannot open {url}: {volume.ts_message(exc)}") from None
    rank = arr.rank
    meta = _metadata_json(parsed.store, {"zarr": ".zattrs", "zarr2": ".zattrs", "zarr3": "zarr.json",
                                         "n5": "attributes.json"}[parsed.format])
    if parsed.format in ("zarr", "zarr2"):
        given = meta.get("_ARRAY_DIMENSIONS")
        names = _named(given, rank, "d")
    elif parsed.format == "zarr3":
        names = _named(meta.get("dimension_names"), rank, "dim_")
    else:
        given = meta.get("axes")
        if isinstance(given, list) and len(given) == rank and all(isinstance(a, str) for a in given):
            names = list(given)
        else:
            names = list(_N5_DEFAULT_AXES[:rank]) + [f"d{i + 1}" for i in range(len(_N5_DEFAULT_AXES), rank)]
    # The emseg side is what open_volume reads (volume.axis_metadata: labels, NGFF axes, xarray /
    # funlib attributes, else z, y, x for zarr and x, y, z for n5); axes it drops keep Neuroglancer's name.
    own = volume.axis_metadata(arr, spec, url).names
    emseg = [mine if mine in ("x", "y", "z") else theirs for mine, theirs in zip(own, names)]
    return names, emseg


def _named(given: Any, rank: int, prefix: str) -> list[str]:
    """Neuroglancer's rule for zarr names: the given name, or ``prefix + index`` where it is missing."""
    if not isinstance(given, list) or len(given) != rank:
        given = [None] * rank
    out: list[str] = []
    for i, name in enumerate(given):
        if not isinstance(name, str) or not name or name in out:
            j = i
            while f"{prefix}{j}" in out:
                j += 1
            name = f"{prefix}{j}"
        out.append(name)
    return out


def _metadata_json(store: str, name: str) -> dict[str, Any]:
    try:
        got = urls.open_kvstore(store).read(name).result()
    except Exception:  # noqa: BLE001 - optional metadata: a store without it has default names
        return {}
    if got.state != "value":
        return {}
    try:
        meta = json.loads(got.value)
    except ValueError:
        return {}
    if name == "zarr.json" and isinstance(meta, dict):
        return meta  # dimension_names is a top-level key
    return meta if isinstance(meta, dict) else {}


def image_source(
    url: str,
    voxel_size_nm: Sequence[float],
    offset_zyx: Sequence[int] = (0, 0, 0),
    axes: tuple[list[str], list[str]] | None = None,
) -> str | dict[str, Any]:
    """The Neuroglancer source of an image volume, with the coordinate transform zarr and n5 need.

    ``voxel_size_nm`` and ``offset_zyx`` (z, y, x; nanometres and voxels) are what emseg read from the
    volume's metadata; ``axes`` is :func:`native_axes` of the volume (read from it when None).

    >>> src = image_source("zarr:///d/em.zarr/raw", (40, 4, 4), (2, 0, 0), axes=(["d0", "d1", "d2"], ["z", "y", "x"]))
    >>> src["transform"]["inputDimensions"]["d0"], src["transform"]["outputDimensions"]["z"]
    ([4e-08, 'm'], [4e-08, 'm'])
    >>> src["transform"]["matrix"][0]
    [1, 0, 0, 2]
    """
    source = str(layer_source(url))
    if axes is None:
        axes = native_axes(url)
    if axes is None:
        return source
    names, emseg = axes
    size = dict(zip("zyx", (float(v) for v in voxel_size_nm)))
    offset = dict(zip("zyx", (int(v) for v in offset_zyx)))
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    matrix = []
    for i, (name, axis) in enumerate(zip(names, emseg)):
        scale: list[Any] = [size[axis] * 1e-9, "m"] if axis in size else [1, ""]
        inputs[name] = scale
        outputs[axis] = list(scale)
        row = [1 if j == i else 0 for j in range(len(names))]
        matrix.append(row + [offset.get(axis, 0)])
    return {"url": source, "transform": {"inputDimensions": inputs, "outputDimensions": outputs, "matrix": matrix}}


def state(
    *,
    image: str | Mapping[str, Any] | None,
    segmentation: str | None,
    voxel_size_nm: Sequence[float],
    roi_start_zyx: Sequence[int],
    roi_stop_zyx: Sequence[int],
    offset_zyx: Sequence[int] = (0, 0, 0),
    selected: Sequence[int] = (),
    seam_audit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Neuroglancer state (JSON-able): image, segmentation and seam-audit layers, centred on the ROI.

    ``image`` is a source from :func:`image_source`; ``roi_*_zyx`` are zero-origin voxels of the input
    and ``offset_zyx`` its voxel offset; ``selected`` are segment ids whose meshes show in 3D;
    ``seam_audit`` is run.json's ``postprocess.seam_audit`` (``source``, ``points``, ``threshold``,
    ``margin``, ``score``: ``IoU`` for instance backends, ``mean affinity`` for boundary backends).
    """
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    centre = [o + s + (e - s) / 2 for o, s, e in zip(offset_zyx, roi_start_zyx, roi_stop_zyx)]
    # the region's largest side in units of the finest voxel: the scales are in global (voxel) units
    finest = min(vz, vy, vx)
    sides = [(e - s) * v / finest for s, e, v in zip(roi_start_zyx, roi_stop_zyx, (vz, vy, vx))]
    extent = max(sides)  # the 3D view shows the whole region
    in_plane = max(sides[1:])  # the 2D panels fill with the x-y section (z is often far longer in nm)
    layers: list[dict[str, Any]] = []
    if image:
        layers.append({"type": "image", "source": image, "name": "image"})
    if segmentation:
        seg: dict[str, Any] = {"type": "segmentation", "source": segmentation, "name": "segmentation",
                               "selectedAlpha": SEGMENT_ALPHA, "notSelectedAlpha": SEGMENT_ALPHA}
        if selected:
            seg["segments"] = [str(int(i)) for i in selected]
        layers.append(seg)
    if segmentation and seam_audit and seam_audit.get("points", 0) > 0:
        thr, margin = float(seam_audit.get("threshold", 0.0)), float(seam_audit.get("margin", 0.0))
        score = seam_audit.get("score", "IoU")
        # boundary backends: the points carry mean affinities, and agglomeration.threshold is 1 - affinity
        where = (f"merging from {thr:.2f} = 1 - agglomeration.threshold {1 - thr:.2f}" if score == "mean affinity"
                 else f"merge threshold {thr:.2f}")
        layers.append({
            "type": "annotation",
            "source": seam_audit["source"],
            "name": f"seam audit: stitching edges with {score} {max(thr - margin, 0):.2f}-{thr + margin:.2f} ({where})",
            "annotationColor": "#ff9900",
            "linkedSegmentationLayer": {"segments": "segmentation"},
            "filterBySegmentation": [],
        })
    out: dict[str, Any] = {
        "dimensions": {"x": [vx * 1e-9, "m"], "y": [vy * 1e-9, "m"], "z": [vz * 1e-9, "m"]},
        "position": [float(centre[2]), float(centre[1]), float(centre[0])],
        "crossSectionScale": max(in_plane / 400, 0.05),
        "projectionScale": max(extent * 1.6, 16),
        "layers": layers,
        "layout": "4panel",
    }
    if segmentation:
        out["selectedLayer"] = {"layer": "segmentation", "visible": False}
    return out


def run_state(run: Mapping[str, Any], *, image: str | None = None) -> dict[str, Any]:
    """The state of a run from its ``run.json`` (``run``): its input (or its image pyramid, or
    ``image``) as the image, its segmentation, the :data:`SELECTED` largest segments and the seam-audit
    layer.

    The image source falls back to the one stored in ``run["neuroglancer"]`` when the input's metadata
    cannot be read now (a cloud input without credentials here); a tensorstore-spec input has no image.
    """
    inp = run["input"]
    voxel = [float(v) for v in inp["voxel_size_nm"]]
    offset = [int(v) for v in inp.get("offset_zyx", (0, 0, 0))]
    post = run.get("postprocess") or {}
    # ``image`` if given; else the image pyramid copied under the output (stage 5, precomputed, the
    # input's geometry), which shows better than a single-scale input; else the input itself
    url = image if image is not None else post.get("image") or run.get("config", {}).get("input")
    img: str | dict[str, Any] | None = None
    if isinstance(url, str):
        try:
            img = image_source(url, voxel, offset)
        except Exception:  # noqa: BLE001 - unreachable now: keep what the run stored
            stored = [layer for layer in (run.get("neuroglancer") or {}).get("layers", []) if layer.get("type") == "image"]
            img = stored[0]["source"] if stored and image is None else layer_source(url)
    roi = run["roi"]
    return state(
        image=img,
        segmentation=run.get("segmentation"),
        voxel_size_nm=voxel,
        roi_start_zyx=roi["start"],
        roi_stop_zyx=roi["stop"],
        offset_zyx=offset,
        selected=[int(i) for i in post.get("largest", [])[:SELECTED]],
        seam_audit=post.get("seam_audit"),
    )


def link(viewer_state: Mapping[str, Any], viewer: str = VIEWER) -> str:
    """The viewer URL that opens ``viewer_state``."""
    text = json.dumps(viewer_state, separators=(",", ":"))
    return viewer + "#!" + urllib.parse.quote(text, safe="")
