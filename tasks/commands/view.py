"""``emseg view`` and ``emseg link``: look at a run's output in Neuroglancer.

``view`` serves a local output and the Neuroglancer client that the ``neuroglancer`` Python package
bundles, on ONE port::

    browser ──▶ http://HOST:PORT/v/<token>/        neuroglancer's Python server (client files, state)
        └────▶ http://HOST:PORT/data/output/...    the run's output, added to that same server
               http://HOST:PORT/data/image/...     a local image elsewhere
               (byte ranges for sharded volumes and meshes, CORS for other viewers)

The state (built in :mod:`emseg.pipeline.outputs.neuroglancer`, the same one ``run.json`` stores and ``link``
prints) shows the image, the segmentation (every segment coloured in 2D; the largest selected, so
that their meshes appear in the 3D view) and the seam-audit points. ``link`` prints that state, and a
public-viewer URL for outputs a browser can reach by itself (``gs://``, ``s3://``, ``http(s)://``);
for local files it says to use ``view``, whose printed URL is the one that works.
"""

from __future__ import annotations

import collections
import email.utils
import json
import logging
import mimetypes
import os
import posixpath
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from emseg.pipeline.outputs import neuroglancer

from emseg.pipeline.io import urls
from emseg.pipeline.errors import ConfigError, VolumeNotFoundError

log = logging.getLogger("emseg")


# -- the data server ---------------------------------------------------------------------------

class Mounts:
    """Local directories served under URL prefixes (``mounts``: prefix -> directory).

    Every request is remembered in :attr:`requests` as ``(method, path, status)``; with ``echo`` each
    is also printed, one line per request.
    """

    def __init__(self, mounts: Mapping[str, str], *, echo: Callable[[str], None] | None = None) -> None:
        self.mounts = {k.strip("/"): os.path.realpath(v) for k, v in mounts.items()}
        self.requests: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=100_000)
        self.echo = echo

    def resolve(self, path: str) -> str | None:
        """The local file for a URL path below the prefix (``output/segmentation/info``), or None
        (outside every mount, or a directory)."""
        parts = [p for p in posixpath.normpath(urllib.parse.unquote(path)).split("/") if p not in ("", ".")]
        if not parts or parts[0] not in self.mounts or ".." in parts:
            return None
        root = self.mounts[parts[0]]
        full = os.path.realpath(os.path.join(root, *parts[1:]))
        if full != root and not full.startswith(root + os.sep):
            return None
        return full if os.path.isfile(full) else None

    def record(self, method: str, path: str, status: int) -> None:
        self.requests.append((method, path, status))
        if self.echo is not None:
            self.echo(f"{status} {method} {path}")


#: URL prefix of the data on the viewer's server (neuroglancer's own routes are /v/, /neuroglancer/,
#: /action/, /events/, /state/ and /credentials/)
DATA_PREFIX = "/data"


