"""The U-Net's training loop for ``emseg train`` (see :mod:`emseg.pipeline.backends.boundary.training`).

Checkpoints (``unet_step{N}.pt`` every ``checkpoint_every`` steps, ``unet_last.pt`` always) hold the
weights, the Adam state and the step, all loadable with ``weights_only=True``; ``resume`` continues
from one. Imports torch.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emseg.pipeline.io import checkpoints
from emseg.pipeline.backends.boundary import augment as aug
from emseg.pipeline.backends.boundary import features as feats
from emseg.pipeline.backends.boundary import unet as unet_mod
from emseg.pipeline.backends.boundary.config import TrainConfig, UNetSpec
from emseg.pipeline.errors import CheckpointError, ConfigError


def affinity_targets(labels: np.ndarray, offsets: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Affinity targets and their mask for (z, y, x) labels, one channel per offset (each <= 0).

    ``target[c][v] = 1`` when ``labels[v] == labels[v + offset_c]``; ``mask`` is 0 where either voxel
    is unlabelled (0) or ``v + offset`` lies outside the array.

    >>> t, m = affinity_targets(np.array([[[1, 1, 2]]]), [(0, 0, -1)])
    >>> t.tolist(), m.tolist()
    ([[[[0.0, 1.0, 0.0]]]], [[[[0.0, 1.0, 1.0]]]])
    """
    labels = np.asarray(labels)
    target = np.zeros((len(offsets),) + labels.shape, dtype=np.float32)
    mask = np.zeros_like(target)
    for c, off in enumerate(offsets):
        dst = tuple(slice(-o, None) for o in off)
        src = tuple(slice(None, s + o if o else None) for o, s in zip(off, labels.shape))
        a, b = labels[dst], labels[src]
        target[c][dst] = a == b
        mask[c][dst] = (a != 0) & (b != 0)
    return target, mask


def lsd_targets(labels: np.ndarray, sigma: float) -> np.ndarray:
    """Local shape descriptors of ``labels`` (z, y, x) as training targets: (10, z, y, x) float32.

    Computed by ``lsd-lite`` (the LSD paper's descriptors: Sheridan et al. 2023, Nature Methods) with a
    Gaussian of ``sigma`` voxels, in the paper's channel order: mean offset to the local centre of
    mass (3), variances (3), Pearson coefficients (3), local size (1), each scaled into [0, 1].
    Unlabelled voxels (label 0) have no descriptor: NaN in every channel, which the loss leaves out.
    The descriptors see only the patch, so near its faces they describe the object's part inside it.

    Raises
    ------
    ConfigError
        ``lsd-lite`` is not installed.
    """
    try:
        from lsd_lite import get_lsds  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError("model.lsds needs the lsd-lite package (pip install lsd-lite); or set lsds: false") from None
    labels = np.asarray(labels)
    out = np.asarray(get_lsds(labels.astype(np.uint64), sigma=sigma), dtype=np.float32)
    out[:, labels == 0] = np.nan
    return out


