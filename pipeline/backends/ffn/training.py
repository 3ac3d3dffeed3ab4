"""Training the FFN on a labelled volume.

One step takes a batch of patches (:mod:`emseg.pipeline.backends.ffn.sampling`) and runs the network as inference
would: the first FOV sits at the patch centre with the seed set in an otherwise unexplored object map;
each of ``moves`` further FOVs is shifted by one step towards the face where the predicted object is
strongest (or, if no face passes ``MOVE_THRESHOLD``, towards a face the true object crosses), and sees
the network's own earlier prediction, detached, as its object map. The loss is the voxel-weighted
binary cross-entropy of every FOV's logits against the object under the seed.

Logs go to ``<output>/train.log`` as plain lines (``step 100/2000 loss 0.4123 acc 0.8312 ...``) and
to a progress bar; checkpoints to ``<output>/ffn_step{N}.pt`` and ``<output>/ffn_last.pt``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emseg.pipeline.backends.ffn.config import ModelConfig, Region, TrainConfig
from emseg.pipeline.backends.device import autocast, resolve_device, resolve_precision
from emseg.pipeline.backends.device import describe as describe_device
from emseg.pipeline.backends.ffn.model import FFN
from emseg.pipeline.backends.ffn.sampling import Batch, PatchSampler
from emseg.pipeline.errors import ConfigError
from emseg.pipeline.backends.ffn.weights import bundled_path, load_checkpoint, load_state, save_checkpoint

Vec3 = tuple[int, int, int]

#: a face whose predicted object probability reaches this is where the FOV moves in training
MOVE_THRESHOLD = 0.9


def read_region(url: str, region: Region | None) -> np.ndarray:
    """Read ``region`` (the whole volume if None) of the volume at ``url`` as a numpy array.

    Uses :func:`emseg.pipeline.io.volume.open_volume`, so any URL emseg reads works (zarr, n5, precomputed;
    local, ``gs://``, ``s3://``, ``http``).
    """
    from emseg.pipeline.geometry import Box
    from emseg.pipeline.io.volume import open_volume

    volume = open_volume(url)
    box = volume.box if region is None else Box(region.start, region.stop)
    if not volume.box.contains(box):
        from emseg.pipeline.errors import RegionError

        raise RegionError(
            f"region {list(box.start)}..{list(box.stop)} lies outside {url} of shape "
            f"{list(volume.shape_zyx)}; give a region inside the volume"
        )
    return np.asarray(volume.read(box))


def patch_size(model: ModelConfig, moves: int) -> tuple[int, int, int]:
    """The training patch: the FOV plus room for ``moves`` steps on either side."""
    return tuple(f + 2 * moves * s for f, s in zip(model.fov_size, model.step))  # type: ignore[return-value]


def _crop(t: torch.Tensor, offsets: list[tuple[int, int, int]], size: tuple[int, int, int]) -> torch.Tensor:
    return torch.stack(
        [t[i, o[0] : o[0] + size[0], o[1] : o[1] + size[1], o[2] : o[2] + size[2]] for i, o in enumerate(offsets)]
    )


def _next_offsets(
    offsets: list[tuple[int, int, int]],
    pred: torch.Tensor,
    target: torch.Tensor,
    model: ModelConfig,
    patch: tuple[int, int, int],
    rng: np.random.Generator,
) -> list[tuple[int, int, int]]:
    """Move every sample's FOV by one step: to the strongest predicted face, else a true one."""
    fov, step, radius = model.fov_size, model.step, model.fov_radius
    prob = torch.sigmoid(pred.float()).cpu().numpy()
    true = target.cpu().numpy()
    out = []
    for i, off in enumerate(offsets):
        best, best_score, truthful = None, -1.0, []
        for axis in range(3):
            for sign in (-1, 1):
                new = list(off)
                new[axis] += sign * step[axis]
                if not 0 <= new[axis] <= patch[axis] - fov[axis]:
                    continue
                plane = [slice(None)] * 3
                plane[axis] = radius[axis] + sign * step[axis]
                score = float(prob[i][tuple(plane)].max())
                if score > best_score:
                    best, best_score = tuple(new), score
                if true[i][tuple(plane)].any():
                    truthful.append(tuple(new))
        if best_score >= MOVE_THRESHOLD:
            out.append(best)
        elif truthful:
            out.append(truthful[rng.integers(len(truthful))])
        else:
            out.append(best if best is not None else off)
    return out


def run_fovs(
    net: FFN,
    batch: Batch,
    moves: int,
    device: str,
    precision: str,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded first FOV plus ``moves`` moved FOVs on a batch.

    Returns
    -------
    loss, correct, counted
        The mean weighted BCE over all FOVs (with a graph when grad is enabled), and the numbers of
        correctly classified and of counted (weight 1) voxels.
    """
    config = net.config
    fov = config.fov_size
    image = torch.from_numpy(batch.image).to(device)
    target = torch.from_numpy(batch.target).to(device)
    weight = torch.from_numpy(batch.weight).to(device)
    b, patch = image.shape[0], tuple(image.shape[1:])
    canvas = torch.full((b, *patch), config.init_logit, device=device)
    centre = tuple(p // 2 for p in patch)
    canvas[(slice(None), *centre)] = config.seed_logit
    offsets = [tuple(c - r for c, r in zip(centre, config.fov_radius))] * b
    losses = []
    correct = torch.zeros((), device=device)
    counted = torch.zeros((), device=device)
    for it in range(moves + 1):
        img = _crop(image, offsets, fov)[:, None]
        pom = _crop(canvas, offsets, fov)[:, None]
        tgt = _crop(target, offsets, fov)
        wgt = _crop(weight, offsets, fov)
        with autocast(device, precision):
            logits = net(img, pom)[:, 0].float()
        bce = F.binary_cross_entropy_with_logits(logits, tgt, weight=wgt, reduction="sum")
        losses.append(bce / wgt.sum().clamp(min=1.0))
        with torch.no_grad():
            correct += (((logits > 0).float() == tgt).float() * wgt).sum()
            counted += wgt.sum()
            new_canvas = canvas.clone()
            for i, o in enumerate(offsets):
                new_canvas[i, o[0] : o[0] + fov[0], o[1] : o[1] + fov[1], o[2] : o[2] + fov[2]] = logits[i]
            canvas = new_canvas
            if it < moves:
                offsets = _next_offsets(offsets, logits, tgt, config, patch, rng)
    return torch.stack(losses).mean(), correct, counted


def _network(config: TrainConfig, raw: np.ndarray) -> tuple[Any, dict[str, Any] | None]:
    """The network to train and the checkpoint it starts from (None: random weights).

    From ``init_checkpoint``, the checkpoint's network (the config may not name other values for its
    keys: :class:`ConfigError`); else ``config.model``, normalised from the data when asked.
    """
    if config.init_checkpoint is not None:
        location = str(bundled_path()) if config.init_checkpoint == "bundled" else config.init_checkpoint
        init = load_checkpoint(location)
        theirs, ours = init["model"].model_dump(), config.model.model_dump()
        diff = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in sorted(config.model.model_fields_set)
                         if theirs[k] != ours[k])  # only the keys the config names
        if diff:
            raise ConfigError(
                f"init_checkpoint {config.init_checkpoint} holds another network than `model` ({diff}, "
                "checkpoint vs config); drop those keys to fine-tune the checkpoint's network"
            )
        return init["model"], init
    if config.normalise_from_data:
        return config.model.model_copy(
            update={"image_mean": round(float(raw.mean()), 3), "image_stddev": round(float(raw.std()) or 1.0, 3)}
        ), None
    return config.model, None


def _validation_batches(config: TrainConfig, norm: Callable[[np.ndarray], np.ndarray], patch: Vec3) -> list[Batch]:
    """Fixed validation batches from ``val_region`` (seeded apart from training), none without one."""
    batches: list[Batch] = []
    if config.val_region is None:
        return batches
    val_raw = read_region(config.image, config.val_region)
    val_lab = read_region(config.labels, config.val_region)
    val_sampler = PatchSampler(
        norm(val_raw), val_lab, patch, config.interior_fraction, False, np.random.default_rng(config.seed + 1)
    )
    left = config.val_samples
    while left > 0:
        batches.append(val_sampler.sample(min(left, config.batch_size)))
        left -= config.batch_size
    return batches


def learning_rate(config: TrainConfig, step: int) -> float:
    """Cosine decay from ``learning_rate`` to ``lr_final_fraction`` of it over ``steps``."""
    cos = 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
    return config.learning_rate * (config.lr_final_fraction + (1 - config.lr_final_fraction) * cos)


def _validate(net: Any, batches: list[Batch], config: TrainConfig, device: str, precision: str) -> tuple[float, float]:
    """Mean loss and voxel accuracy of ``net`` on the validation batches (same draws every time)."""
    net.eval()
    vrng = np.random.default_rng(config.seed + 2)
    loss_sum = correct = counted = 0.0
    with torch.no_grad():
        for vb in batches:
            loss, c, n = run_fovs(net, vb, config.moves, device, precision, vrng)
            loss_sum += float(loss) * vb.image.shape[0]
            correct += float(c)
            counted += float(n)
    net.train()
    return loss_sum / max(1, sum(vb.image.shape[0] for vb in batches)), correct / max(counted, 1.0)


def train(
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train an FFN as ``config`` says; returns a summary (also stored in the checkpoint's meta).

    Parameters
    ----------
    config
        The training run.
    progress
        Show a tqdm progress bar.
    log
        Where log lines go besides ``<output>/train.log`` (default: the progress bar's ``write``).
    """
    from tqdm.auto import tqdm

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    out_dir = Path(config.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train.log"

    def emit(line: str) -> None:
        # Opened per line (every log_every steps), so no handle is left open when training raises.
        with open(log_path, "a") as log_file:
            log_file.write(line + "\n")
        (log or tqdm.write)(line)

    raw = read_region(config.image, config.train_region)
    labels = read_region(config.labels, config.train_region)
    model, init = _network(config, raw)
    norm = lambda a: ((a.astype(np.float32) - model.image_mean) / model.image_stddev)  # noqa: E731
    patch = patch_size(model, config.moves)
    sampler = PatchSampler(norm(raw), labels, patch, config.interior_fraction, config.augment, rng)
    val_batches = _validation_batches(config, norm, patch)

    net = FFN(model)
    if init is not None:
        load_state(net, init)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    n_params = sum(p.numel() for p in net.parameters())
    emit(
        f"start: {n_params} parameters, fov {list(model.fov_size)}, step {list(model.step)}, depth "
        f"{model.depth}, width {model.width}, patch {list(patch)}, batch {config.batch_size}, "
        f"{config.steps} steps, device {describe_device(device)}, precision {precision}, "
        f"image mean {model.image_mean} std {model.image_stddev}, train region {list(raw.shape)}"
        + ("" if init is None else f", from {init['path']} ({init['meta'].get('steps', '?')} steps)")
    )

    def lr_at(step: int) -> float:
        return learning_rate(config, step)

    def validate() -> tuple[float, float]:
        return _validate(net, val_batches, config, device, precision)

    start = time.monotonic()
    summary: dict[str, Any] = {}
    window_loss = window_correct = window_counted = 0.0
    window_n = 0
    step = 0
    bar = tqdm(total=config.steps, disable=not progress, desc="train-ffn", unit="step", mininterval=2.0)
    net.train()
    try:
        for step in range(1, config.steps + 1):
            for group in opt.param_groups:
                group["lr"] = lr_at(step - 1)
            batch = sampler.sample(config.batch_size)
            loss, c, n = run_fovs(net, batch, config.moves, device, precision, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window_loss += loss.item()
            window_correct += float(c)
            window_counted += float(n)
            window_n += 1
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                train_loss, train_acc = window_loss / window_n, window_correct / max(window_counted, 1.0)
                bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{train_acc:.4f}")
                emit(
                    f"step {step}/{config.steps} loss {train_loss:.4f} acc {train_acc:.4f} "
                    f"lr {lr_at(step - 1):.2e} elapsed {time.monotonic() - start:.1f}s"
                )
                summary.update(train_loss=round(train_loss, 5), train_acc=round(train_acc, 5))
                window_loss = window_correct = window_counted = 0.0
                window_n = 0
            if val_batches and (step % config.val_every == 0 or step == config.steps):
                vloss, vacc = validate()
                emit(f"val step {step} loss {vloss:.4f} acc {vacc:.4f}")
                summary.update(val_loss=round(vloss, 5), val_acc=round(vacc, 5))
            if step % config.checkpoint_every == 0:
                save_checkpoint(out_dir / f"ffn_step{step}.pt", net, _meta(config, summary, step, start, device))
            if config.max_minutes is not None and time.monotonic() - start > 60 * config.max_minutes:
                emit(f"stopping at step {step}: max_minutes {config.max_minutes} reached")
                if val_batches and step % config.val_every != 0:
                    vloss, vacc = validate()
                    emit(f"val step {step} loss {vloss:.4f} acc {vacc:.4f}")
                    summary.update(val_loss=round(vloss, 5), val_acc=round(vacc, 5))
                break
    finally:
        bar.close()
    meta = _meta(config, summary, step, start, device)
    save_checkpoint(out_dir / "ffn_last.pt", net, meta)
    emit(f"done: {step} steps in {meta['wall_s']:.0f}s; checkpoint {out_dir / 'ffn_last.pt'}")
    return meta


def _meta(config: TrainConfig, summary: dict[str, Any], step: int, start: float, device: str) -> dict[str, Any]:
    region = lambda r: "all" if r is None else f"{list(r.start)}..{list(r.stop)}"  # noqa: E731
    return {
        "steps": step,
        "wall_s": round(time.monotonic() - start, 1),
        "hardware": describe_device(device),
        "torch": torch.__version__,
        "image": config.image,
        "labels": config.labels,
        "train_region": region(config.train_region),
        "val_region": region(config.val_region),
        "batch_size": config.batch_size,
        "moves": config.moves,
        "seed": config.seed,
        "init_checkpoint": config.init_checkpoint,
        **summary,
    }
