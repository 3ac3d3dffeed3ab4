"""Write a synthetic EM-like phantom (image + ground truth) block by block through Dask.

Each block is rendered independently (:class:`emseg.pipeline.quality.phantom.Phantom` is tiling-independent), so a
1024³ phantom never has to fit in memory.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from emseg.pipeline.io import urls
from emseg.pipeline.config import ClusterConfig, Config, PhantomConfig
from emseg.pipeline.errors import ConfigError, VolumeNotFoundError
from emseg.pipeline.geometry import BlockGrid, Box
from emseg.pipeline.io.volume import create_precomputed, open_volume

log = logging.getLogger("emseg")


def _store(url: str) -> str:
    parsed = urls.parse(url) if url.startswith("precomputed://") else None
    if parsed is None:
        raise ConfigError(f"phantom volumes are written as precomputed; write the URL as precomputed://PATH, not {url!r}")
    return parsed.store


@functools.lru_cache(maxsize=2)
def _phantom(params_json: str) -> Any:
    """The phantom's global description, built once per worker (seconds and ~100 MB at 1024³)."""
    from emseg.pipeline.quality.phantom import Phantom, PhantomParams

    return Phantom(PhantomParams.model_validate_json(params_json))


def _render_block(params_json: str, image_store: str, labels_store: str | None, box: Box) -> None:
    image, labels = _phantom(params_json).render(box)
    open_volume(f"precomputed://{image_store}", write=True, store_all=True).write(box, image)
    if labels_store is not None:
        open_volume(f"precomputed://{labels_store}", write=True).write(box, labels)


def write_phantom(
    cfg: PhantomConfig, image_url: str, labels_url: str | None, *, cluster: ClusterConfig | None = None
) -> None:
    image_store = _store(image_url)
    labels_store = _store(labels_url) if labels_url else None
    common: dict[str, Any] = {"shape_zyx": cfg.shape, "voxel_size_nm": cfg.voxel_size_nm, "chunk_zyx": cfg.chunk_shape}
    create_precomputed(image_store, layer_type="image", dtype="uint8", **common)
    if labels_store:
        create_precomputed(labels_store, layer_type="segmentation", dtype="uint64", **common)
    step = tuple(max(c, 128 // c * c) for c in cfg.chunk_shape)
    grid = BlockGrid(Box.from_shape(cfg.shape), step, (0, 0, 0))
    log.info("writing a %s phantom in %d block%s to %s", "x".join(map(str, cfg.shape)), len(grid),
             "" if len(grid) == 1 else "s", image_url)
    from distributed import wait

    from emseg.tasks.driver.cluster import connect

    with connect(cluster or ClusterConfig()) as client:
        from emseg.pipeline.quality.phantom import PhantomParams

        params = PhantomParams(shape_zyx=cfg.shape, seed=cfg.seed, **cfg.options).model_dump_json()
        futures = [client.submit(_render_block, params, image_store, labels_store, b.write_box, pure=False)
                   for b in grid]
        wait(futures)
        for f in futures:
            f.result()


def ensure_phantom(config: Config) -> None:
    """Make the configured phantom at ``config.input`` unless a volume is already there."""
    if config.phantom is None:
        return
    if not isinstance(config.input, str):
        raise ConfigError("phantom: needs input to be a precomputed:// URL where the phantom is written")
    try:
        open_volume(config.input)
        return
    except VolumeNotFoundError:
        pass
    gt = config.evaluate.groundtruth if config.evaluate else None
    if gt is not None and not isinstance(gt, str):
        raise ConfigError("phantom: needs evaluate.groundtruth to be a precomputed:// URL (or unset)")
    plain = config.cluster.model_copy(update={"model_resources": None})  # writing the phantom runs no model
    write_phantom(config.phantom, config.input, gt, cluster=plain)