class Sampler:
    """Random augmented training patches of an in-memory image and labels."""

    def __init__(self, image: np.ndarray, labels: np.ndarray, config: TrainConfig, spec: UNetSpec) -> None:
        if any(s < p for s, p in zip(image.shape, config.patch)):
            raise ConfigError(
                f"patch {list(config.patch)} is larger than the training region {list(image.shape)}; use a smaller patch"
            )
        self.image, self.labels, self.config, self.spec = image, labels, config, spec
        self.offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)] + [tuple(o) for o in spec.long_range]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(n, 1, z, y, x) normalised images, (n, C, ...) affinity targets and masks, (n, 10, ...) LSDs or None."""
        rng = np.random.default_rng([self.config.seed, step])
        xs, ts, ms, ls = [], [], [], []
        for _ in range(self.config.batch_size):
            start = [int(rng.integers(0, s - p + 1)) for s, p in zip(self.image.shape, self.config.patch)]
            sl = tuple(slice(a, a + p) for a, p in zip(start, self.config.patch))
            img, lab = self.image[sl], self.labels[sl]
            if self.config.augment:
                img, lab = aug.geometry(img, lab, rng, transpose=self.config.patch[1] == self.config.patch[2])
                img = aug.intensity(img, rng, self.config.intensity)
            xs.append(feats.normalise(img)[None])
            t, m = affinity_targets(lab, self.offsets)
            ts.append(t)
            ms.append(m)
            if self.spec.lsds:
                ls.append(lsd_targets(lab, self.spec.lsd_sigma))
        return np.stack(xs), np.stack(ts), np.stack(ms), (np.stack(ls) if ls else None)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lsds: torch.Tensor | None,
            spec: UNetSpec, config: TrainConfig) -> torch.Tensor:
    """Class-balanced BCE on the affinities (+ weighted long-range BCE and LSD MSE)."""
    n_aff = target.shape[1]
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits[:, :n_aff], target, reduction="none")
    w = config.boundary_weight
    losses = []
    for channels, weight in ((slice(0, 3), 1.0), (slice(3, n_aff), config.long_range_weight)):
        m, t, b = mask[:, channels], target[:, channels], bce[:, channels]
        if m.numel() == 0 or weight == 0:
            continue
        pos, neg = m * t, m * (1 - t)
        term = w * (b * neg).sum() / neg.sum().clamp(min=1) + (1 - w) * (b * pos).sum() / pos.sum().clamp(min=1)
        losses.append(weight * 2 * term)
    if lsds is not None:  # mean squared error over labelled voxels (NaN targets: unlabelled)
        known = ~torch.isnan(lsds)
        if known.any():
            pred = torch.sigmoid(logits[:, n_aff:])
            losses.append(config.lsd_weight * F.mse_loss(pred[known], lsds[known]))
    return torch.stack(losses).sum()


def _state(net: Any, optimiser: Any, step: int, config: TrainConfig, extra: dict[str, Any]) -> dict[str, Any]:
    meta = {"step": step, "seed": config.seed, "image": config.image, "patch": str(list(config.patch)),
            "torch": str(torch.__version__), **extra}
    return unet_mod.payload(net, meta, optimizer=optimiser.state_dict(), step=step)


def train_unet(config: TrainConfig, spec: UNetSpec, out_dir: Path, emit: Any, progress: bool = True) -> dict[str, Any]:
    """Train the U-Net as ``config`` says, resuming when asked; returns the run summary."""
    from tqdm.auto import tqdm

    from emseg.pipeline.backends import device as devices
    from emseg.pipeline.backends.boundary.validation import best_row, format_rows, read, to_unit, validate

    start_time = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = devices.resolve_device(config.device)
    precision = devices.resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    network = spec.network()
    net = unet_mod.build(network).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    step = 0
    resume = config.resume
    if resume == "auto":
        resume = str(out_dir / "unet_last.pt") if (out_dir / "unet_last.pt").exists() else None
    if resume:
        data = unet_mod.read(resume)
        if data["model"] != network:
            raise CheckpointError(
                f"{resume} holds a U-Net of another shape ({data['model'].model_dump()}) than model: in the config; "
                "resume with the same model keys, or start a new output"
            )
        unet_mod.load_weights(net, data)
        if "optimizer" in data:
            optimiser.load_state_dict(data["optimizer"])
        step = int(data.get("step", 0))
        emit(f"resumed from {resume} at step {step}")
    image, _ = read(config.image, config.train_region)
    labels, _ = read(config.labels, config.train_region)
    sampler = Sampler(to_unit(image), labels, config, spec)
    params = sum(p.numel() for p in net.parameters())
    emit(f"unet: {params} parameters, context {list(unet_mod.context(network))}, device {device}, "
         f"precision {precision}, patch {list(config.patch)} x {config.batch_size}")
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    deadline = start_time + config.max_minutes * 60 if config.max_minutes else None
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", unit="step", mininterval=2.0)
    losses: list[float] = []
    step_seconds: list[float] = []

    def checkpoint(final: bool = False) -> None:
        payload = _state(net, optimiser, step, config, {"best_voi": best["voi"] if best else None})
        if not final:
            checkpoints.save(out_dir / f"unet_step{step}.pt", payload)
        checkpoints.save(out_dir / "unet_last.pt", payload)

    def run_validation() -> None:
        nonlocal best
        net.eval()
        model = unet_mod.UNetModel(net, device=device, precision=config.precision)
        rows = validate(model, config)
        net.train()
        if rows:
            row = best_row(rows)
            history.append({"step": step, "rows": rows})
            emit(f"validation step {step}: " + format_rows(rows))
            if best is None or row["voi"] < best["voi"]:
                best = {**row, "step": step}
                checkpoints.save(out_dir / "unet_best.pt", _state(net, optimiser, step, config, {"best_voi": row["voi"]}))

    net.train()
    stopped = "steps"
    while step < config.steps:
        t0 = time.time()
        x, t, m, lsd = sampler.batch(step)
        xt = torch.from_numpy(x).to(device)
        tt, mt = torch.from_numpy(t).to(device), torch.from_numpy(m).to(device)
        lt = torch.from_numpy(lsd).to(device) if lsd is not None else None
        optimiser.zero_grad(set_to_none=True)
        with devices.autocast(device, precision):
            logits = net(xt)
        loss = loss_fn(logits, tt, mt, lt, spec, config)
        loss.backward()
        optimiser.step()
        step += 1
        losses.append(float(loss.detach()))
        step_seconds.append(time.time() - t0)
        bar.update(1)
        if step % config.log_every == 0:
            emit(f"step {step}/{config.steps} loss {np.mean(losses[-config.log_every:]):.4f} "
                 f"{np.mean(step_seconds[-config.log_every:]):.2f} s/step")
        if step % config.checkpoint_every == 0:
            checkpoint()
        if config.val_region is not None and step % config.val_every == 0:
            run_validation()
        if deadline is not None and time.time() > deadline:
            stopped = "max_minutes"
            emit(f"stopping at step {step}: max_minutes {config.max_minutes} reached")
            break
    bar.close()
    if config.val_region is not None and (not history or history[-1]["step"] != step):
        run_validation()
    checkpoint(final=True)
    return {
        "kind": "unet", "network": network.model_dump(mode="json"), "parameters": params, "steps": step,
        "stopped": stopped, "device": device, "precision": precision, "seed": config.seed,
        "image": config.image, "labels": config.labels,
        "train_region": config.train_region.model_dump(mode="json") if config.train_region else None,
        "val_region": config.val_region.model_dump(mode="json") if config.val_region else None,
        "final_loss": float(np.mean(losses[-config.log_every:])) if losses else None,
        "seconds_per_step": float(np.mean(step_seconds)) if step_seconds else None,
        "wall_seconds": round(time.time() - start_time, 1), "validation": history, "best": best,
        "model": str(out_dir / "unet_last.pt"), "machine": platform.processor() or platform.machine(),
    }
