"""Batched propagation: many objects through the frames of a block in one batch.

The stock ``SAM2VideoPredictor`` keeps a separate memory bank per object and runs memory attention,
the mask decoder and the memory encoder once per object per frame, at batch size 1. Here a batch of
objects that share a prompt frame is carried together: their memories are stacked along the batch
axis and ``SAM2Base.track_step`` (the model's own memory attention, mask decoder and memory encoder)
runs once per frame for the whole batch. The image features come from :class:`FrameFeatures`,
computed once per frame for all batches.

Each batch goes forward from its prompt frame to the end of the block and backward to the start, the
two directions independent (each sees the prompt frame and its own past, as two stock inference
states would). The memory bank stays bounded: a frame's spatial memory is kept while it is among
the ``memory_frames`` nearest frames, its object pointer while it is among the ``max_pointers``
nearest; older frames are dropped, so memory does not grow with the block.

    frame:     k-3    k-2    k-1    k     k+1    k+2    k+3
    forward:                        P ──▶ ● ──▶ ● ──▶ ●
    backward:     ● ◀── ● ◀── ● ◀── P

    P: the prompt frame (conditioning memory)   ●: one track_step for the whole batch

An object ends where it leaves: once its object-score logit has been negative on ``end_after``
consecutive frames it is removed from the batch in that direction (its rows are dropped from every
stored memory), and later frames cost nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from emseg.pipeline.backends.sam2.frames import FrameFeatures

#: objects per batch when the config does not say: large batches pay on a GPU; on a CPU the batch's
#: activations leave the caches, and 8 measured fastest (benchmarks/results/sam2_cpu_*.json)
DEFAULT_BATCH_SIZE: dict[str, int] = {"cuda": 64, "cpu": 8}


def default_batch_size(device_type: str) -> int:
    """Objects per batch on a device type (``"cuda"``, ``"cpu"``, ...).

    >>> default_batch_size("cuda"), default_batch_size("cpu"), default_batch_size("mps")
    (64, 8, 8)
    """
    return DEFAULT_BATCH_SIZE.get(device_type, DEFAULT_BATCH_SIZE["cpu"])


#: called with (frame, rows, logits, object_score_logits): ``rows`` (n,) positions in the batch,
#: ``logits`` (n, h, w) float32 mask logits at the block's resolution, scores (n,)
Sink = Callable[[int, np.ndarray, "torch.Tensor", "torch.Tensor"], None]


@dataclass
class Track:
    """What one batch's propagation saw.

    Attributes
    ----------
    visited
        ``(objects, frames)`` bool, frames on which the model produced a mask for the object.
    object_scores
        ``(objects, frames)`` float32 object-score logits, NaN where not visited.
    """

    visited: np.ndarray
    object_scores: np.ndarray


def model_points(points_yx: np.ndarray, height: int, width: int, image_size: int) -> np.ndarray:
    """Pixel (y, x) positions on a slice -> the model's (x, y) input coordinates, ``(n, 1, 2)``.

    Pixel centres map to pixel centres of the resized frame.

    >>> model_points(np.array([[0, 63]]), 64, 64, 256).tolist()
    [[[253.5, 1.5]]]
    """
    yx = np.asarray(points_yx, dtype=np.float64).reshape(-1, 2)
    x = (yx[:, 1] + 0.5) * image_size / width - 0.5
    y = (yx[:, 0] + 0.5) * image_size / height - 0.5
    return np.stack([x, y], axis=1)[:, None, :].astype(np.float32)


def _compact(out: dict[str, Any], pos_enc: torch.Tensor) -> dict[str, Any]:
    """The parts of a ``track_step`` output that later frames read; memories stored in bf16."""
    import torch

    return {
        "maskmem_features": out["maskmem_features"].to(torch.bfloat16),
        "maskmem_pos_enc": [pos_enc.expand(out["obj_ptr"].shape[0], -1, -1, -1)],
        "obj_ptr": out["obj_ptr"],
        "object_score_logits": out["object_score_logits"],
    }


def _pointer_only(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry whose spatial memory is empty (zero tokens) and whose object pointer is kept."""
    feats = entry["maskmem_features"]
    empty = feats.new_zeros(feats.shape[0], feats.shape[1], 0, 0)
    pos = entry["maskmem_pos_enc"][-1]
    return {
        "maskmem_features": empty,
        "maskmem_pos_enc": [pos.new_zeros(pos.shape[0], pos.shape[1], 0, 0)],
        "obj_ptr": entry["obj_ptr"],
        "object_score_logits": entry["object_score_logits"],
    }


