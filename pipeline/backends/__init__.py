"""Segmentation backends, looked up by name.

The registry maps a config name to the module that implements it, so that a backend's heavy
dependencies (torch, sam2) are imported only when that backend is used.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from emseg.pipeline.errors import ConfigError, DtypeError

_MODULES: dict[str, str] = {
    "threshold-cc": "emseg.pipeline.backends.threshold_cc",
    "affinities": "emseg.pipeline.backends.affinities",
    "watershed": "emseg.pipeline.backends.watershed",
    "sam2": "emseg.pipeline.backends.sam2.backend",
    "ffn": "emseg.pipeline.backends.ffn.backend",
    "noop": "emseg.pipeline.backends.noop",
}


def names() -> list[str]:
    return sorted(_MODULES)


def module(name: str) -> ModuleType:
    """The module implementing backend ``name``; a clear error for an unknown name."""
    try:
        path = _MODULES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}; choose one of {', '.join(names())} (config key backend.name)"
        ) from None
    return importlib.import_module(path)


def validate_params(name: str, params: dict[str, Any]) -> Any:
    """Validate a backend's config keys with its own ``Params`` model."""
    return module(name).Params.model_validate(params)


def create(name: str, params: Any) -> Any:
    """Build backend ``name`` from validated params (loads no model yet)."""
    return module(name).Backend(params)


def is_boundary(name: str) -> bool:
    """Whether backend ``name`` predicts affinities (stitched through fragments and scored edges)."""
    return getattr(module(name).Backend, "kind", "instance") == "boundary"


def runs_model(name: str, params: Any) -> bool:
    """Whether backend ``name`` with validated ``params`` runs a learned model on each block: SAM2, a
    flood-filling network, or a boundary backend's forest or U-Net (not stored or label affinities,
    nor the classical backends). ``cluster.model_resources`` routes those tasks."""
    if name in ("sam2", "ffn"):
        return True
    return is_boundary(name) and params.model.kind in ("forest", "unet")


def check_input_dtype(name: str, dtype: np.dtype | str) -> None:
    """Refuse an input dtype that the backend cannot take, before any work starts."""
    accepted = module(name).Backend.input_dtypes
    if np.dtype(dtype).name not in accepted:
        raise DtypeError(
            f"backend {name!r} takes {' or '.join(accepted)} images, but the input is "
            f"{np.dtype(dtype).name}; convert the volume or choose another backend"
        )


def preflight(name: str, params: Any) -> None:
    """Run the backend's own checks that need no worker (e.g. that a local checkpoint exists), if it has any."""
    check = getattr(module(name).Backend, "preflight", None)
    if check is not None:
        check(params)


def float_range(name: str) -> tuple[float, float] | None:
    """The float intensities backend ``name`` takes (default 0..1; None: any values)."""
    return getattr(module(name).Backend, "float_range", (0.0, 1.0))


def with_voxel_size(params: Any, voxel_size_zyx: tuple[float, float, float]) -> Any:
    """``params`` with ``voxel_size_zyx`` filled in, when the backend has that key and the config left it unset.

    A backend that seeds with another one (``seed_backend`` + ``seed_params``, e.g. sam2 seeded by
    watershed) has the seed backend's ``voxel_size_zyx`` filled in the same way.
    """
    size = tuple(float(v) for v in voxel_size_zyx)
    update: dict[str, Any] = {}
    if "voxel_size_zyx" in type(params).model_fields and getattr(params, "voxel_size_zyx") is None:
        update["voxel_size_zyx"] = size
    seed_name, seed_params = getattr(params, "seed_backend", None), getattr(params, "seed_params", None)
    if isinstance(seed_name, str) and isinstance(seed_params, dict) and seed_name in _MODULES:
        fields = module(seed_name).Params.model_fields
        if "voxel_size_zyx" in fields and seed_params.get("voxel_size_zyx") is None:
            update["seed_params"] = {**seed_params, "voxel_size_zyx": list(size)}
    return params.model_copy(update=update) if update else params
