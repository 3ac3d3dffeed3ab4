"""The ``emseg`` command line.

    emseg segment CONFIG [--set key=value ...] [--restart]      run every stage
    emseg stage {1-segment,2-seams,3-unionfind,4-relabel} CONFIG   run one stage (debugging)
    emseg evaluate --segmentation URL --groundtruth URL          print scores as one JSON object
    emseg phantom IMAGE_URL [--labels URL] [--shape Z Y X]       write a synthetic EM volume
    emseg link OUTPUT [--image URL]                              print the Neuroglancer state and URL of a run
    emseg view OUTPUT [--image URL] [--port N]                   serve a local output to a Neuroglancer viewer
    emseg train CONFIG [--resume]                                train a boundary model (forest or U-Net)
    emseg train-ffn CONFIG                                       train a flood-filling network
    emseg plan CONFIG [--volume-shape Z Y X] [--workers W]        estimate blocks, storage, time and cost
    emseg clean OUTPUT                                           remove an output's scratch area
    emseg import SOURCE DEST [--voxel-size Z Y X]                TIFF stack / HDF5 into precomputed or zarr

Errors in the input print one line, ``emseg: error: ...``, and exit with status 2; a run whose
blocks failed exits with status 1 after writing ``run.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from emseg.pipeline.errors import BlocksFailedError, EmsegError
from emseg.pipeline import stages as registry

log = logging.getLogger("emseg")


def _setup_logging(quiet: bool, verbose: bool = False) -> None:
    """emseg's lines on stderr (``emseg: ...``); Dask's own loggers stay at ERROR unless ``verbose``
    (:func:`emseg.tasks.driver.cluster.connect` reads the level)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("emseg: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run configuration (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key with a YAML value, e.g. --set blocks.shape=[64,64,64] or "
                        "--set agglomeration.small=null (null turns an optional part off; repeatable; every key "
                        "and its default: the README's config table)")
    p.add_argument("--restart", action="store_true", help="discard the output's previous results and start over")
    p.add_argument("--workers", type=int, help="worker processes of the local Dask cluster (the config's cluster.workers if absent)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="use an existing Dask scheduler, e.g. tcp://host:8786 (a local cluster if absent)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_log_args(p)


def _load(args: argparse.Namespace) -> Any:
    from emseg.pipeline import config as config_mod

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"cluster.workers={args.workers}")
    if args.cluster:
        overrides.append(f"cluster.address={args.cluster}")
    return config_mod.load(args.config, overrides)


def _summary(cfg: Any, run: dict[str, Any], evaluation: dict[str, Any] | None) -> None:
    from emseg.pipeline.outputs import neuroglancer

    voxels = 1
    for s, e in zip(run["roi"]["start"], run["roi"]["stop"]):
        voxels *= e - s
    print(f"segmented {voxels / 1e6:.1f} Mvoxels in {plural(run['blocks']['total'], 'block')}: "
          f"{plural(run['segments'] or 0, 'segment')}, "
          f"{run['wall_seconds']:.1f} s ({voxels / 1e6 / max(run['wall_seconds'], 1e-9):.3g} Mvoxel/s end to end)")
    for stage, s in run["stages"].items():
        print(f"  {stage:<12} ran {s['ran']:>5}  skipped {s['skipped_done']:>5}  failed {s['failed']:>3}  "
              f"task-seconds {s['task_seconds']:.1f}  cpu-seconds {s.get('task_cpu_seconds', 0.0):.1f}")
    print(f"segmentation: {run['segmentation']}")
    print(f"report:       {cfg.output.rstrip('/')}/run.json")
    if evaluation is not None:
        from emseg.pipeline.quality.metrics import readings

        keys = ("voi_split", "voi_merge", "adapted_rand_error", "precision", "recall", "f1", "mean_iou")
        print("evaluation:   " + json.dumps({k: round(evaluation[k], 4) for k in keys if k in evaluation}))
        print(f"  against the ground truth ({plural(evaluation.get('n_gt', 0), 'true object')}, "
              f"{plural(evaluation.get('n_seg', 0), 'segment')}):")
        for line in readings(evaluation):
            print("  " + line)
        large = evaluation.get("large_objects")
        if large:
            print(f"  the same for objects of {large['min_size']} voxels or more only "
                  f"({plural(large['n_gt'], 'true object')}, {plural(large['n_seg'], 'segment')}; "
                  "evaluate.also_min_size, the convention on FIB-25 where many bodies are tiny fragments):")
            print(f"  {'adapted_rand_error':<20} {large['adapted_rand_error']:.4f}")
            print(f"  {'f1':<20} {large['f1']:.4f}  precision {large['precision']:.4f}, recall {large['recall']:.4f}")
    state = run["neuroglancer"]
    print("neuroglancer state: " + json.dumps(state, separators=(",", ":")))
    if any(neuroglancer.is_local(layer.get("source")) for layer in state["layers"]):
        # A public viewer cannot read local files: the URL that works is the one `emseg view` prints.
        print(f"view it:      emseg view {cfg.output}   (serves the local files and prints the viewer URL)")
    else:
        print("neuroglancer link:  " + neuroglancer.link(state))


