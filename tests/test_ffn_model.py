"""The FFN network, one training step, checkpoints, and the lazy-import contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emseg.pipeline.errors import CheckpointError, ConfigError  # noqa: E402
from emseg.pipeline.backends.ffn.config import ModelConfig  # noqa: E402
from emseg.pipeline.backends.ffn.model import FFN, TorchPredictor  # noqa: E402
from emseg.pipeline.backends.ffn.sampling import PatchSampler, boundary_mask  # noqa: E402
from emseg.pipeline.backends.ffn.training import patch_size, run_fovs  # noqa: E402
from emseg.pipeline.backends.ffn.weights import build_model, load_checkpoint, load_state, save_checkpoint  # noqa: E402

SMALL = ModelConfig(fov_size=(9, 9, 9), step=(2, 2, 2), depth=1, width=4)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_model_shapes_and_residual_update() -> None:
    net = FFN(ModelConfig(fov_size=(9, 11, 13), step=(2, 2, 2), depth=2, width=6))
    image = torch.randn(3, 1, 9, 11, 13)
    pom = torch.full((3, 1, 9, 11, 13), -2.0)
    out = net(image, pom)
    assert out.shape == (3, 1, 9, 11, 13) and out.dtype == torch.float32
    # the head starts near zero, so the first output is close to the input object map
    assert torch.allclose(out, pom, atol=0.1)
    n_convs = sum(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    assert n_convs == 2 + 2 * 2 + 1


def test_predictor_numpy_protocol() -> None:
    predictor = TorchPredictor(FFN(SMALL), torch.device("cpu"), "fp32")
    out = predictor(np.zeros((2, 9, 9, 9), np.float32), np.zeros((2, 9, 9, 9), np.float32), np.zeros((2, 3)))
    assert out.shape == (2, 9, 9, 9) and out.dtype == np.float32
    assert predictor.fovs == 2


def test_model_config_is_checked() -> None:
    with pytest.raises(ValueError, match="odd"):
        ModelConfig(fov_size=(8, 9, 9))
    with pytest.raises(ValueError, match="half the fov_size"):
        ModelConfig(fov_size=(9, 9, 9), step=(5, 2, 2))
    with pytest.raises(ValueError):
        ModelConfig(unknown=1)  # type: ignore[call-arg]


def _toy_labels(shape: tuple[int, int, int] = (24, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    labels = np.ones(shape, np.uint64)
    labels[:, :, shape[2] // 2 :] = 2
    labels[:, : shape[1] // 3, :] = 3
    labels[0] = 0  # unlabelled
    image = np.where(boundary_mask(labels), -1.5, 0.5).astype(np.float32)
    return image, labels


def test_sampler_balances_and_targets_the_centre_object() -> None:
    image, labels = _toy_labels()
    rng = np.random.default_rng(0)
    sampler = PatchSampler(image, labels, (13, 13, 13), 0.5, True, rng)
    batch = sampler.sample(16)
    assert batch.image.shape == (16, 13, 13, 13)
    assert (batch.target[:, 6, 6, 6] == 1).all()  # the centre is always in its object
    edge = boundary_mask(labels).ravel()
    assert edge[sampler.boundary].all() and not edge[sampler.interior].any()
    with pytest.raises(ConfigError, match="smaller than a patch"):
        PatchSampler(image, labels, (31, 13, 13), 0.5, True, rng)


def test_one_training_step_lowers_the_loss_on_its_batch() -> None:
    image, labels = _toy_labels()
    sampler = PatchSampler(image, labels, patch_size(SMALL, 1), 0.5, True, np.random.default_rng(1))
    batch = sampler.sample(4)
    net = FFN(SMALL)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    before, correct, counted = run_fovs(net, batch, 1, torch.device("cpu"), "fp32", rng)
    assert torch.isfinite(before) and 0 < float(correct) <= float(counted)
    weights = [p.detach().clone() for p in net.parameters()]
    opt.zero_grad()
    before.backward()
    opt.step()
    assert any(not torch.equal(w, p) for w, p in zip(weights, net.parameters()))
    with torch.no_grad():
        after, _, _ = run_fovs(net, batch, 1, torch.device("cpu"), "fp32", np.random.default_rng(0))
    assert float(after) < float(before.detach())


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = FFN(SMALL)
    path = tmp_path / "ffn.pt"
    save_checkpoint(path, net, {"steps": 3, "note": "test"})
    # a plain torch.load with weights_only=True reads it
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "emseg-ffn" and raw["meta"]["steps"] == 3
    loaded = load_checkpoint(path)
    assert loaded["model"] == SMALL
    again = build_model(loaded)
    x = torch.randn(1, 1, 9, 9, 9)
    assert torch.equal(net(x, x), again(x, x))


def test_checkpoint_mismatch_errors(tmp_path: Path) -> None:
    path = tmp_path / "ffn.pt"
    save_checkpoint(path, FFN(SMALL))
    wider = FFN(SMALL.model_copy(update={"width": 8}))
    with pytest.raises(CheckpointError, match="width 4 vs 8"):
        load_state(wider, load_checkpoint(path))
    # tensors that do not fit the stored config
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.weight"] = torch.zeros(1, 5, 1, 1, 1)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_model(load_checkpoint(path))
    # a bare state_dict lacks the config
    torch.save(FFN(SMALL).state_dict(), path)
    with pytest.raises(CheckpointError, match="not an emseg FFN checkpoint"):
        load_checkpoint(path)
    # a pickled module does not load with weights_only=True
    torch.save(FFN(SMALL), path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no FFN checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_backend_module_imports_no_torch() -> None:
    code = (
        "import sys, emseg.pipeline.backends as b; p = b.validate_params('ffn', {'min_size': 10}); "
        "b.create('ffn', p); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_ffn_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emseg.tasks.cli import main
    from tests.conftest import write_zarr

    image, labels = _toy_labels((24, 24, 24))
    raw = np.clip(128 + 60 * image, 0, 255).astype(np.uint8)
    image_url = write_zarr(tmp_path / "img.zarr", raw)
    labels_url = write_zarr(tmp_path / "lab.zarr", labels)
    config = tmp_path / "train.yaml"
    config.write_text(
        f"image: {image_url}\nlabels: {labels_url}\noutput: {tmp_path / 'run'}\n"
        "model: {fov_size: [9, 9, 9], step: [2, 2, 2], depth: 1, width: 4}\n"
        "train_region: {start: [0, 0, 0], stop: [24, 24, 24]}\n"
        "val_region: {start: [0, 0, 0], stop: [24, 24, 24]}\n"
        "batch_size: 2\nval_samples: 2\nlog_every: 1\nval_every: 2\nthreads: 1\n"
    )
    assert main(["train-ffn", str(config), "--set", "steps=3", "--no-progress"]) == 0
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert any(line.startswith("step 3/3 loss ") and " acc " in line for line in log)
    assert any(line.startswith("val step 2 loss ") for line in log)
    checkpoint = load_checkpoint(tmp_path / "run" / "ffn_last.pt")  # weights_only=True inside
    assert checkpoint["meta"]["steps"] == 3 and checkpoint["model"].width == 4
    assert abs(checkpoint["model"].image_mean - float(raw.mean())) < 0.01  # normalised from the data
    # unknown keys are refused with a one-line error
    assert main(["train-ffn", str(config), "--set", "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err


def test_training_starts_from_a_checkpoint(tmp_path: Path) -> None:
    from emseg.pipeline.backends.ffn.config import TrainConfig
    from emseg.pipeline.backends.ffn.training import train
    from tests.conftest import write_zarr

    image, labels = _toy_labels((24, 24, 24))
    image_url = write_zarr(tmp_path / "img.zarr", np.clip(128 + 60 * image, 0, 255).astype(np.uint8))
    labels_url = write_zarr(tmp_path / "lab.zarr", labels)
    start = SMALL.model_copy(update={"image_mean": 17.0, "image_stddev": 3.0})
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "start.pt", FFN(start), {"steps": 40})
    base = {"image": image_url, "labels": labels_url, "steps": 1, "batch_size": 2, "learning_rate": 1e-9,
            "threads": 1, "val_samples": 2}

    meta = train(TrainConfig(**base, output=str(tmp_path / "a"), init_checkpoint=str(tmp_path / "start.pt")),
                 progress=False, log=lambda line: None)
    tuned = load_checkpoint(tmp_path / "a" / "ffn_last.pt")
    assert tuned["model"] == start  # the checkpoint's network and normalisation, not the data's
    first = load_checkpoint(tmp_path / "start.pt")["state_dict"]
    for name, tensor in tuned["state_dict"].items():  # one step at lr 1e-9 leaves the weights in place
        assert torch.allclose(tensor, first[name], atol=1e-6), name
    assert meta["init_checkpoint"] == str(tmp_path / "start.pt")
    assert "(40 steps)" in (tmp_path / "a" / "train.log").read_text()

    # A fresh start from the same seed differs: the test above did load the checkpoint.
    train(TrainConfig(**base, output=str(tmp_path / "b"), model=SMALL), progress=False, log=lambda line: None)
    fresh = load_checkpoint(tmp_path / "b" / "ffn_last.pt")["state_dict"]
    assert any(not torch.allclose(fresh[k], first[k], atol=1e-3) for k in first)

    # `model` naming another network than the checkpoint's is refused, naming the difference.
    with pytest.raises(ConfigError, match="width 4 vs 8"):
        train(TrainConfig(**base, output=str(tmp_path / "c"), init_checkpoint=str(tmp_path / "start.pt"),
                          model=start.model_copy(update={"width": 8})), progress=False, log=lambda line: None)
