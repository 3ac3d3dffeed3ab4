"""Neuroglancer-style volume URLs to tensorstore specs.

A volume URL is ``FORMAT://STORE``, for example::

    precomputed://gs://neuroglancer-public-data/flyem_fib-25/image
    zarr://file:///data/em.zarr/raw          (zarr v2; ``zarr2://`` is the same)
    zarr3://s3://bucket/em.zarr/raw
    n5://https://example.org/em.n5/raw/s0

``STORE`` is a ``file://``, ``gs://``, ``s3://``, ``http(s)://`` or ``memory://`` URL, or a local
path (relative paths are taken from the current directory). A bare local path without a format is
recognised by its metadata file (``info``, ``.zarray``, ``zarr.json`` or ``attributes.json``).
A mapping instead of a string is taken as a complete tensorstore spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from emseg.pipeline.errors import UnsupportedURLError, VolumeNotFoundError

#: volume format prefix -> tensorstore driver
FORMATS: dict[str, str] = {
    "precomputed": "neuroglancer_precomputed",
    "zarr": "zarr",
    "zarr2": "zarr",
    "zarr3": "zarr3",
    "n5": "n5",
}
STORE_SCHEMES = ("file", "gs", "s3", "http", "https", "memory")

# Metadata file -> format, for bare local paths.
_MARKERS = (("info", "precomputed"), (".zarray", "zarr"), ("zarr.json", "zarr3"), ("attributes.json", "n5"))

#: tensorstore context used for every store: no fsync per file (atomic rename is kept), which
#: matters for the many small chunk writes of a run on local disk.
CONTEXT: dict[str, Any] = {"file_io_sync": False}


@dataclass(frozen=True)
class VolumeURL:
    """A parsed volume URL: the format and the key-value store URL it lives in."""

    format: str
    store: str

    @property
    def driver(self) -> str:
        return FORMATS[self.format]

    def __str__(self) -> str:
        return f"{self.format}://{self.store}"


def store_url(location: str) -> str:
    """A key-value store URL for ``location``: a URL as is, a local path as ``file://`` (absolute).

    >>> store_url("gs://bucket/x")
    'gs://bucket/x'
    >>> store_url("/data/x.zarr")
    'file:///data/x.zarr'
    """
    scheme, sep, _ = location.partition("://")
    if sep:
        if scheme not in STORE_SCHEMES:
            raise UnsupportedURLError(
                f"unknown storage scheme {scheme + '://'!r} in {location!r}; use one of "
                + ", ".join(s + "://" for s in STORE_SCHEMES)
                + " or a local path"
            )
        return location
    return "file://" + os.path.abspath(os.path.expanduser(location))


def local_path(store: str) -> str | None:
    """The local filesystem path of a ``file://`` store URL, else None."""
    return store[len("file://") :] if store.startswith("file://") else None


def join(store: str, *parts: str) -> str:
    """Append path components to a store URL.

    >>> join("file:///out/", "segmentation", "info")
    'file:///out/segmentation/info'
    """
    out = store.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def parse(url: str) -> VolumeURL:
    """Parse ``FORMAT://STORE`` or a bare local path into a :class:`VolumeURL`.

    >>> parse("zarr://file:///data/em.zarr/raw")
    VolumeURL(format='zarr', store='file:///data/em.zarr/raw')
    >>> parse("precomputed://gs://bucket/image").driver
    'neuroglancer_precomputed'
    """
    url = url.strip()
    head, sep, rest = url.partition("://")
    if sep and head in FORMATS:
        return VolumeURL(head, store_url(rest))
    if sep and head in STORE_SCHEMES:
        if head == "file":
            return VolumeURL(_detect(local_path(url) or ""), url)
        raise UnsupportedURLError(
            f"{url!r} does not say its format; write it as FORMAT://{url} with FORMAT one of "
            + ", ".join(sorted(FORMATS))
        )
    if sep:
        raise UnsupportedURLError(
            f"unknown URL scheme {head + '://'!r} in {url!r}; use one of "
            + ", ".join(f + "://" for f in sorted(FORMATS))
            + " followed by a store (file://, gs://, s3://, http(s)://) or a local path"
        )
    path = os.path.abspath(os.path.expanduser(url))
    return VolumeURL(_detect(path), "file://" + path)


