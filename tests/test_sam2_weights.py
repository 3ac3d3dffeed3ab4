"""SAM2 checkpoints: saved and loaded through the real path (torch.load weights_only), from a local
file and over HTTP, and refused with a useful message when they do not fit the model."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from emseg.pipeline.backends.sam2.backend import Backend, Params  # noqa: E402
from emseg.pipeline.errors import CheckpointError  # noqa: E402
from emseg.pipeline.backends.sam2 import weights  # noqa: E402

SIZE = 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random-weight tiny model saved as the official release does ({"model": state_dict})."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model = weights.build_model("sam2.1_hiera_t", SIZE, "cpu")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    weights.save_checkpoint(model, str(path))
    return path, model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_saved_checkpoint_loads_through_the_backend(checkpoint: tuple[Path, dict]) -> None:
    path, state = checkpoint
    backend = Backend(Params(checkpoint=str(path), image_size=SIZE, device="cpu"))
    loaded = backend.predictor()
    assert _same(loaded.state_dict(), state)
    assert backend.predictor() is loaded  # cached: read once per worker
    file_url = Backend(Params(checkpoint=f"file://{path}", image_size=SIZE, device="cpu"))
    assert _same(file_url.predictor().state_dict(), state)


@pytest.fixture()
def http_url(checkpoint: tuple[Path, dict]) -> Iterator[str]:
    path, _ = checkpoint
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_checkpoint_is_fetched_once_into_the_cache(
    http_url: str, checkpoint: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMSEG_CACHE", str(tmp_path))
    local = weights.local_checkpoint(http_url)
    assert local.startswith(str(tmp_path)) and Path(local).read_bytes() == checkpoint[0].read_bytes()
    assert weights.local_checkpoint(http_url) == local
    assert _same(weights.read_state_dict(http_url), checkpoint[1])
    missing = http_url.rsplit("/", 1)[0] + "/absent.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        weights.local_checkpoint(missing)


def test_a_checkpoint_of_another_model_lists_missing_and_unexpected_keys(
    checkpoint: tuple[Path, dict],
) -> None:
    path, state = checkpoint
    with torch.random.fork_rng(devices=[]):
        small = weights.build_model("sam2.1_hiera_s", SIZE, "cpu")
    with pytest.raises(CheckpointError) as caught:
        weights.load_weights(small, state, "sam2.1_hiera_s", str(path))
    message = str(caught.value)
    assert "missing keys (image_encoder.trunk.blocks.12." in message
    assert "2 unexpected keys (image_encoder.trunk.blocks.10.proj.bias" in message
    assert "keys of another shape" in message and "backend.model: sam2.1_hiera_t" in message

    edited = dict(state)
    edited.pop("no_mem_embed")
    edited["extra.weight"] = torch.zeros(1)
    edited["maskmem_tpos_enc"] = torch.zeros(3, 1, 1, 64)
    tiny = weights.build_model("sam2.1_hiera_t", SIZE, "cpu")
    with pytest.raises(CheckpointError) as caught:
        weights.load_weights(tiny, edited, "sam2.1_hiera_t", "edited.pt")
    message = str(caught.value)
    assert "1 missing keys (no_mem_embed)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "maskmem_tpos_enc (3, 1, 1, 64)≠(7, 1, 1, 64)" in message


def test_bad_checkpoints_fail_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="backend.checkpoint is not set; download"):
        Backend(Params(image_size=SIZE, device="cpu")).predictor()
    with pytest.raises(CheckpointError, match="not found; download the SAM2.1 weights"):
        weights.read_state_dict(str(tmp_path / "nothing.pt"))
    torch.save({"model": {"a": 1}}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        weights.read_state_dict(str(tmp_path / "junk.pt"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        weights.read_state_dict(str(tmp_path / "text.pt"))
    with pytest.raises(CheckpointError, match="gs://, s3://, http:// or https:// URL"):
        weights.local_checkpoint("ftp://host/x.pt")
