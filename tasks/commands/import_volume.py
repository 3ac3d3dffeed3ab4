"""``emseg import SOURCE DEST``: a TIFF stack, an HDF5 dataset (or any volume emseg reads) into a
chunked store that emseg and Neuroglancer read, box by box.

::

    SOURCE  a directory / glob of 2-D TIFF slices, one TIFF file, FILE.h5 (--dataset or FILE.h5:/path),
            or a volume URL (n5://, zarr://, precomputed://)          pipeline/io/importers.py reads them
    DEST    precomputed://PATH (the default for a bare path: Neuroglancer reads its voxel size and
            offset from the info) or zarr://PATH (zarr v2, ``resolution_nm`` and ``voxel_offset`` in
            .zattrs, which emseg reads)

The volume is copied in boxes of whole destination chunks (``--block``, a few slices deep), so at
most one box plus the writes in flight are in memory, whatever the volume's size. Voxel size and
offset come from the source's metadata, or from ``--voxel-size`` / ``--offset`` (which override it);
a source that records no voxel size and gets none is refused. The destination must not exist and
must not overlap the source (the source is only read).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from emseg.pipeline.io import urls
from emseg.pipeline.errors import ConfigError, OutputExistsError
from emseg.pipeline.geometry import BlockGrid, Box
from emseg.pipeline.io.importers import open_source
from emseg.pipeline.io import kvstore

log = logging.getLogger("emseg")

PRECOMPUTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")


def _dest(dest: str) -> tuple[str, str]:
    """(format, store URL) of the destination: ``precomputed`` or ``zarr``."""
    head, sep, rest = dest.partition("://")
    if sep and head in ("precomputed", "zarr", "zarr2"):
        return ("zarr" if head.startswith("zarr") else "precomputed"), urls.store_url(rest)
    if sep and head not in urls.STORE_SCHEMES:
        raise ConfigError(f"emseg import writes precomputed:// or zarr:// destinations, not {head}://")
    return "precomputed", urls.store_url(dest)


def _exists(store: str) -> bool:

    kv = urls.open_kvstore(store)
    return bool(kvstore.list_keys(kv))


def import_volume(source: str, dest: str, *, dataset: str | None = None, voxel_size_nm: Sequence[float] | None = None,
                  offset_zyx: Sequence[int] | None = None, chunk_zyx: Sequence[int] = (64, 64, 64),
                  block_zyx: Sequence[int] | None = None, layer_type: str = "image", progress: bool = True,
                  ) -> dict[str, Any]:
    """Copy ``source`` to ``dest`` box by box; returns what was written (format, URL, shape, voxel size,
    offset, seconds).

    Raises :class:`ConfigError` for a missing voxel size, an unsupported dtype or an overlapping
    destination, :class:`OutputExistsError` when ``dest`` holds data, and
    :class:`~emseg.pipeline.errors.VolumeNotFoundError` when the source is missing.
    """
    from emseg.pipeline.io.volume import create_precomputed, create_zarr, open_volume

    fmt, store = _dest(dest)
    src = open_source(source, dataset)
    if src is None:
        vol = open_volume(source)
        name, shape, dtype = source, vol.shape_zyx, vol.dtype
        voxel0: tuple[float, float, float] | None = vol.voxel_size_nm
        offset0: tuple[int, int, int] | None = vol.offset_zyx
        read = vol.read
        close = lambda: None  # noqa: E731
        src_store = urls.source_store(source)
    else:
        name, shape, dtype, voxel0, offset0 = src.name, src.shape_zyx, src.dtype, src.voxel_size_nm, src.offset_zyx
        read, close = src.read, src.close
        src_store = urls.store_url(source.partition(".h5:")[0] + (".h5" if ".h5:" in source else ""))
    try:
        if src_store is not None and urls.overlaps(src_store, store) is not None:
            raise ConfigError(f"the destination {dest} overlaps the source {source}; emseg import only reads its "
                              "source — choose a destination outside it")
        voxel = tuple(float(v) for v in voxel_size_nm) if voxel_size_nm is not None else voxel0
        if voxel is None:
            raise ConfigError(f"{name} does not record its voxel size; give it with --voxel-size Z Y X (nm)")
        if len(voxel) != 3 or min(voxel) <= 0:
            raise ConfigError(f"--voxel-size needs three positive numbers (z, y, x nm), got {list(voxel)}")
        offset = tuple(int(v) for v in offset_zyx) if offset_zyx is not None else (offset0 or (0, 0, 0))
        if dtype.name == "float64" and fmt == "precomputed":
            raise ConfigError(f"{name} is float64, which precomputed cannot store; write zarr://{dest} instead")
        if fmt == "precomputed" and dtype.name not in PRECOMPUTED_DTYPES:
            raise ConfigError(f"{name} is {dtype.name}; precomputed stores {', '.join(PRECOMPUTED_DTYPES)}")
        if _exists(store):
            raise OutputExistsError(f"{dest} already holds data; choose a new destination or remove it")
        chunk = tuple(min(int(c), s) for c, s in zip(chunk_zyx, shape))
        if block_zyx is None:
            # a few chunks deep, whole chunks across, about 64 Mi voxels at most
            block = [chunk[0], chunk[1] * max(1, 1024 // chunk[1]), chunk[2] * max(1, 1024 // chunk[2])]
        else:
            block = [int(b) for b in block_zyx]
        if any(b % c for b, c in zip(block, chunk)):
            raise ConfigError(f"--block {block} must be a multiple of the chunk shape {list(chunk)}")
        t0 = time.time()
        if fmt == "precomputed":
            out = create_precomputed(store, layer_type=layer_type, dtype=dtype.name, shape_zyx=shape,  # type: ignore[arg-type]
                                     voxel_size_nm=voxel, offset_zyx=offset, chunk_zyx=chunk)
        else:
            out = create_zarr(store, dtype=dtype.name, shape_zyx=shape, chunk_zyx=chunk, voxel_size_nm=voxel)
            kv = urls.open_kvstore(store)
            attrs = json.loads(kv.read(".zattrs").result().value)
            attrs["voxel_offset"] = list(offset)
            kv.write(".zattrs", json.dumps(attrs)).result()
        grid = BlockGrid(Box.from_shape(shape), tuple(block), (0, 0, 0))  # type: ignore[arg-type]
        bar = _progress(grid.num_blocks, progress)
        pending: deque[Any] = deque()
        for b in grid:
            data = read(b.write_box)
            pending.append(out.array[b.write_box.slices()].write(data))  # tensorstore writes while we read on
            while len(pending) > 2:
                pending.popleft().result()
            bar.update(1)
        while pending:
            pending.popleft().result()
        bar.close()
    finally:
        close()
    url = f"{fmt}://{store}"
    return {"source": name, "dest": url, "shape_zyx": list(shape), "dtype": dtype.name, "voxel_size_nm": list(voxel),
            "offset_zyx": list(offset), "chunk_zyx": list(chunk), "boxes": grid.num_blocks,
            "seconds": round(time.time() - t0, 3),
            "megavoxels_per_second": round(math.prod(shape) / 1e6 / max(time.time() - t0, 1e-9), 2)}


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="emseg import", unit="box", disable=not enabled, file=sys.stderr, mininterval=0.5)


def add_arguments(p: Any) -> None:
    p.add_argument("source", help="directory or glob of TIFF slices, a TIFF file, FILE.h5 (or FILE.h5:/dataset), "
                                  "or a volume URL (n5://, zarr://, precomputed://)")
    p.add_argument("dest", help="destination: precomputed://PATH (default for a bare path) or zarr://PATH")
    p.add_argument("--dataset", help="HDF5 dataset path (default: the file's only 3-D dataset)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in nm (default: from the source's metadata)")
    p.add_argument("--offset", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel offset (default: from the source's metadata, else 0 0 0)")
    p.add_argument("--chunk", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"),
                   help="chunk shape of the destination")
    p.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="box copied at a time, a multiple of --chunk (default: one chunk deep, up to 1024 across)")
    p.add_argument("--segmentation", action="store_true", help="a label volume (compressed_segmentation) not an image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: Any) -> int:
    got = import_volume(args.source, args.dest, dataset=args.dataset, voxel_size_nm=args.voxel_size,
                        offset_zyx=args.offset, chunk_zyx=args.chunk, block_zyx=args.block,
                        layer_type="segmentation" if args.segmentation else "image", progress=not args.no_progress)
    print(json.dumps(got))
    return 0