def _select(entry: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The rows ``keep`` of every batched tensor of an entry."""
    return {
        key: [v[keep] for v in value] if isinstance(value, list) else value[keep]
        for key, value in entry.items()
    }


def _to_block(pred_masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Low-resolution mask logits ``(n, 1, s, s)`` -> ``(n, height, width)`` float32."""
    import torch.nn.functional as F

    logits = pred_masks.float()
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits[:, 0]


def propagate_batch(
    predictor: Any,
    features: FrameFeatures,
    frame: int,
    points_yx: np.ndarray,
    sink: Sink,
    *,
    masks: np.ndarray | None = None,
    memory_frames: int = 6,
    max_pointers: int = 16,
    end_after: int | None = None,
) -> Track:
    """Prompt a batch of objects on ``frame`` and propagate them through every frame.

    Parameters
    ----------
    predictor
        A ``SAM2VideoPredictor`` (a ``SAM2Base``) in eval mode.
    features
        Image features of the block's frames.
    frame
        The prompt frame.
    points_yx
        ``(n, 2)`` one positive click per object, pixel (y, x) on the prompt frame.
    sink
        Receives every frame's masks (see :data:`Sink`); the prompt frame is sent once.
    masks
        Optional ``(n, h, w)`` bool masks on the prompt frame, given to the mask decoder as dense
        prompts together with the clicks (used for the neighbours' labels).
    memory_frames
        Recent frames whose spatial memory is attended, 1 to ``num_maskmem - 1`` (6).
    max_pointers
        Recent frames whose object pointers are attended, up to ``max_obj_ptrs_in_encoder`` (16).
    end_after
        End an object after this many consecutive frames with a negative object score; None never.

    Returns
    -------
    Track
    """
    import torch
    import torch.nn.functional as F

    count, num_frames = len(points_yx), features.num_frames
    height, width = features.height, features.width
    track = Track(np.zeros((count, num_frames), bool), np.full((count, num_frames), np.nan, np.float32))
    if count == 0:
        return track
    memory_frames = max(1, min(memory_frames, predictor.num_maskmem - 1))
    max_pointers = max(1, min(max_pointers, predictor.max_obj_ptrs_in_encoder))
    device = features.device

    coords = torch.from_numpy(model_points(points_yx, height, width, features.image_size)).to(device)
    point_inputs = {
        "point_coords": coords,
        "point_labels": torch.ones(count, 1, dtype=torch.int32, device=device),
    }
    prev_logits = None
    if masks is not None:
        dense = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None].to(device)
        dense = F.interpolate(
            dense, size=predictor.sam_prompt_encoder.mask_input_size, mode="bilinear",
            align_corners=False, antialias=True,
        )
        prev_logits = torch.where(dense >= 0.5, 10.0, -10.0)

    def record(at: int, rows: np.ndarray, out: dict[str, Any]) -> None:
        scores = out["object_score_logits"][:, 0]
        track.visited[rows, at] = True
        track.object_scores[rows, at] = scores.float().cpu().numpy()
        sink(at, rows, _to_block(out["pred_masks"], height, width), scores)

    feats, pos, sizes = features.features(frame, count)
    out = predictor.track_step(
        frame_idx=frame, is_init_cond_frame=True, current_vision_feats=feats,
        current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=point_inputs,
        mask_inputs=None, output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=num_frames, run_mem_encoder=True, prev_sam_mask_logits=prev_logits,
    )
    pos_enc = out["maskmem_pos_enc"][-1][:1]  # the same for every frame and object
    conditioning = _compact(out, pos_enc)
    record(frame, np.arange(count), out)

    for reverse in (False, True):
        step = -1 if reverse else 1
        active = np.arange(count)
        cond = conditioning
        stored: dict[int, dict[str, Any]] = {}
        absent = np.zeros(count, np.int64)
        for at in range(frame + step, -1 if reverse else num_frames, step):
            # stored frames are already trimmed for this frame (see the end of the loop)
            view = {"cond_frame_outputs": {frame: cond}, "non_cond_frame_outputs": dict(stored)}
            feats, pos, sizes = features.features(at, len(active))
            out = predictor.track_step(
                frame_idx=at, is_init_cond_frame=False, current_vision_feats=feats,
                current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None,
                mask_inputs=None, output_dict=view, num_frames=num_frames,
                track_in_reverse=reverse, run_mem_encoder=True,
            )
            stored[at] = _compact(out, pos_enc)
            record(at, active, out)
            following = at + step
            for t in list(stored):
                if abs(following - t) >= max_pointers:
                    del stored[t]
                elif abs(following - t) > memory_frames and stored[t]["maskmem_features"].numel():
                    stored[t] = _pointer_only(stored[t])
            if end_after is None:
                continue
            gone = out["object_score_logits"][:, 0].cpu().numpy() <= 0
            absent = np.where(gone, absent + 1, 0)
            ended = absent >= end_after
            if ended.all():
                break
            if ended.any():
                keep = torch.from_numpy(np.flatnonzero(~ended)).to(device)
                active, absent = active[~ended], absent[~ended]
                cond = _select(cond, keep)
                stored = {t: _select(e, keep) for t, e in stored.items()}
    return track
