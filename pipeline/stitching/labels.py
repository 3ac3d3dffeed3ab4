"""Coordination-free label ids.

A block's local label ``l`` (uint32, 1-based, 0 = background) becomes the uint64 key
``block_id << 32 | l``: unique across the volume without any communication between blocks.

>>> k = key(5, 7); int(k), block_of(k), int(local_of(k))
(21474836487, 5, 7)
"""

from __future__ import annotations

from collections.abc import Sequence

import fastremap
import numpy as np

LOCAL_BITS = 32
LOCAL_MASK = np.uint64((1 << LOCAL_BITS) - 1)


def key(block_id: int, local: np.ndarray | int) -> np.ndarray:
    """The global key of local label(s) ``local`` in block ``block_id``."""
    return (np.uint64(block_id) << np.uint64(LOCAL_BITS)) | np.asarray(local, dtype=np.uint64)


def block_of(keys: np.ndarray | int) -> np.ndarray | int:
    out = np.asarray(keys, dtype=np.uint64) >> np.uint64(LOCAL_BITS)
    return int(out) if out.ndim == 0 else out


def local_of(keys: np.ndarray | int) -> np.ndarray:
    return np.asarray(keys, dtype=np.uint64) & LOCAL_MASK


def renumber_core_first(
    core: np.ndarray, faces: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray], int, int]:
    """Renumber a block's labels to 1..n, the labels present in its core first.

    ``core`` is the block's labels on its write box, ``faces`` its labels on the overlaps with its
    neighbours, which together cover its halo. Returns ``(core, faces, n_core, n_total)`` as uint32:
    ids ``1..n_core`` occur in the core, ids ``n_core+1..n_total`` only in the halo. Only core labels
    can become output segments, which keeps final ids dense. The rest of the read box is never
    touched: it is neither stored nor matched.

    >>> core, faces, n_core, n = renumber_core_first(np.array([9, 2], np.uint32), [np.array([2, 5, 5])])
    >>> core.tolist(), faces[0].tolist(), n_core, n
    ([2, 1], [1, 3, 3], 2, 3)
    """
    core_ids = fastremap.unique(core)
    core_ids = core_ids[core_ids != 0]
    face_ids = fastremap.unique(np.concatenate([f.ravel() for f in faces])) if faces else core_ids[:0]
    halo_ids = np.setdiff1d(face_ids[face_ids != 0], core_ids, assume_unique=True)
    order = np.concatenate([core_ids, halo_ids])
    new_ids = np.arange(1, len(order) + 1, dtype=np.uint32)
    top = int(order.max()) if len(order) else 0
    if top < 4 * core.size + 1024:  # a dense lookup table is cheapest
        lut = np.zeros(top + 1, dtype=np.uint32)
        lut[order] = new_ids

        def apply(a: np.ndarray) -> np.ndarray:
            return lut[a]
    else:
        table = dict(zip(order.tolist(), new_ids.tolist()))
        table[0] = 0

        def apply(a: np.ndarray) -> np.ndarray:
            return fastremap.remap(a, table, preserve_missing_labels=False).astype(np.uint32)

    return apply(core), [apply(f) for f in faces], len(core_ids), len(order)
