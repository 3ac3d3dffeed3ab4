"""``emseg train-ffn CONFIG``: train a flood-filling network on a labelled volume.

The config is a YAML :class:`emseg.pipeline.backends.ffn.config.TrainConfig` (unknown keys rejected), e.g.
``configs/ffn_fib25_train.yaml``; ``--set key=value`` overrides a key (dotted for nested keys, the
value read as YAML: ``--set steps=100 --set model.width=8``). The run prints a progress bar and plain
log lines, and writes ``train.log`` and checkpoints into ``output``. Training runs on the CPU and uses
the GPU when there is one (``device: auto``).

This module imports no torch until :func:`run` is called (the CLI imports it to build its parser).
"""

from __future__ import annotations

import argparse
import json
from typing import Any



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``emseg train-ffn``."""
    parser.add_argument("config", help="YAML training configuration (see configs/ffn_fib25_train.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set steps=100 --set model.width=8 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def load_config(path: str, overrides: list[str]) -> Any:
    """The validated :class:`~emseg.pipeline.backends.ffn.config.TrainConfig` from ``path`` with
    ``--set`` overrides applied; :class:`ConfigError` names the file and the key (keys: docs/ffn.md)."""
    from emseg.pipeline.backends.ffn.config import TrainConfig
    from emseg.pipeline.config import read_yaml, validate

    return validate(TrainConfig, read_yaml(path, "training config"), overrides, where=path)


def run(args: argparse.Namespace) -> int:
    """Train as the config says; prints a JSON summary at the end. Returns the exit status."""
    config = load_config(args.config, list(args.overrides))
    from emseg.pipeline.backends.ffn.training import train

    quiet = getattr(args, "quiet", False)
    summary = train(
        config,
        progress=not args.no_progress and not quiet,
        log=(lambda line: None) if quiet else None,  # None: lines go through the progress bar
    )
    print(json.dumps(summary, sort_keys=True))
    return 0
