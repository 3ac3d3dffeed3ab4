"""Segmentation backends, looked up by name.

The registry maps a config name to the module that implements it, so that a backend's heavy
dependencies (torch, sam2) are imported only when that backend is used.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, DtypeError

_MODULES: dict[str, str] = {
    "threshold-cc": "pipeline.backends.threshold_cc",
    "affinities": "pipeline.backends.affinities",
    "watershed": "pipeline.backends.watershed",
    "sam2": "pipeline.backends.sam2",
    "ffn": "pipeline.backends.ffn",
    "noop": "pipeline.backends.noop",
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


def check_input_dtype(name: str, dtype: np.dtype | str) -> None:
    """Refuse an input dtype that the backend cannot take, before any work starts."""
    accepted = module(name).Backend.input_dtypes
    if np.dtype(dtype).name not in accepted:
        raise DtypeError(
            f"backend {name!r} takes {' or '.join(accepted)} images, but the input is "
            f"{np.dtype(dtype).name}; convert the volume or choose another backend"
        )