def _data_handler() -> type:
    """A tornado handler (the server neuroglancer runs) for the files of :class:`Mounts`."""
    import tornado.web

    class DataHandler(tornado.web.RequestHandler):
        def initialize(self, mounts: Mounts) -> None:
            self.mounts = mounts

        def set_default_headers(self) -> None:
            self.set_header("Access-Control-Allow-Origin", "*")
            self.set_header("Access-Control-Allow-Headers", "range, x-requested-with, content-type")
            self.set_header("Access-Control-Expose-Headers", "content-range, content-length, accept-ranges")
            self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")

        def compute_etag(self) -> None:  # Last-Modified and no-cache instead
            return None

        def on_finish(self) -> None:
            self.mounts.record(self.request.method or "", self.request.path, self.get_status())

        def options(self, path: str) -> None:
            self.set_status(HTTPStatus.NO_CONTENT)
            self.finish()

        def head(self, path: str) -> None:
            self._send(path, body=False)

        def get(self, path: str) -> None:
            self._send(path, body=True)

        def _send(self, path: str, *, body: bool) -> None:
            full = self.mounts.resolve(path)
            if full is None:
                self.set_status(HTTPStatus.NOT_FOUND)
                self.finish()
                return
            size = os.path.getsize(full)
            start, stop = 0, size
            header = self.request.headers.get("Range")
            if header:
                got = parse_range(header, size)
                if got is None:
                    self.set_status(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.set_header("Content-Range", f"bytes */{size}")
                    self.finish()
                    return
                start, stop = got
                self.set_status(HTTPStatus.PARTIAL_CONTENT)
                self.set_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            kind = "application/json" if os.path.basename(full) in ("info", "run.json") else (
                mimetypes.guess_type(full)[0] or "application/octet-stream")
            self.set_header("Content-Type", kind)
            self.set_header("Accept-Ranges", "bytes")
            self.set_header("Last-Modified", email.utils.formatdate(os.path.getmtime(full), usegmt=True))
            self.set_header("Cache-Control", "no-cache")
            if body:
                with open(full, "rb") as f:
                    f.seek(start)
                    self.write(f.read(stop - start))
            else:
                self.set_header("Content-Length", str(stop - start))
            self.finish()

    return DataHandler


class Server:
    """Neuroglancer's Python server (one port) with the files of ``mounts`` added under ``/data/``.

    ``url`` is the server's base URL; ``url + "/data/output/..."`` reads a file. Neuroglancer runs one
    server per process: :meth:`close` stops it.
    """

    def __init__(self, host: str, port: int, mounts: Mapping[str, str], *,
                 echo: Callable[[str], None] | None = None) -> None:
        try:
            import neuroglancer
            import neuroglancer.server
        except ImportError:  # pragma: no cover - neuroglancer is a dependency
            raise ConfigError("emseg view needs the neuroglancer package: pip install neuroglancer") from None
        self.mounts = Mounts(mounts, echo=echo)
        neuroglancer.set_server_bind_address(host, port)
        try:
            neuroglancer.server.start()
        except OSError as exc:
            raise ConfigError(f"emseg view cannot listen on {host}:{port}: {exc.strerror or exc}; "
                              "choose another --port (0 takes any free port)") from None
        ng = neuroglancer.server.global_server
        ng.app.add_handlers(r".*", [(DATA_PREFIX + r"/(.*)", _data_handler(), {"mounts": self.mounts})])
        self.url = ng.server_url.rstrip("/")

    @property
    def requests(self) -> collections.deque[tuple[str, str, int]]:
        return self.mounts.requests

    def close(self) -> None:
        import neuroglancer

        neuroglancer.stop()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single ``bytes=`` range, or None when it cannot be satisfied.

    >>> parse_range("bytes=2-5", 10), parse_range("bytes=7-", 10), parse_range("bytes=-3", 10)
    ((2, 6), (7, 10), (7, 10))
    >>> parse_range("bytes=12-", 10) is None
    True
    """
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            start, stop = max(0, size - n), size
        else:
            start = int(first)
            stop = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    if start >= size or stop <= start:
        return None
    return start, stop


# -- viewer state ------------------------------------------------------------------------------

def _read_run(output: str) -> dict[str, Any]:
    from emseg.tasks.driver import report

    run = report.read(output)
    if run is None:
        raise VolumeNotFoundError(f"no run.json in {output}; run `emseg segment` on a config with this output first")
    return run


def _image_url(url: str | None) -> str | None:
    """A volume URL for ``--image``: a local path or ``file://`` URL made absolute, a URL as given."""
    if not url:
        return None
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    if url.startswith("file://"):
        return urls.local_path(url)
    return url


def viewer_state(output: str, *, image: str | None = None) -> dict[str, Any]:
    """The Neuroglancer state of a finished run (:func:`emseg.pipeline.outputs.neuroglancer.run_state`), with
    ``image`` (a URL or local path) instead of the run's input when given."""
    return neuroglancer.run_state(_read_run(output), image=_image_url(image))


def rewrite_sources(state: dict[str, Any], output: str, data_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Point local (``file://``) sources at ``data_url``; returns the new state and its mounts.

    The output directory is mounted as ``output``; a local image elsewhere as ``image``.
    """
    out_path = urls.local_path(urls.store_url(output))
    if out_path is None:
        raise ConfigError(f"emseg view serves local outputs; {output} is remote — use `emseg link {output}`")
    out_path = os.path.realpath(out_path)
    mounts = {"output": out_path}
    new = json.loads(json.dumps(state))
    for layer in new["layers"]:
        holder: dict[str, Any] = layer["source"] if isinstance(layer.get("source"), dict) else layer
        key = "url" if holder is not layer else "source"
        source = holder.get(key)
        if not isinstance(source, str) or "://file://" not in source:
            continue
        fmt, _, rest = source.partition("://")
        path = os.path.realpath(urls.local_path(rest) or rest)
        if path == out_path or path.startswith(out_path + os.sep):
            rel = os.path.relpath(path, out_path)
            holder[key] = f"{fmt}://{data_url}/output/{rel}".rstrip("/")
        else:
            name = "image" if "image" not in mounts else f"layer{len(mounts)}"
            mounts[name] = path
            holder[key] = f"{fmt}://{data_url}/{name}"
    return new, mounts


class ViewSession:
    """A running ``emseg view``: neuroglancer's server (with the data on it) and the viewer."""

    def __init__(self, server: Server, viewer: Any, state: dict[str, Any]) -> None:
        self.server = server
        self.viewer = viewer
        self.state = state

    @property
    def url(self) -> str:
        """The viewer's URL: open it in a browser on this machine (or through an SSH tunnel)."""
        return self.viewer.get_viewer_url()

    def close(self) -> None:
        self.server.close()


def serve(output: str, *, image: str | None = None, host: str = "127.0.0.1", port: int = 0,
          echo: Callable[[str], None] | None = None) -> ViewSession:
    """Serve ``output`` (and a local image) and a Neuroglancer viewer showing it, on one port."""
    import neuroglancer as ng

    state = viewer_state(output, image=image)
    server = Server(host, port, {}, echo=echo)
    served, mounts = rewrite_sources(state, output, server.url + DATA_PREFIX)
    server.mounts.mounts = {k: os.path.realpath(v) for k, v in mounts.items()}
    viewer = ng.Viewer()
    viewer.set_state(ng.ViewerState(served))
    return ViewSession(server, viewer, served)


def link(output: str, *, image: str | None = None) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """``(run.json, state, URL for the public viewer)``; the URL is None when some layers are local
    files, which the public viewer cannot read (``emseg view`` serves them)."""
    run = _read_run(output)
    state = neuroglancer.run_state(run, image=_image_url(image))
    local = any(neuroglancer.is_local(layer.get("source")) for layer in state["layers"])
    return run, state, None if local else neuroglancer.link(state)
