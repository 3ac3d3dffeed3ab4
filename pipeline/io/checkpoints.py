"""Model checkpoints for every emseg model: where they come from, how they are read, what must fit.

One module for all learned models (boundary U-Net, and the pattern of the FFN and SAM2 weights):

- **Locations.** A local path, a ``file://`` or ``http(s)://`` URL, a tensorstore key-value URL
  (``gs://``, ``s3://``...), or ``bundled`` for a file shipped in ``pipeline/models``. Remote files
  are downloaded once into a cache (``$EMSEG_CACHE`` or ``~/.cache/emseg``, one folder per model
  family), named by a hash of the URL, written atomically.
- **Safe reading.** A checkpoint is a plain dict of tensors, strings and numbers, read with
  ``torch.load(..., weights_only=True)``, which refuses pickled code::

      {"format": "emseg-unet", "version": 1, "model": {config as plain values},
       "state_dict": {name: tensor}, "meta": {str: str | number | bool | None}, ...}

- **Fit.** :func:`check_state` compares a state dict with a network's and names every missing,
  unexpected and wrongly shaped tensor, so that a checkpoint of another architecture fails with a
  message rather than a stack trace.

Nothing here imports torch at import time.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emseg.pipeline.errors import CheckpointError

#: folder of the models that ship with emseg
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models"
_MAX_LISTED = 8
#: URL schemes a checkpoint can be fetched from (http(s) directly, the others through tensorstore)
REMOTE_SCHEMES = ("http", "https", "gs", "s3")


def cache_dir(family: str) -> Path:
    """The download cache of one model family: ``$EMSEG_CACHE/<family>`` (default ``~/.cache/emseg``)."""
    return Path(os.environ.get("EMSEG_CACHE", Path.home() / ".cache" / "emseg")) / family


def resolve(location: str | os.PathLike[str], *, bundled: str, family: str, what: str) -> Path:
    """A local file for a checkpoint location, downloading a URL once into the cache.

    Parameters
    ----------
    location
        A path, ``file://``, ``http(s)://``, ``gs://``, ``s3://`` URL, or ``"bundled"``.
    bundled
        File name under ``pipeline/models`` that ``"bundled"`` stands for.
    family
        Cache sub-folder, e.g. ``"unet"``.
    what
        How messages name the model, e.g. ``"U-Net checkpoint"``.

    Raises
    ------
    CheckpointError
        The bundled file is missing from the installation, or a URL cannot be fetched.
    """
    location = os.fspath(location)
    if location == "bundled":
        path = BUNDLED_DIR / bundled
        if not path.exists():
            raise CheckpointError(
                f"the bundled {what} {path} is missing from this installation; reinstall emseg or give "
                "a path or URL"
            )
        return path
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else os.path.expanduser(location))
    if parsed.scheme not in REMOTE_SCHEMES or not Path(parsed.path).name:
        raise CheckpointError(
            f"cannot read the {what} {location!r}; give a local path or a gs://, s3://, http:// or https:// "
            "URL of the file"
        )
    target = cache_dir(family) / (
        hashlib.sha256(location.encode()).hexdigest()[:16] + "-" + (Path(parsed.path).name or "checkpoint")
    )
    if target.exists():
        return target
    data = download(location, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def download(location: str, what: str = "checkpoint") -> bytes:
    """The bytes at an ``http(s)://`` URL or a tensorstore kvstore URL (``gs://``, ``s3://``, ...)."""
    parsed = urllib.parse.urlparse(location)
    try:
        if parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(location, timeout=60) as response:
                return bytes(response.read())
        import tensorstore as ts

        directory, _, key = location.rpartition("/")
        store = ts.KvStore.open(directory + "/").result()
        result = store.read(key).result()
        if result.state != "value":
            raise FileNotFoundError(location)
        return bytes(result.value)
    except Exception as exc:
        if isinstance(exc, FileNotFoundError) or getattr(exc, "code", None) == 404:
            raise CheckpointError(f"the {what} {location} does not exist; check the URL") from None
        raise CheckpointError(
            f"could not fetch the {what} {location} ({type(exc).__name__}: {str(exc)[:200]}); check the URL "
            "and credentials, or copy the file locally and give its path"
        ) from None


def plain_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """``meta`` with exact builtin str / int / float / bool / None values, as weights_only loading needs.

    (A str subclass such as ``torch.__version__`` would be pickled as its class and then refused.)

    Raises
    ------
    CheckpointError
        A value is of another type.
    """
    plain: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        if value is None:
            plain[str(key)] = None
            continue
        for kind in (bool, int, float, str):
            if isinstance(value, kind):
                plain[str(key)] = kind(value)
                break
        else:
            if hasattr(value, "item"):  # numpy / torch scalars
                plain[str(key)] = value.item()
                continue
            raise CheckpointError(
                f"checkpoint meta {key!r} is a {type(value).__name__}; store a str or a number so that the "
                "file loads with weights_only=True"
            )
    return plain


def save(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """``torch.save`` a checkpoint dict atomically (a temp file renamed into place)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(dict(payload), tmp)
    os.replace(tmp, path)


def load(
    location: str | os.PathLike[str], *, fmt: str, version: int, bundled: str, family: str, what: str, hint: str
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its ``format`` and ``version``.

    Parameters
    ----------
    fmt, version
        The ``format`` string and ``version`` the file must carry.
    bundled, family, what
        As for :func:`resolve`.
    hint
        How to make a good checkpoint, appended to messages (e.g. "train one with `emseg train`").

    Returns
    -------
    dict
        The payload with ``"path"`` (the local file) added.

    Raises
    ------
    CheckpointError
        Missing file, unsafe or damaged content, another format, another version.
    """
    import torch

    path = resolve(location, bundled=bundled, family=family, what=what)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no {what} at {path}; give a path, a URL or 'bundled', or {hint}") from None
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(
            f"{path} does not load with weights_only=True ({type(exc).__name__}: {str(exc)[:200]}); {hint}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not an {what} (format {found!r}, expected {fmt!r}); {hint}")
    if payload.get("version") != version:
        raise CheckpointError(
            f"{path} is {what} version {payload.get('version')}, this emseg reads version {version}; {hint}"
        )
    payload["path"] = str(path)
    return payload


def check_state(expected: Mapping[str, Any], state: Mapping[str, Any], where: str) -> None:
    """Refuse a state dict that does not fit a network's, naming every difference.

    Parameters
    ----------
    expected
        The network's ``state_dict()``.
    state
        The checkpoint's tensors.
    where
        The checkpoint's name for the message.

    Raises
    ------
    CheckpointError
        Lists missing keys, unexpected keys and ``name: checkpoint shape vs model shape``.

    >>> import numpy as np
    >>> check_state({"w": np.zeros((2, 3))}, {"w": np.zeros((2, 4)), "b": np.zeros(1)}, "ckpt")
    Traceback (most recent call last):
    ...
    emseg.pipeline.errors.CheckpointError: ckpt does not fit the model: unexpected ['b']; wrong shape ['w: (2, 4) in the checkpoint vs (2, 3) in the model']; build the model from the checkpoint's own config, or use a checkpoint of this architecture
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the checkpoint vs {tuple(expected[k].shape)} in the model"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
                parts.append(f"{name} {items[:_MAX_LISTED]}{more}")
        raise CheckpointError(
            f"{where} does not fit the model: {'; '.join(parts)}; build the model from the checkpoint's own "
            "config, or use a checkpoint of this architecture"
        )
