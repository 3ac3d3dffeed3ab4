"""``emseg train CONFIG``: train a boundary model (forest or U-Net) on a labelled volume.

The config is a YAML :class:`emseg.pipeline.backends.boundary.config.TrainConfig` (unknown keys rejected), with
``model: {kind: forest | unet, ...}``, e.g. ``configs/forest_fib25_train.yaml`` or
``configs/unet_fib25_train.yaml``; ``--set key=value`` overrides a key (dotted for nested keys, the
value read as YAML) and ``--resume`` continues a U-Net run from ``<output>/unet_last.pt``. The run
prints a progress bar and plain log lines, writes ``train.log``, the model, checkpoints and
``summary.json`` into ``output``, and prints the summary as one JSON line at the end.

``emseg train-ffn`` trains the flood-filling network (tasks/commands/train_ffn.py). This module imports no
torch or scikit-learn until :func:`run` is called.
"""

from __future__ import annotations

import argparse
import json
from typing import Any



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``emseg train``."""
    parser.add_argument("config", help="YAML training configuration (see configs/forest_fib25_train.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set steps=100 --set model.width=8 (repeatable)",
    )
    parser.add_argument("--resume", action="store_true",
                        help="U-Net: continue from <output>/unet_last.pt (same as --set resume=auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def load_config(path: str, overrides: list[str]) -> Any:
    """The validated :class:`~emseg.pipeline.backends.boundary.config.TrainConfig` from ``path`` with
    ``--set`` overrides applied; :class:`ConfigError` names the file and the key (keys: docs/boundary.md)."""
    from emseg.pipeline.backends.boundary.config import TrainConfig
    from emseg.pipeline.config import read_yaml, validate

    return validate(TrainConfig, read_yaml(path, "training config"), overrides, where=path)


def run(args: argparse.Namespace) -> int:
    """Train as the config says; prints a JSON summary at the end. Returns the exit status."""
    overrides = list(args.overrides) + (["resume=auto"] if args.resume else [])
    config = load_config(args.config, overrides)
    from emseg.pipeline.backends.boundary.training import train

    quiet = getattr(args, "quiet", False)
    summary = train(
        config,
        progress=not args.no_progress and not quiet,
        log=(lambda line: None) if quiet else None,
    )
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0
