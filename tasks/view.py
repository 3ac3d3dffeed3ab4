"""``emseg view`` and ``emseg link``: look at a run's output in Neuroglancer.

``view`` serves a local output over HTTP and opens it in the Neuroglancer client that the
``neuroglancer`` Python package bundles::

    browser ──▶ neuroglancer's Python server (client files + viewer state)   http://HOST:PORT/v/<token>/
        └────▶ emseg's data server: files of the output and of a local image  http://HOST:DATA_PORT/
               (byte ranges for sharded volumes and meshes, CORS for the cross-origin reads)

The state shows the image, the segmentation (with its meshes and segment properties; the largest
segments are selected so that their meshes appear in the 3D view) and the seam-audit points.
``link`` prints the same state and a public-viewer URL for outputs a browser can reach by itself
(``gs://``, ``s3://``, ``http(s)://``), without serving anything.
"""

from __future__ import annotations

import collections
import email.utils
import json
import logging
import mimetypes
import os
import posixpath
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline import neuroglancer, urls
from pipeline.errors import ConfigError, VolumeNotFoundError

log = logging.getLogger("emseg")

#: segments selected in a new view (their meshes load in the 3D panel)
SELECTED = 20


# -- the data server ---------------------------------------------------------------------------

class DataServer(ThreadingHTTPServer):
    """Serves directories (``mounts``: URL prefix -> local directory) with byte ranges and CORS.

    Every request is remembered in :attr:`requests` as ``(method, path, status)``; with
    ``echo`` each is also printed, one line per request.
    """

    daemon_threads = True

    def __init__(self, host: str, port: int, mounts: Mapping[str, str], *, echo: Callable[[str], None] | None = None):
        self.mounts = {k.strip("/"): os.path.realpath(v) for k, v in mounts.items()}
        self.requests: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=100_000)
        self.echo = echo
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", ""):  # bound to every interface: name this machine
            host = socket.getfqdn()
        return f"http://{host}:{port}"

    def resolve(self, path: str) -> str | None:
        """The local file for a URL path, or None (outside every mount, or a directory)."""
        parts = [p for p in posixpath.normpath(urllib.parse.unquote(path)).split("/") if p not in ("", ".")]
        if not parts or parts[0] not in self.mounts or ".." in parts:
            return None
        root = self.mounts[parts[0]]
        full = os.path.realpath(os.path.join(root, *parts[1:]))
        if full != root and not full.startswith(root + os.sep):
            return None
        return full if os.path.isfile(full) else None

    def start(self) -> DataServer:
        threading.Thread(target=self.serve_forever, name="emseg-view-data", daemon=True).start()
        return self


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


