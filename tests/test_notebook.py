"""The quickstart notebook runs from top to bottom on a small phantom."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("EMSEG_QUICKSTART_SHAPE", "64")
    monkeypatch.setenv("EMSEG_QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("EMSEG_QUICKSTART_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "complete -" in text
    assert "adapted_rand_error" in text and "voi_split" in text
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 4, f"{len(pictures)} figures: slices+errors, VOI split vs merge, sizes, meshes expected"
    for name in ("slices", "voi", "sizes", "meshes"):
        png = tmp_path / "figures" / f"quickstart-{name}.png"
        assert png.exists() and png.stat().st_size > 10_000, f"{png.name} was not saved"
    assert "over-segmentation" in text and "0 is perfect" in text  # the scores come with their readings
    assert "emseg view" in text and "seam audit" in text
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "complete" and run["postprocess"]["failures"] == []
    assert os.path.exists(tmp_path / "out" / "segmentation" / "mesh" / "info")
