"""The stage registry: every stage's name, number and unit of work, in run order.

The names are the keys of the scratch area's done-markers, the ``stage`` of every Dask task key and
failure record, the per-stage rows of ``run.json`` and the choices of ``emseg stage``; this module is
the only place that spells them. The numbers are the ones in the file names ``tasks/stageN_*.py``.

>>> SEGMENTATION
('1-segment', '2-seams', '3-unionfind', '4-relabel')
>>> number(SEAM_AUDIT), describe(SEAM_AUDIT)
(8, 'per block, then a reduce: near-threshold stitching edges as point annotations')
>>> after(UNIONFIND)
('1-segment', '2-seams')

``1-predict`` runs only with ``write.affinities`` (boundary backends): each block's model prediction
of its write box, stored, from which ``1-segment`` then reads the affinities of its write box and
fragment context. It is part of stage 1 (``tasks/stage1_segment.py``), not a stage of its own on the
command line.
"""

from __future__ import annotations

PREDICT = "1-predict"
SEGMENT = "1-segment"
SEAMS = "2-seams"
UNIONFIND = "3-unionfind"
RELABEL = "4-relabel"
PYRAMID = "5-pyramid"
MESHES = "6-meshes"
PROPERTIES = "7-properties"
SEAM_AUDIT = "8-seam-audit"
SKELETONS = "9-skeletons"
OME_ZARR = "10-ome-zarr"

#: the stages that make the segmentation; each can also run alone (``emseg stage``), in this order
SEGMENTATION = (SEGMENT, SEAMS, UNIONFIND, RELABEL)
#: the stages that make viewing outputs from a complete segmentation (``postprocess`` in the config)
POSTPROCESS = (PYRAMID, MESHES, PROPERTIES, SEAM_AUDIT, SKELETONS, OME_ZARR)
ALL = (PREDICT,) + SEGMENTATION + POSTPROCESS

_WHAT = {
    PREDICT: "per block, with write.affinities: the model's affinities on the write box, stored for 1-segment",
    SEGMENT: "per block: the backend's labels (or fragments and their region graph) in the write box",
    SEAMS: "per block: edges to the forward face neighbours, scored",
    UNIONFIND: "per octree group, up then down: the global mapping from the kept edges",
    RELABEL: "per block: final sequential ids written to the segmentation",
    PYRAMID: "per box and scale: coarser scales of the segmentation (mode) and image (average)",
    MESHES: "per block, then per group of segment ids: meshes joined across seams",
    PROPERTIES: "per block, then a reduce: voxel counts and bounding boxes as segment properties",
    SEAM_AUDIT: "per block, then a reduce: near-threshold stitching edges as point annotations",
    SKELETONS: "per block, then per group of segment ids: TEASAR skeletons joined across seams",
    OME_ZARR: "per box and scale: the segmentation's scales as an OME-NGFF label image",
}


def number(stage: str) -> int:
    """The stage's number (``"3-unionfind"`` -> 3); raises ``KeyError`` for an unknown name."""
    if stage not in _WHAT:
        raise KeyError(f"unknown stage {stage!r}; stages are {', '.join(ALL)}")
    return int(stage.split("-", 1)[0])


def describe(stage: str) -> str:
    """One line: the unit of work and what the stage makes."""
    number(stage)
    return _WHAT[stage]


def after(stage: str) -> tuple[str, ...]:
    """The segmentation stages that must be complete before ``stage`` runs."""
    return SEGMENTATION[: SEGMENTATION.index(stage)] if stage in SEGMENTATION else SEGMENTATION
