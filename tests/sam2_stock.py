"""The reference: the stock ``SAM2VideoPredictor`` loop, for tests and benchmarks.

It prompts each object with ``add_new_points_or_box`` and follows it with ``propagate_in_video``,
which runs memory attention, the mask decoder and the memory encoder once per object per frame.
Two inference states are used, one per direction, so that each direction sees the prompt frame and
its own past, as :func:`emseg.pipeline.backends.sam2.propagate.propagate_batch` does. (In one shared state, the
stock predictor would let the backward pass also attend to the first forward frames.)

The frames come from memory: ``init_state`` is given the block's normalised frames instead of a JPEG
folder, through its frame loader.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np

from emseg.pipeline.backends.sam2.frames import grey_frames, normalise
from emseg.pipeline.backends.sam2.propagate import Sink, Track, model_points


def _quiet(iterable: Any, **_: Any) -> Any:
    return iterable


def init_state(predictor: Any, slices: np.ndarray) -> dict[str, Any]:
    """A stock inference state whose frames are the slices ``(f, h, w)`` of a block."""
    height, width = slices.shape[1:]
    images = normalise(grey_frames(slices, predictor.image_size, predictor.device))

    def load(**_: Any) -> tuple[Any, int, int]:
        return images, height, width

    with mock.patch("sam2.sam2_video_predictor.load_video_frames", load):
        return predictor.init_state(video_path="<in-memory block>")


def stock_propagate(
    predictor: Any, slices: np.ndarray, frame: int, points_yx: np.ndarray, sink: Sink
) -> Track:
    """Prompt objects on ``frame`` with one click each and propagate them, one object at a time.

    Same contract as :func:`emseg.pipeline.backends.sam2.propagate.propagate_batch` (without ending objects or
    bounding the memory bank beyond the model's own window).
    """
    import torch

    count, num_frames = len(points_yx), slices.shape[0]
    height, width = slices.shape[1:]
    track = Track(np.zeros((count, num_frames), bool), np.full((count, num_frames), np.nan, np.float32))
    if count == 0:
        return track
    clicks = model_points(points_yx, height, width, predictor.image_size) / predictor.image_size
    with mock.patch("sam2.sam2_video_predictor.tqdm", _quiet):
        for reverse in (False, True):
            state = init_state(predictor, slices)
            for obj in range(count):
                predictor.add_new_points_or_box(
                    state, frame_idx=frame, obj_id=obj, points=clicks[obj],
                    labels=np.array([1], np.int32), normalize_coords=False,
                )
            for at, _, masks in predictor.propagate_in_video(
                state, start_frame_idx=frame, reverse=reverse
            ):
                if reverse and at == frame:
                    continue  # the prompt frame was sent by the forward pass
                scores = []
                for obj in range(count):
                    outputs = state["output_dict_per_obj"][obj]
                    out = outputs["cond_frame_outputs"].get(at) or outputs["non_cond_frame_outputs"][at]
                    scores.append(out["object_score_logits"].reshape(()))
                score = torch.stack(scores).float()
                rows = np.arange(count)
                track.visited[rows, at] = True
                track.object_scores[rows, at] = score.cpu().numpy()
                sink(at, rows, masks[:, 0].float(), score)
    return track
