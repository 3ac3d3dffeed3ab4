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

from emseg.pipeline.errors import ConfigError
from emseg.tasks.commands.train_ffn import _apply_override


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
    """The validated :class:`TrainConfig` from ``path`` with ``--set`` overrides applied.

    Raises
    ------
    ConfigError
        Missing file, not a mapping, or a key that is unknown or invalid (named in the message).
    """
    import yaml
    from pydantic import ValidationError

    from emseg.pipeline.backends.boundary.config import TrainConfig

    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"no training config at {path!r}; pass the path of a YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for item in overrides:
        _apply_override(raw, item)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = first["msg"].replace("\n", " ")
        raise ConfigError(f"{path}: key {where!r}: {msg} (keys are listed in docs/boundary.md)") from None


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
