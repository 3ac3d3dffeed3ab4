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

from emseg.pipeline.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``emseg train-ffn``."""
    parser.add_argument("config", help="YAML training configuration (see configs/ffn_fib25_train.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set steps=100 --set model.width=8 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _apply_override(raw: dict[str, Any], item: str) -> None:
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set steps=100")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section of the config")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def load_config(path: str, overrides: list[str]) -> Any:
    """The validated training config from ``path`` with ``--set`` overrides applied."""
    import yaml
    from pydantic import ValidationError

    from emseg.pipeline.backends.ffn.config import TrainConfig

    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"no training config at {path!r}; pass the path of a YAML file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for item in overrides:
        _apply_override(raw, item)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: key {where!r}: {first['msg']} (keys are listed in docs/ffn.md)") from None


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
