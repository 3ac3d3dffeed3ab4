"""emseg.pipeline.io.checkpoints: locations (path, http URL into the cache, bundled), safe loading, fit messages."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
import torch

from emseg.pipeline.io import checkpoints
from emseg.pipeline.errors import CheckpointError

KW = {"fmt": "emseg-test", "version": 1, "bundled": "no_such_model.pt", "family": "test", "what": "test model",
      "hint": "make one"}


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_url_is_fetched_once_into_the_cache_and_loads(tmp_path, monkeypatch, server) -> None:
    served, base = server
    monkeypatch.setenv("EMSEG_CACHE", str(tmp_path / "cache"))
    checkpoints.save(served / "m.pt", {"format": "emseg-test", "version": 1, "state_dict": {"w": torch.ones(2)}})
    data = checkpoints.load(f"{base}/m.pt", **KW)
    assert data["path"].startswith(str(tmp_path / "cache" / "test"))
    assert torch.equal(data["state_dict"]["w"], torch.ones(2))
    (served / "m.pt").unlink()  # a second load reads the cache, not the server
    assert checkpoints.load(f"{base}/m.pt", **KW)["version"] == 1
    with pytest.raises(CheckpointError, match="the test model .*/gone.pt does not exist"):
        checkpoints.load(f"{base}/gone.pt", **KW)
    with pytest.raises(CheckpointError, match="could not fetch the test model"):
        checkpoints.load("http://127.0.0.1:9/m.pt", **KW)  # nothing listens on the discard port


def test_refusals_name_the_problem(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="bundled test model .* is missing"):
        checkpoints.resolve("bundled", bundled="no_such_model.pt", family="test", what="test model")
    with pytest.raises(CheckpointError, match="no test model at"):
        checkpoints.load(tmp_path / "missing.pt", **KW)
    checkpoints.save(tmp_path / "other.pt", {"format": "emseg-other", "version": 1})
    with pytest.raises(CheckpointError, match="format 'emseg-other', expected 'emseg-test'"):
        checkpoints.load(tmp_path / "other.pt", **KW)
    checkpoints.save(tmp_path / "v2.pt", {"format": "emseg-test", "version": 2})
    with pytest.raises(CheckpointError, match="version 2"):
        checkpoints.load(tmp_path / "v2.pt", **KW)

    import argparse  # any class outside torch's allow-list is refused by weights_only=True

    torch.save({"format": "emseg-test", "version": 1, "x": argparse.Namespace(a=1)}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="does not load with weights_only=True"):
        checkpoints.load(tmp_path / "code.pt", **KW)
    with pytest.raises(CheckpointError, match="meta 'when' is a list"):
        checkpoints.plain_meta({"when": [1, 2]})
