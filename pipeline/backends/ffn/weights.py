"""FFN checkpoints: one file holding the model config and its state dict, safe to load.

A checkpoint is a plain dict of tensors, strings and numbers, so that ``torch.load(...,
weights_only=True)`` reads it without unpickling code::

    {"format": "emseg-ffn", "version": 1,
     "model": ModelConfig as a dict, "state_dict": {name: tensor}, "meta": {str: number | str}}

Locations are a local path, ``file://`` or ``http(s)://`` URL (downloaded once into a cache), a
tensorstore kvstore URL (``gs://``, ``s3://``...), or ``bundled`` for the model shipped in
``pipeline/models``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emseg.pipeline.errors import CheckpointError
from emseg.pipeline.backends.ffn.config import ModelConfig

FORMAT = "emseg-ffn"
VERSION = 1
#: the name ``checkpoint: bundled`` stands for
BUNDLED_NAME = "ffn_fib25.pt"


def bundled_path() -> Path:
    """The model trained on fib25_ts2 that ships with emseg (``pipeline/models/ffn_fib25.pt``)."""
    return Path(__file__).resolve().parents[2] / "models" / BUNDLED_NAME


def save_checkpoint(path: str | os.PathLike[str], net: Any, meta: dict[str, Any] | None = None) -> None:
    """Write ``net`` (an :class:`emseg.pipeline.backends.ffn.model.FFN`) with its config, atomically.

    Parameters
    ----------
    path
        Destination file.
    net
        The network; its weights are stored as fp32 on the CPU.
    meta
        Extra facts to keep (steps, losses, data); values must be str, int, float, bool or None.
    """
    import torch

    payload = _payload(net, meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _payload(net: Any, meta: dict[str, Any] | None) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        # exact builtin types only: a str subclass (torch.__version__ is one) would be pickled as
        # its class and refused by weights_only=True
        for kind in (bool, int, float, str):
            if isinstance(value, kind):
                plain[str(key)] = kind(value)
                break
        else:
            if value is not None:
                raise CheckpointError(
                    f"checkpoint meta {key!r} is a {type(value).__name__}; store a str or a number so "
                    "that the file loads with weights_only=True"
                )
            plain[str(key)] = None
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": net.config.model_dump(mode="json"),
        "state_dict": {k: v.detach().float().cpu() for k, v in net.state_dict().items()},
        "meta": plain,
    }
    return payload


def load_checkpoint(location: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its layout.

    Returns
    -------
    dict
        ``{"model": ModelConfig, "state_dict": dict, "meta": dict, "path": str}``.

    Raises
    ------
    CheckpointError
        The file is missing, not an emseg FFN checkpoint, or needs unsafe unpickling.
    """
    import torch

    path = fetch(str(location))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"no FFN checkpoint at {path}; set backend.checkpoint to a path or URL, or train one "
            "with `emseg train-ffn CONFIG`"
        ) from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(
            f"{path} does not load with weights_only=True ({type(exc).__name__}: {str(exc)[:200]}); "
            "use a checkpoint written by `emseg train-ffn` or emseg.pipeline.backends.ffn.weights.save_checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an emseg FFN checkpoint (no format={FORMAT!r} key); a bare state_dict "
            "lacks the model config: re-save it with emseg.pipeline.backends.ffn.weights.save_checkpoint"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is FFN checkpoint version {payload.get('version')}, this emseg reads version "
            f"{VERSION}; upgrade emseg or re-save the checkpoint"
        )
    try:
        config = ModelConfig.model_validate(payload["model"])
    except Exception as exc:
        raise CheckpointError(f"{path}: its model config is invalid ({exc}); re-train or re-save") from None
    return {"model": config, "state_dict": payload["state_dict"], "meta": payload.get("meta", {}), "path": str(path)}


def load_state(net: Any, checkpoint: dict[str, Any]) -> None:
    """Load a checkpoint's weights into ``net``, refusing any mismatch with a precise message.

    Raises
    ------
    CheckpointError
        Depth or width differ, or tensors are missing, unexpected or of the wrong shape.
    """
    theirs: ModelConfig = checkpoint["model"]
    ours: ModelConfig = net.config
    arch = [f for f in ("depth", "width") if getattr(theirs, f) != getattr(ours, f)]
    if arch:
        detail = ", ".join(f"{f} {getattr(theirs, f)} vs {getattr(ours, f)}" for f in arch)
        raise CheckpointError(
            f"checkpoint {checkpoint.get('path', '')} does not fit the model ({detail}, checkpoint vs "
            "model); build the model from the checkpoint's config (emseg.pipeline.backends.ffn.weights.build_model)"
        )
    expected = net.state_dict()
    state = checkpoint["state_dict"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {checkpoint.get('path', '')} has tensors that do not fit its own config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {shapes[:3]}); "
            "the file is damaged or was edited: re-train or re-save it"
        )
    net.load_state_dict(state)


def build_model(checkpoint: dict[str, Any]) -> Any:
    """A new :class:`emseg.pipeline.backends.ffn.model.FFN` from a loaded checkpoint."""
    from emseg.pipeline.backends.ffn.model import FFN

    net = FFN(checkpoint["model"])
    load_state(net, checkpoint)
    return net


def fetch(location: str) -> Path:
    """A local path for a checkpoint location; URLs are downloaded once into the cache.

    The cache is ``$EMSEG_CACHE`` or ``~/.cache/emseg``, under ``ffn/`` (see :mod:`emseg.pipeline.io.checkpoints`,
    which resolves the locations of every emseg model).
    """
    from emseg.pipeline.io import checkpoints

    return checkpoints.resolve(location, bundled=BUNDLED_NAME, family="ffn", what="FFN checkpoint")
