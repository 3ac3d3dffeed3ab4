"""OME-NGFF (OME-Zarr) metadata: the axes, voxel size and offset of one array of a multiscale image.

An NGFF image is a zarr group whose attributes hold ``multiscales``; each entry lists ``axes`` (names,
types, units: in the order of the arrays' dimensions) and ``datasets``, one per scale, each an array
``path`` inside the group with ``coordinateTransformations``: a ``scale`` and an optional
``translation``, both per axis in the axis' unit. An optional multiscale-level list of transformations
applies after the dataset's. Versions 0.4 and earlier keep ``multiscales`` in the group's ``.zattrs``
(zarr v2); 0.5 keeps it under ``ome`` in the group's ``zarr.json`` attributes (zarr v3). Version 0.3
has axes as plain names and no transformations; earlier versions have neither (axes ``t, c, z, y, x``).

Specification: https://ngff.openmicroscopy.org/ (0.4 and 0.5). The functions here are pure except
:func:`find`, which reads the groups above an array through tensorstore.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: nanometres per unit, for the NGFF (UDUNITS-2) space units and the usual abbreviations
UNITS_NM: dict[str, float] = {
    "angstrom": 0.1, "Å": 0.1, "A": 0.1,
    "picometer": 1e-3, "pm": 1e-3,
    "nanometer": 1.0, "nm": 1.0,
    "micrometer": 1e3, "micron": 1e3, "um": 1e3, "µm": 1e3, "μm": 1e3,
    "millimeter": 1e6, "mm": 1e6,
    "centimeter": 1e7, "cm": 1e7,
    "meter": 1e9, "m": 1e9,
}


def unit_nm(unit: Any) -> float | None:
    """Nanometres per ``unit`` (``"micrometer"`` -> 1000.0), or None for a unit that is not a length.

    >>> unit_nm("micrometer"), unit_nm("nm"), unit_nm("second"), unit_nm(None)
    (1000.0, 1.0, None, None)
    """
    if not isinstance(unit, str):
        return None
    return UNITS_NM.get(unit.strip()) or UNITS_NM.get(unit.strip().lower())


@dataclass(frozen=True)
class ArrayTransform:
    """Where one array of an NGFF multiscale image lies: per array dimension, in the array's order.

    ``scale`` and ``translation`` are in each axis' unit; ``unit_nm`` is nanometres per unit (None
    where the axis has no length unit, e.g. channel or time, or where the unit is not given).
    """

    version: str
    group: str  # the group's path in its store
    path: str  # the array's path inside the group
    axes: tuple[str, ...]
    scale: tuple[float, ...] | None
    translation: tuple[float, ...] | None
    unit_nm: tuple[float | None, ...]

    def voxel_size_nm(self) -> tuple[float | None, ...] | None:
        """Nanometres per voxel along each dimension (None on axes without a length unit)."""
        if self.scale is None:
            return None
        return tuple(None if u is None else s * u for s, u in zip(self.scale, self.unit_nm))

    def offset_nm(self) -> tuple[float | None, ...] | None:
        if self.translation is None:
            return None
        return tuple(None if u is None else t * u for t, u in zip(self.translation, self.unit_nm))


def multiscales(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``multiscales`` list of a group's attributes (NGFF <= 0.4 or 0.5's ``ome``), or []."""
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and isinstance(ome.get("multiscales"), list):
        found = ome["multiscales"]
        version = str(ome.get("version", "0.5"))
        return [dict(m, version=m.get("version", version)) for m in found if isinstance(m, Mapping)]
    found = attrs.get("multiscales")
    if isinstance(found, list):
        return [dict(m) for m in found if isinstance(m, Mapping)]
    return []


def _axes(multiscale: Mapping[str, Any], rank: int) -> tuple[tuple[str, ...], tuple[float | None, ...]]:
    axes = multiscale.get("axes")
    if not isinstance(axes, list):
        names = ("t", "c", "z", "y", "x")[-rank:] if rank <= 5 else tuple(f"d{i}" for i in range(rank))
        return tuple(names), tuple([None] * len(names))
    names, units = [], []
    for axis in axes:
        if isinstance(axis, Mapping):
            names.append(str(axis.get("name", "")).lower())
            units.append(unit_nm(axis.get("unit")) if axis.get("type", "space") == "space" else None)
        else:
            names.append(str(axis).lower())
            units.append(None)
    return tuple(names), tuple(units)


def _compose(transforms: Any, rank: int, scale: list[float] | None, translation: list[float] | None
             ) -> tuple[list[float] | None, list[float] | None]:
    """Apply a list of NGFF transformations after ``(scale, translation)``."""
    if not isinstance(transforms, list):
        return scale, translation
    for t in transforms:
        if not isinstance(t, Mapping):
            continue
        if t.get("type") == "scale" and isinstance(t.get("scale"), list) and len(t["scale"]) == rank:
            s = [float(v) for v in t["scale"]]
            scale = [a * b for a, b in zip(scale or [1.0] * rank, s)]
            translation = None if translation is None else [a * b for a, b in zip(translation, s)]
        elif t.get("type") == "translation" and isinstance(t.get("translation"), list) and len(t["translation"]) == rank:
            d = [float(v) for v in t["translation"]]
            translation = [a + b for a, b in zip(translation or [0.0] * rank, d)]
    return scale, translation