def cmd_segment(args: argparse.Namespace, stages: Sequence[str] = registry.SEGMENTATION) -> int:
    from emseg.tasks.driver import report
    from emseg.tasks.driver.run import segment

    cfg = _load(args)
    run = segment(cfg, restart=args.restart, stages=stages, progress=not args.no_progress)
    evaluation = None
    if cfg.evaluate is not None and run["status"] == "complete" and list(stages) == list(registry.SEGMENTATION):
        from emseg.tasks.commands.evaluate import evaluate

        t0 = time.time()
        e = cfg.evaluate
        evaluation = evaluate(run["segmentation"], e.groundtruth, iou_threshold=e.iou_threshold,
                              min_size=e.min_size, ignore_gt_zero=e.ignore_gt_zero, resample=e.resample,
                              also_min_size=e.also_min_size)
        evaluation["seconds"] = round(time.time() - t0, 3)
        run["evaluation"] = evaluation
        report.write(cfg.output, run)
    _summary(cfg, run, evaluation)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    return cmd_segment(args, stages=[args.stage])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emseg.tasks.commands.evaluate import evaluate

    result = evaluate(args.segmentation, args.groundtruth, iou_threshold=args.iou_threshold,
                      min_size=args.min_size, ignore_gt_zero=not args.keep_gt_zero, resample=args.resample)
    print(json.dumps(result))
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from emseg.pipeline.config import ClusterConfig, PhantomConfig
    from emseg.tasks.commands.phantom import write_phantom

    cfg = PhantomConfig(shape=tuple(args.shape), seed=args.seed, voxel_size_nm=tuple(args.voxel_size))
    write_phantom(cfg, args.image, args.labels, cluster=ClusterConfig(workers=args.workers or 2))
    print(f"phantom image: {args.image}" + (f"\nphantom labels: {args.labels}" if args.labels else ""))
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from emseg.tasks.commands import view

    run, state, url = view.link(args.output, image=args.image)
    print(json.dumps(state, indent=2))
    if url is not None:
        print(url)
    else:
        print(f"emseg: the layers are local files, which a public viewer cannot read; `emseg view {args.output}` "
              "serves them and prints the URL that works", file=sys.stderr)
    if run.get("status") != "complete":
        failed = len(run.get("failures") or [])
        print(f"emseg: warning: the run in {args.output} did not complete (status {run.get('status')!r}, "
              f"{plural(failed, 'failure')}); its segmentation is partial or missing", file=sys.stderr)
        return 1
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from emseg.tasks.commands import view

    lock = threading.Lock()

    def echo(line: str) -> None:
        # The server answers on many threads: a lock and one write per line keep the lines whole
        # (a plain print writes the text and the newline separately, and two requests interleave).
        with lock:
            sys.stdout.write(f"emseg view: {line}\n")
            sys.stdout.flush()

    session = view.serve(args.output, image=args.image, host=args.host, port=args.port,
                         echo=echo if args.log_requests else None)
    try:
        print(f"neuroglancer: {session.url}", flush=True)
        print(f"data:         {session.server.url}{view.DATA_PREFIX}/output/   (Ctrl-C stops)", flush=True)
        if args.open:
            import webbrowser

            if not webbrowser.open(session.url):
                print("emseg view: no browser could be started here; open the URL above", file=sys.stderr)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("emseg view: stopped", file=sys.stderr)
    finally:
        session.close()
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (``(default: ...)``), except None, False and [] (an absent option,
    an unset flag, nothing appended: its help says what happens then), and keeps descriptions as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, []) or "%(default)" in text or "default" in text:
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: defaults shown in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _add_log_args(p: argparse.ArgumentParser, *, quiet: bool = True) -> None:
    if quiet:
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug lines, and the Dask scheduler's and workers' own logs (quiet otherwise)")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 segment"``, ``"2 segments"``.

    >>> plural(1, "block"), plural(3, "block"), plural(0, "failure")
    ('1 block', '3 blocks', '0 failures')
    """
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("emseg")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emseg", description="Chunked segmentation of large EM volumes.",
                     epilog="`emseg COMMAND --help` shows a command's options and their defaults.")
    parser.add_argument("--version", action="version", version=f"emseg {_version()}",
                        help="print emseg's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("segment", help="run every stage of a segmentation")
    _add_run_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("stage", help="run one stage (the earlier ones must be complete)")
    p.add_argument("stage", choices=registry.SEGMENTATION, help="the stage to run: " + "; ".join(f"{s} ({registry.describe(s)})" for s in registry.SEGMENTATION))
    _add_run_args(p)
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("evaluate", help="score a segmentation against ground truth (one JSON object)")
    p.add_argument("--segmentation", required=True, help="volume URL or path of the segmentation")
    p.add_argument("--groundtruth", required=True, help="volume URL or path of the ground truth")
    p.add_argument("--iou-threshold", type=float, default=0.5,
                   help="IoU above which a segment matches a ground-truth object (one-to-one)")
    p.add_argument("--min-size", type=int, default=0, help="ignore ground-truth objects under this many voxels")
    p.add_argument("--keep-gt-zero", action="store_true",
                   help="score ground-truth label 0 like any other label (it is ignored otherwise)")
    p.add_argument("--resample", action="store_true",
                   help="score on the finer grid when the voxel sizes differ by whole factors (default: refuse)")
    _add_log_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("phantom", help="write a synthetic EM-like volume with ground truth")
    p.add_argument("image", help="precomputed:// URL or path for the image")
    p.add_argument("--labels", help="precomputed:// URL or path for the ground-truth labels (none written if absent)")
    p.add_argument("--shape", type=int, nargs=3, default=[256, 256, 256], metavar=("Z", "Y", "X"),
                   help="volume shape in voxels")
    p.add_argument("--voxel-size", type=float, nargs=3, default=[10.0, 10.0, 10.0], metavar=("Z", "Y", "X"),
                   help="voxel size in nanometres (10: FIB-25's, on which the phantom is calibrated)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same volume)")
    p.add_argument("--workers", type=int, help="local Dask worker processes (2 if absent)")
    _add_log_args(p)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("link", help="print the Neuroglancer state and link of a finished run")
    p.add_argument("output", help="the run's output directory or URL")
    p.add_argument("--image", help="image layer URL or path (the run's input if absent)")
    _add_log_args(p)
    p.set_defaults(func=cmd_link)

    p = sub.add_parser("view", help="serve a local output and open it in a Neuroglancer viewer")
    p.add_argument("output", help="the run's output directory")
    p.add_argument("--image", help="image layer URL or local path (the run's input if absent)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 serves other machines (no authentication: trusted networks only)")
    p.add_argument("--port", type=int, default=0, help="the one port for viewer and data; 0 takes any free port")
    p.add_argument("--open", action="store_true", help="also open the viewer in this machine's web browser")
    p.add_argument("--log-requests", action="store_true", help="print one line per data request")
    _add_log_args(p)
    p.set_defaults(func=cmd_view)

    from emseg.tasks.commands import estimate

    p = sub.add_parser("plan", help="estimate blocks, storage, time and cost of a run from a few calibration blocks")
    estimate.add_arguments(p)
    _add_log_args(p, quiet=False)
    p.set_defaults(func=estimate.run)

    from emseg.tasks.commands import import_volume

    p = sub.add_parser("import", help="copy a TIFF stack or HDF5 dataset into a chunked store emseg and Neuroglancer read")
    import_volume.add_arguments(p)
    _add_log_args(p)
    p.set_defaults(func=import_volume.run)

    from emseg.tasks.commands import clean

    p = sub.add_parser("clean", help="remove an output's scratch area (a later run into it starts over)")
    clean.add_arguments(p)
    _add_log_args(p)
    p.set_defaults(func=clean.run)

    from emseg.tasks.commands import train as train_boundary

    p = sub.add_parser("train", help="train a boundary model (forest or U-Net) on a labelled volume")
    train_boundary.add_arguments(p)
    _add_log_args(p)
    p.set_defaults(func=train_boundary.run)

    try:
        from emseg.tasks.commands import train_ffn
    except ImportError:
        train_ffn = None  # type: ignore[assignment]
    if train_ffn is not None and hasattr(train_ffn, "add_arguments"):
        p = sub.add_parser("train-ffn", help="train a flood-filling network on a labelled volume")
        train_ffn.add_arguments(p)
        _add_log_args(p)
        p.set_defaults(func=lambda a: train_ffn.run(a))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except BlocksFailedError as exc:
        print(f"emseg: error: {exc}", file=sys.stderr)
        return 1
    except EmsegError as exc:
        print(f"emseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emseg: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
