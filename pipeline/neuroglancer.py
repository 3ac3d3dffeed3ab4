"""Neuroglancer viewer state and link for an input image and a segmentation."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import urls

#: the public Neuroglancer client; any deployment takes the same state in its URL fragment
VIEWER = "https://neuroglancer-demo.appspot.com/"


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


def is_local(source: str | None) -> bool:
    """True for sources a browser cannot fetch by itself (local files): serve them with ``emseg view``."""
    return source is not None and ("://file://" in source or "://memory://" in source)


def state(
    *,
    image: str | None,
    segmentation: str | None,
    voxel_size_nm: Sequence[float],
    position_zyx: Sequence[float],
    extra_layers: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A Neuroglancer state (JSON-able) with an image and a segmentation layer, centred on a voxel."""
    vz, vy, vx = voxel_size_nm
    layers: list[dict[str, Any]] = []
    if image:
        layers.append({"type": "image", "source": image, "name": "image"})
    if segmentation:
        layers.append({"type": "segmentation", "source": segmentation, "name": "segmentation"})
    layers.extend(extra_layers)
    return {
        "dimensions": {"x": [vx * 1e-9, "m"], "y": [vy * 1e-9, "m"], "z": [vz * 1e-9, "m"]},
        "position": [float(position_zyx[2]), float(position_zyx[1]), float(position_zyx[0])],
        "crossSectionScale": 1,
        "projectionScale": 1024,
        "layers": layers,
        "layout": "4panel",
    }


def link(viewer_state: Mapping[str, Any], viewer: str = VIEWER) -> str:
    """The viewer URL that opens ``viewer_state``."""
    text = json.dumps(viewer_state, separators=(",", ":"))
    return viewer + "#!" + urllib.parse.quote(text, safe="")
