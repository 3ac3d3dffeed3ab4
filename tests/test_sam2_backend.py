"""The sam2 backend on CPU with the real sam2 modules and random weights (tiny model, 256² frames).

With random weights the masks are arbitrary but deterministic: these tests check the mechanics
(shapes, prompts, propagation, overlap resolution, batching against the stock predictor), not quality.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from emseg.pipeline.backends.sam2.backend import Backend, Params  # noqa: E402
from emseg.pipeline.backends.sam2.frames import FrameFeatures  # noqa: E402
from emseg.pipeline.backends.sam2.propagate import propagate_batch  # noqa: E402
from emseg.pipeline.backends.sam2.resolve import Resolver  # noqa: E402
from tests.sam2_stock import stock_propagate  # noqa: E402
from emseg.pipeline.backends.sam2.weights import build_model, get_predictor  # noqa: E402

SIZE = 256


def cells(shape: tuple[int, int, int] = (8, 64, 64), count: int = 14, seed: int = 0) -> np.ndarray:
    """A small EM-like image: bright Voronoi cells, dark membranes (also between slices), noise."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform((0, 0, 0), shape, size=(count, 3))
    grid = np.indices(shape).reshape(3, -1).T.astype(np.float32)
    scale = np.array([4.0, 1.0, 1.0], np.float32)  # anisotropic, like serial-section EM
    owner = np.argmin((((grid[:, None] - centres[None]) * scale) ** 2).sum(-1), axis=1).reshape(shape)
    edge = np.zeros(shape, bool)
    for axis in range(3):
        edge |= np.diff(owner, axis=axis, prepend=np.take(owner, [0], axis=axis)) != 0
    image = ndimage.gaussian_filter(np.where(edge, 40.0, 200.0), 0.7) + rng.normal(0, 5, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def params(**kw: Any) -> Params:
    base = dict(
        random_weights=True, image_size=SIZE, device="cpu", seed_backend="threshold-cc",
        seed_params={"threshold": 128, "connectivity": 6}, min_size=0, min_score=0.0,
        max_objects=6, reprompt_slices=1, end_after_absent=None, batch_size=4,
    )
    base.update(kw)
    return Params(**base)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return cells()


@pytest.fixture(scope="module")
def result(image: np.ndarray) -> Any:
    torch.set_num_threads(1)
    return Backend(params()).segment_detailed(image)


def test_output_shape_and_dtype(image: np.ndarray, result: Any) -> None:
    assert result.labels.shape == image.shape
    assert result.labels.dtype == np.uint32
    assert len(result.kept) == len(result.table.frames) > 1
    assert set(np.unique(result.labels)) - {0} == set(range(1, len(result.kept) + 1))


def test_every_prompted_object_on_its_prompt_slice(result: Any) -> None:
    table = result.table
    for new_id, old_id in enumerate(result.kept, start=1):
        frame, (y, x) = table.frames[old_id - 1], table.points[old_id - 1]
        assert result.labels[frame, y, x] == new_id


def test_propagation_covers_every_slice_and_encodes_each_frame_once(
    image: np.ndarray, result: Any
) -> None:
    for _, track in result.tracks:
        assert track.visited.all()  # end_after_absent=None: every object on every slice
        assert np.isfinite(track.object_scores).all()
    assert result.encoded_frames == image.shape[0]
    assert len(result.prompt_frames) >= 1 and result.prompt_frames[0] == image.shape[0] // 2


def test_deterministic_under_a_fixed_seed(image: np.ndarray, result: Any) -> None:
    again = Backend(params()).segment_detailed(image)
    np.testing.assert_array_equal(again.labels, result.labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = build_model("sam2.1_hiera_t", SIZE, "cpu").state_dict()
        torch.manual_seed(0)
        b = build_model("sam2.1_hiera_t", SIZE, "cpu").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def both(image: np.ndarray) -> dict[str, Any]:
    """The batched path and the stock loop on the same prompts and the same random model (fp32)."""
    torch.set_num_threads(1)
    predictor = get_predictor("sam2.1_hiera_t", None, True, SIZE, "cpu", False, 0)
    frame, points = 3, np.array([[10, 10], [30, 40], [50, 20]])
    out: dict[str, Any] = {"points": points, "frame": frame}
    resolver = Resolver(image.shape, "cpu")
    for name in ("batched", "stock"):
        logits: dict[tuple[int, int], np.ndarray] = {}
        update = resolver.sink(np.arange(1, len(points) + 1)) if name == "batched" else None

        def sink(at: int, rows: np.ndarray, masks: Any, scores: Any, keep=logits, upd=update) -> None:
            for row, mask in zip(rows, masks):
                keep[(int(row), at)] = mask.cpu().numpy().copy()
            if upd is not None:
                upd(at, rows, masks, scores)

        with torch.inference_mode():
            if name == "batched":
                track = propagate_batch(predictor, FrameFeatures(predictor, image), frame, points, sink)
            else:
                track = stock_propagate(predictor, image, frame, points, sink)
        out[name] = (logits, track)
    out["resolved"] = resolver.labels()
    return out


def test_batched_matches_the_stock_predictor(both: dict[str, Any]) -> None:
    """Tolerance: mask logits within 1e-4 (fp32), so every mask IoU is at least 0.999."""
    (batched, track_b), (stock, track_s) = both["batched"], both["stock"]
    assert sorted(batched) == sorted(stock) and len(batched) == 3 * 8
    for key in batched:
        np.testing.assert_allclose(batched[key], stock[key], atol=1e-4, rtol=0)
        a, b = batched[key] > 0, stock[key] > 0
        union = (a | b).sum()
        assert union == 0 or (a & b).sum() / union >= 0.999
    np.testing.assert_allclose(track_b.object_scores, track_s.object_scores, atol=1e-4)


def test_no_two_objects_on_one_voxel(both: dict[str, Any]) -> None:
    """Overlapping masks are resolved voxel by voxel to the object with the highest logit."""
    batched, _ = both["batched"]
    logits = np.stack([np.stack([batched[(obj, f)] for f in range(8)]) for obj in range(3)])
    assert ((logits > 0).sum(axis=0) > 1).any(), "the random masks should overlap somewhere"
    expected = np.where(logits.max(axis=0) > 0, logits.argmax(axis=0) + 1, 0)
    np.testing.assert_array_equal(both["resolved"], expected)


def test_memory_bank_stays_bounded(image: np.ndarray) -> None:
    predictor = get_predictor("sam2.1_hiera_t", None, True, SIZE, "cpu", False, 0)
    seen: list[tuple[int, int]] = []
    original = predictor.track_step

    def spy(**kw: Any) -> Any:
        memory = kw["output_dict"]["non_cond_frame_outputs"]
        spatial = sum(e["maskmem_features"].numel() > 0 for e in memory.values())
        seen.append((len(memory), spatial))
        return original(**kw)

    predictor.track_step = spy
    try:
        with torch.inference_mode():
            features = FrameFeatures(predictor, image)
            propagate_batch(
                predictor, features, 0, np.array([[32, 32]]), lambda *a: None,
                memory_frames=2, max_pointers=4,
            )
    finally:
        del predictor.track_step
    assert len(seen) == 8  # the prompt frame, then 7 frames forward (none backward from 0)
    assert max(n for n, _ in seen) == 3 and max(s for _, s in seen) == 2


def test_objects_end_where_their_object_score_drops(image: np.ndarray) -> None:
    """A model whose object score is always negative: every object ends after one absent frame."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        predictor = build_model("sam2.1_hiera_t", SIZE, "cpu")
    head = predictor.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    with torch.no_grad():
        last.bias.fill_(-50.0)
        last.weight.zero_()
    with torch.inference_mode():
        track = propagate_batch(
            predictor, FrameFeatures(predictor, image), 4, np.array([[20, 20], [40, 40]]),
            lambda *a: None, end_after=1,
        )
    assert track.visited[:, [3, 4, 5]].all() and track.visited.sum() == 2 * 3
    assert (track.object_scores[np.isfinite(track.object_scores)] < 0).all()


def test_any_axis_propagates_the_same_way() -> None:
    """Propagating along x equals propagating along z on the transposed block."""
    small = cells((6, 24, 10), count=5, seed=1)
    p = dict(max_objects=3, reprompt_slices=0)
    along_x = Backend(params(axis="x", **p)).segment(small)
    along_z = Backend(params(axis="z", **p)).segment(np.ascontiguousarray(np.moveaxis(small, 2, 0)))
    assert along_x.shape == small.shape
    np.testing.assert_array_equal(along_x, np.moveaxis(along_z, 0, 2))


def test_neighbour_labels_become_prompts(image: np.ndarray) -> None:
    """Labels known in the overlap are prompted first (click + mask) and hold their prompt voxel."""
    from emseg.pipeline.backends.sam2.prompts import prior_prompts

    prior = np.zeros(image.shape, np.uint64)
    prior[:, :, :6] = np.where(image[:, :, :6] > 128, 7, 0)  # a neighbour's object in the overlap
    prior[0, 40:50, 40:50] = 9
    expected = [(s.frame, tuple(pt)) for s, _ in prior_prompts(prior) for pt in s.points]
    assert len(expected) == 2
    result = Backend(params(neighbour_prompts=True, reprompt_slices=0)).segment_detailed(
        image, prior=prior
    )
    table = result.table
    assert [(table.frames[i], tuple(table.points[i])) for i in range(2)] == expected
    for frame, (y, x) in expected:
        assert prior[frame, y, x] != 0 and result.labels[frame, y, x] != 0