class _Handler(BaseHTTPRequestHandler):
    server: DataServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "range, x-requested-with, content-type")
        self.send_header("Access-Control-Expose-Headers", "content-range, content-length, accept-ranges")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")

    def _record(self, status: int) -> None:
        self.server.requests.append((self.command, self.path, status))
        if self.server.echo is not None:
            self.server.echo(f"{status} {self.command} {self.path}")

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(HTTPStatus.NO_CONTENT)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._record(204)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._send(body=True)

    def _send(self, *, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        full = self.server.resolve(path)
        if full is None:
            self.send_response(HTTPStatus.NOT_FOUND)
            self._cors()
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._record(404)
            return
        size = os.path.getsize(full)
        start, stop, status = 0, size, HTTPStatus.OK
        header = self.headers.get("Range")
        if header:
            got = parse_range(header, size)
            if got is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self._cors()
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record(416)
                return
            start, stop = got
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self._cors()
        kind = "application/json" if os.path.basename(full) in ("info", "run.json") else (
            mimetypes.guess_type(full)[0] or "application/octet-stream")
        self.send_header("Content-Type", kind)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Last-Modified", email.utils.formatdate(os.path.getmtime(full), usegmt=True))
        self.send_header("Cache-Control", "no-cache")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if body:
            with open(full, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(stop - start))
        self._record(int(status))


# -- viewer state ------------------------------------------------------------------------------

def _read_run(output: str) -> dict[str, Any]:
    from tasks import report

    run = report.read(output)
    if run is None:
        raise VolumeNotFoundError(f"no run.json in {output}; run `emseg segment` on a config with this output first")
    return run


def _source(url: str | None) -> str | None:
    """A Neuroglancer source for a volume URL or local path (absolute, format named)."""
    if not url:
        return None
    if "://" not in url or url.startswith("file://"):
        path = urls.local_path(url) if url.startswith("file://") else os.path.abspath(os.path.expanduser(url))
        return neuroglancer.layer_source(path or url)
    return neuroglancer.layer_source(url)


def viewer_state(output: str, *, image: str | None = None, selected: int = SELECTED) -> dict[str, Any]:
    """The Neuroglancer state of a finished run: image, segmentation (meshes, selected largest
    segments) and the seam-audit annotations, with the sources as the run wrote them."""
    run = _read_run(output)
    base = json.loads(json.dumps(run["neuroglancer"]))
    post = run.get("postprocess") or {}
    layers = []
    image_source = _source(image) if image else next(
        (layer["source"] for layer in base["layers"] if layer.get("type") == "image"), None)
    voxel = [float(v) for v in run["input"]["voxel_size_nm"]]
    if image_source:
        layers.append({"type": "image", "source": _named_axes(image_source, voxel), "name": "image"})
    seg = {"type": "segmentation", "source": run["segmentation"], "name": "segmentation"}
    largest = [str(i) for i in post.get("largest", [])[:selected]]
    if largest:
        seg["segments"] = largest
    layers.append(seg)
    audit = post.get("seam_audit")
    if audit and audit.get("points", 0) > 0:
        layers.append({
            "type": "annotation",
            "source": audit["source"],
            "name": "seam audit",
            "annotationColor": "#ff9900",
            "linkedSegmentationLayer": {"segments": "segmentation"},
            "filterBySegmentation": [],
        })
    base["layers"] = layers
    base["selectedLayer"] = {"layer": "segmentation", "visible": False}
    extent = max(e - s for s, e in zip(run["roi"]["start"], run["roi"]["stop"]))
    base["crossSectionScale"] = max(extent / 400, 0.05)
    base["projectionScale"] = max(extent * 1.6, 16)
    return base


def _named_axes(source: str, voxel_size_nm: list[float]) -> str | dict[str, Any]:
    """Zarr arrays carry no axis names (Neuroglancer calls them d0, d1, d2): name them z, y, x."""
    if not source.startswith(("zarr://", "zarr2://", "zarr3://")):
        return source
    dims = {name: [v * 1e-9, "m"] for name, v in zip("zyx", voxel_size_nm)}
    return {"url": source, "transform": {"outputDimensions": dims}}


def rewrite_sources(state: dict[str, Any], output: str, data_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Point local (``file://``) sources at the data server; returns the new state and its mounts.

    The output directory is mounted as ``/output``; a local image elsewhere as ``/image``.
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
    """A running ``emseg view``: the data server and neuroglancer's viewer server."""

    def __init__(self, data: DataServer, viewer: Any, state: dict[str, Any]) -> None:
        self.data = data
        self.viewer = viewer
        self.state = state

    @property
    def url(self) -> str:
        return self.viewer.get_viewer_url()

    def close(self) -> None:
        import neuroglancer

        self.data.shutdown()
        self.data.server_close()
        neuroglancer.stop()


def serve(output: str, *, image: str | None = None, host: str = "127.0.0.1", port: int = 0,
          data_port: int = 0, echo: Callable[[str], None] | None = None) -> ViewSession:
    """Start serving ``output`` (and a local image) and a Neuroglancer viewer showing it."""
    try:
        import neuroglancer
    except ImportError:  # pragma: no cover - neuroglancer is a dependency
        raise ConfigError("emseg view needs the neuroglancer package: pip install neuroglancer") from None
    state = viewer_state(output, image=image)
    data = DataServer(host, data_port, {}, echo=echo)
    served, mounts = rewrite_sources(state, output, data.url)
    data.mounts = {k: os.path.realpath(v) for k, v in mounts.items()}
    data.start()
    neuroglancer.set_server_bind_address(host, port)
    viewer = neuroglancer.Viewer()
    viewer.set_state(neuroglancer.ViewerState(served))
    return ViewSession(data, viewer, served)


def link(output: str, *, image: str | None = None) -> tuple[dict[str, Any], str, bool]:
    """``(state, URL for the public viewer, whether some layers are local files)``."""
    state = viewer_state(output, image=image)
    local = any(neuroglancer.is_local(json.dumps(layer.get("source"))) for layer in state["layers"])
    return state, neuroglancer.link(state), local