def _detect(path: str) -> str:
    if not os.path.exists(path):
        raise VolumeNotFoundError(f"no volume at {path!r}: the path does not exist; check the input URL or path")
    from emseg.pipeline.outputs.ngff import scale_choices

    hint = scale_choices(path)
    if hint is not None:
        raise VolumeNotFoundError(f"{path!r} holds no single volume: {hint}")
    for marker, fmt in _MARKERS:
        if os.path.isfile(os.path.join(path, marker)):
            return fmt
    raise VolumeNotFoundError(
        f"{path!r} exists but holds no volume (no info, .zarray, zarr.json or attributes.json); "
        "for a zarr group, point at the array inside it, e.g. .../em.zarr/raw"
    )


#: environment variables naming an S3-compatible endpoint (MinIO, Ceph, a test server), first wins
S3_ENDPOINT_VARS = ("EMSEG_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def kvstore_spec(store: str) -> Any:
    """The tensorstore kvstore spec of a store URL, as a directory (trailing slash).

    Most URLs go to tensorstore as they are. ``s3://`` URLs become an ``s3`` spec that carries the
    endpoint from ``$EMSEG_S3_ENDPOINT`` (or ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``) when
    one is set; credentials always come from the environment / AWS config, never from emseg's files.

    >>> kvstore_spec("gs://bucket/x")
    'gs://bucket/x/'
    """
    store = store if store.endswith("/") else store + "/"
    if store.startswith("s3://"):
        endpoint = next((os.environ[v] for v in S3_ENDPOINT_VARS if os.environ.get(v)), None)
        if endpoint:
            bucket, _, path = store[len("s3://") :].partition("/")
            return {
                "driver": "s3",
                "bucket": bucket,
                "path": path,
                "endpoint": endpoint,
                "aws_region": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
            }
    return store


def open_kvstore(store: str) -> Any:
    """An open tensorstore KvStore rooted at ``store`` (a URL or local path)."""
    import tensorstore as ts

    return ts.KvStore.open(kvstore_spec(store_url(store)), context=ts.Context(CONTEXT)).result()


def source_store(source: str | dict[str, Any]) -> str | None:
    """The store URL that holds a volume source (URL, path or tensorstore spec), without checking
    that anything exists there; None when it cannot be told (a spec with a non-URL kvstore).

    For a zarr or n5 array this is the array's own directory; :func:`overlaps` compares it.

    >>> source_store("zarr://file:///data/em.zarr/raw")
    'file:///data/em.zarr/raw'
    >>> source_store({"driver": "zarr", "kvstore": {"driver": "file", "path": "/d/x.zarr/"}, "path": "raw"})
    'file:///d/x.zarr/raw'
    """
    if isinstance(source, dict):
        kv = source.get("kvstore")
        if isinstance(kv, dict) and kv.get("driver") == "file" and isinstance(kv.get("path"), str):
            base = "file://" + os.path.abspath(kv["path"])
        elif isinstance(kv, str):
            base = kv
        else:
            return None
        return join(base, source["path"]) if isinstance(source.get("path"), str) and source["path"] else base.rstrip("/")
    head, sep, rest = source.strip().partition("://")
    if sep and head in FORMATS:
        return store_url(rest).rstrip("/")
    if sep:
        return source.strip().rstrip("/")
    return store_url(source.strip()).rstrip("/")


def container(store: str) -> str:
    """The enclosing zarr/n5 container of an array's store URL (the first path part named
    ``*.zarr`` or ``*.n5``), else ``store`` itself.

    >>> container("file:///data/em.zarr/raw/s0")
    'file:///data/em.zarr'
    >>> container("gs://b/image")
    'gs://b/image'
    """
    scheme, sep, rest = store.partition("://")
    parts = rest.split("/")
    for i, part in enumerate(parts):
        if part.endswith((".zarr", ".n5", ".ome.zarr")) and i > 0:
            return scheme + sep + "/".join(parts[: i + 1])
    return store


def _canonical(store: str) -> str:
    """``store`` with a resolved local path (symlinks, ``..``) and one trailing slash."""
    path = local_path(store)
    if path is not None:
        store = "file://" + os.path.realpath(path)
    return store.rstrip("/") + "/"


def overlaps(a: str, b: str) -> str | None:
    """How two store URLs overlap: ``"same"``, ``"a in b"``, ``"b in a"`` or None.

    >>> overlaps("file:///data/em", "file:///data/em/out")
    'b in a'
    >>> overlaps("gs://bucket/em", "gs://bucket/em2") is None
    True
    """
    ca, cb = _canonical(a), _canonical(b)
    if ca == cb:
        return "same"
    if cb.startswith(ca):
        return "b in a"
    if ca.startswith(cb):
        return "a in b"
    return None