def array_transform(attrs: Mapping[str, Any], path: str, *, group: str = "", rank: int | None = None
                    ) -> ArrayTransform | None:
    """The NGFF transform of the array at ``path`` (relative to the group), or None if it is not listed.

    >>> attrs = {"multiscales": [{"version": "0.4",
    ...     "axes": [{"name": "z", "type": "space", "unit": "nanometer"},
    ...              {"name": "y", "type": "space", "unit": "nanometer"},
    ...              {"name": "x", "type": "space", "unit": "micrometer"}],
    ...     "datasets": [{"path": "s0", "coordinateTransformations": [
    ...         {"type": "scale", "scale": [40, 8, 0.004]}, {"type": "translation", "translation": [80, 8, 0.04]}]}]}]}
    >>> t = array_transform(attrs, "s0")
    >>> t.axes, t.voxel_size_nm(), t.offset_nm()
    (('z', 'y', 'x'), (40.0, 8.0, 4.0), (80.0, 8.0, 40.0))
    """
    want = path.strip("/")
    for ms in multiscales(attrs):
        datasets = ms.get("datasets")
        if not isinstance(datasets, list):
            continue
        for ds in datasets:
            if not isinstance(ds, Mapping) or str(ds.get("path", "")).strip("/") != want:
                continue
            n = rank
            if n is None:
                axes = ms.get("axes")
                n = len(axes) if isinstance(axes, list) else 5
            names, units = _axes(ms, n)
            scale, translation = _compose(ds.get("coordinateTransformations"), len(names), None, None)
            scale, translation = _compose(ms.get("coordinateTransformations"), len(names), scale, translation)
            return ArrayTransform(
                version=str(ms.get("version", "")),
                group=group,
                path=want,
                axes=names,
                scale=None if scale is None else tuple(scale),
                translation=None if translation is None else tuple(translation),
                unit_nm=units,
            )
    return None


def read_group_attributes(kvstore: Any, path: str) -> dict[str, Any]:
    """The attributes of the zarr group at ``path`` of an open tensorstore ``kvstore`` (v2 or v3), or {}."""
    base = path if path.endswith("/") or not path else path + "/"
    for name, pick in ((".zattrs", lambda d: d), ("zarr.json", lambda d: d.get("attributes", {}))):
        try:
            got = kvstore.read(base + name).result()
        except Exception:  # noqa: BLE001 - a group without attributes, or an unreadable one, has none
            continue
        if got.state != "value":
            continue
        try:
            data = json.loads(got.value)
        except ValueError:
            continue
        attrs = pick(data) if isinstance(data, dict) else None
        if isinstance(attrs, dict) and multiscales(attrs):
            return attrs
    return {}


def find(kvstore_spec: Any, *, rank: int | None = None, levels: int = 3, context: Any = None) -> ArrayTransform | None:
    """The NGFF transform of the array stored at ``kvstore_spec``, from the nearest group above it.

    Looks at the array's parent, grandparent, ... (up to ``levels``) for a multiscale whose datasets
    list the array's path relative to that group. Returns None when no group lists it.
    """
    import tensorstore as ts

    try:
        kv = ts.KvStore.open(kvstore_spec, context=context).result() if context is not None else \
            ts.KvStore.open(kvstore_spec).result()
    except Exception:  # noqa: BLE001 - no readable store, no NGFF metadata
        return None
    full = kv.path.rstrip("/")
    parts = full.split("/")
    root = kv.copy()
    root.path = ""
    for up in range(1, min(levels, len(parts) - 1) + 1):
        group = "/".join(parts[:-up])
        rel = "/".join(parts[-up:])
        attrs = read_group_attributes(root, group)
        if attrs:
            found = array_transform(attrs, rel, group=group, rank=rank)
            if found is not None:
                return found
    return None


def names_in(values: Sequence[Any]) -> bool:
    """True when ``values`` is a list of axis names (strings)."""
    return isinstance(values, list | tuple) and all(isinstance(v, str) for v in values)


def scale_choices(group_dir: str) -> str | None:
    """For a local directory that is an NGFF multiscale group (not an array), a sentence naming its
    scales as arrays to point at, with their voxel sizes; None for anything else.

    emseg segments one scale: the input URL names the array (``.../image.ome.zarr/1``), and its voxel
    size and offset then come from the group (:func:`find`). This is what a refusal of the group says.
    """
    import os

    attrs: dict[str, Any] = {}
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        path = os.path.join(group_dir, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                return None
            if key is not None:
                if data.get("node_type") != "group":
                    return None
                data = data.get(key) or {}
            attrs.update(data)
    found = multiscales(attrs)
    if not found:
        return None
    parts = []
    for ds in found[0].get("datasets") or []:
        p = str(ds.get("path", "")).strip("/")
        t = array_transform(attrs, p)
        size = t.voxel_size_nm() if t is not None else None
        text = " x ".join(f"{v:g}" for v in size if v is not None) + " nm" if size else "voxel size unknown"
        parts.append(f"{group_dir.rstrip('/')}/{p} ({text})")
    if not parts:
        return None
    return "it is an OME-Zarr multiscale group: choose a scale and point at its array, one of " + ", ".join(parts)
