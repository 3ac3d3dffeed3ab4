"""Training boundary models on a labelled volume: the forest in one fit, the U-Net by steps.

Both read any volume emseg reads (:func:`emseg.pipeline.backends.ffn.training.read_region`), split train and
validation by region, and validate the whole path the product runs: affinities -> fragments +
agglomeration (:mod:`emseg.pipeline.backends.boundary.validation`) -> VOI split / merge and adapted Rand on the
held-out region, at every configured threshold.

Outputs in ``config.output``: the model (``forest.skops`` or ``unet_last.pt`` plus
``unet_step{N}.pt``), ``train.log`` (plain lines) and ``summary.json`` (what the run did and scored).

U-Net steps: a random patch per batch item (flips, y/x transposes and intensity augmentation), the
targets are nearest-neighbour affinities of the labels (1 inside an object, 0 across a boundary,
masked where either voxel is unlabelled), the loss is binary cross-entropy with each class weighed
to a fixed share (``boundary_weight``), as the rare boundary class would otherwise be drowned out.
Draws of step ``s`` come from ``numpy.random.default_rng([seed, s])``, so a resumed run draws what
an uninterrupted one would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emseg.pipeline.backends.boundary import augment as aug
from emseg.pipeline.backends.boundary import features as feats
from emseg.pipeline.backends.boundary import forest as forest_mod
from emseg.pipeline.backends.boundary.config import ForestSpec, TrainConfig
from emseg.pipeline.backends.boundary.validation import best_row, format_rows, read, to_unit, validate
from emseg.pipeline.errors import ConfigError

Log = Callable[[str], None]


class _Logger:
    def __init__(self, out_dir: Path, log: Log | None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "train.log", "a")
        self.log = log

    def __call__(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()
        if self.log is not None:
            self.log(line)

    def close(self) -> None:
        self.file.close()


def train(config: TrainConfig, *, progress: bool = True, log: Log | None = None) -> dict[str, Any]:
    """Train the model ``config.model`` names; returns the summary also written to ``summary.json``."""
    out_dir = Path(config.output)
    if log is None:
        from tqdm.auto import tqdm

        log = tqdm.write
    logger = _Logger(out_dir, log)
    try:
        if isinstance(config.model, ForestSpec):
            summary = _train_forest(config, config.model, out_dir, logger)
        else:
            from emseg.pipeline.backends.boundary.unet_training import train_unet

            summary = train_unet(config, config.model, out_dir, logger, progress=progress)
    finally:
        logger.close()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def _train_forest(config: TrainConfig, spec: ForestSpec, out_dir: Path, emit: _Logger) -> dict[str, Any]:
    import platform

    import sklearn

    start = time.time()
    rng = np.random.default_rng(config.seed)
    image, _ = read(config.image, config.train_region)
    labels, _ = read(config.labels, config.train_region)
    if image.shape != labels.shape:
        raise ConfigError(f"image {image.shape} and labels {labels.shape} differ in shape; give matching volumes")
    image = to_unit(image)
    target = forest_mod.boundary_target(labels)
    counts = [int((target == c).sum()) for c in (0, 1)]
    if min(counts) == 0:
        raise ConfigError(
            f"the training region has {counts[1]} boundary and {counts[0]} interior voxels; it needs both "
            "(give a region with several labelled objects)"
        )
    emit(f"forest: {image.shape} training voxels, {counts[1]} boundary / {counts[0]} interior")
    copies = 1 + spec.augmented_copies
    per_copy = max(1, spec.voxels_per_class // copies)
    xs, ys = [], []
    t0 = time.time()
    for c in range(copies):
        img = image if c == 0 else aug.intensity(image, rng, config.intensity)
        f = feats.compute(img)
        idx = forest_mod.sample_voxels(target, per_copy, rng)
        xs.append(f.reshape(-1, feats.NUM_FEATURES)[idx])
        ys.append(target.reshape(-1)[idx])
        del f
        emit(f"features of copy {c + 1}/{copies}: {len(idx)} voxels sampled ({time.time() - t0:.1f} s so far)")
    x, y = np.concatenate(xs), np.concatenate(ys)
    feature_seconds = time.time() - t0
    t0 = time.time()
    classifier = forest_mod.make_classifier(spec.classifier, config.seed, **spec.params)
    classifier.fit(x, y)
    fit_seconds = time.time() - t0
    emit(f"fitted {spec.classifier} on {len(y)} voxels in {fit_seconds:.1f} s")
    model = forest_mod.ForestModel(classifier)
    t0 = time.time()
    rows = validate(model, config)
    val_seconds = time.time() - t0
    if rows is not None:
        emit("validation: " + format_rows(rows))
    summary: dict[str, Any] = {
        "kind": "forest", "classifier": spec.classifier, "params": dict(spec.params),
        "training_voxels": int(len(y)), "copies": copies, "seed": config.seed,
        "image": config.image, "labels": config.labels,
        "train_region": config.train_region.model_dump(mode="json") if config.train_region else None,
        "val_region": config.val_region.model_dump(mode="json") if config.val_region else None,
        "feature_seconds": round(feature_seconds, 1), "fit_seconds": round(fit_seconds, 1),
        "validation_seconds": round(val_seconds, 1), "wall_seconds": round(time.time() - start, 1),
        "validation": rows, "best": best_row(rows) if rows else None,
        "sklearn": sklearn.__version__, "machine": platform.processor() or platform.machine(),
    }
    model.meta = {
        "classifier": spec.classifier, "training_voxels": int(len(y)), "seed": config.seed,
        "train_region": json.dumps(summary["train_region"]), "image": config.image,
        "wall_seconds": summary["wall_seconds"], "sklearn": sklearn.__version__,
    }
    model.save(out_dir / "forest.skops")
    summary["model"] = str(out_dir / "forest.skops")
    emit(f"wrote {summary['model']} ({(out_dir / 'forest.skops').stat().st_size / 1e6:.2f} MB)")
    return summary


def log_lines(rows: list[dict[str, Any]] | None) -> str:
    """One log line of validation rows."""
    return format_rows(rows) if rows else "no validation region"


