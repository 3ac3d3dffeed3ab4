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
    """A Neuroglancer data-source URL for a volume URL, or None when Neuroglancer cannot read it.

    >>> layer_source("precomputed://gs://bucket/image")
    'precomputed://gs://bucket/image'
    >>> layer_source("zarr://file:///data/x.zarr/raw") is None   # browsers cannot read local files
    True
    """
    if not isinstance(url, str):
        return None
    parsed = urls.parse(url) if "://" in url else None
    if parsed is None:
        return None
    fmt = {"zarr": "zarr2", "zarr2": "zarr2"}.get(parsed.format, parsed.format)
    if parsed.store.startswith(("file://", "memory://")):
        return None
    return f"{fmt}://{parsed.store}"


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
