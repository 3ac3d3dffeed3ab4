"""The boundary forest: a scikit-learn classifier on multiscale filter features, giving affinities.

ilastik's pixel-classification workflow in a file: :mod:`emseg.pipeline.backends.boundary.features` computes a
fixed feature stack per voxel, a tree ensemble from scikit-learn predicts the probability ``b(v)``
that voxel ``v`` lies on an object boundary, and the affinities follow from the boundary map as

    aff_d(v) = 1 - max(b(v), b(v - e_d)),   d = z, y, x

(an edge is as weak as the more boundary-like of its two voxels). The boundary class of the ground
truth: a voxel whose label differs from one of its 6 neighbours' (bodies of fib25 touch directly, so
the boundary band is the two voxel layers on either side of every contact); voxels of label 0
(unlabelled) and their neighbours' comparisons with them are ignored in training.

Files are written with ``skops.io`` and read back only if every type in them is in
:data:`TRUSTED_TYPES` (plain arrays, numbers and scikit-learn's tree classes), so loading a model
cannot run code, unlike a pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg.pipeline.backends.boundary import features as feats
from emseg.pipeline.errors import CheckpointError

FORMAT = "emseg-forest"
VERSION = 1

#: the only types a forest file may hold; anything else is refused before loading
TRUSTED_TYPES: tuple[str, ...] = (
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
    "builtins.bool", "builtins.NoneType",
    "numpy.ndarray", "numpy.dtype", "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32",
    "numpy.uint8", "numpy.intp",
    "numpy.random.mtrand.RandomState", "numpy.random._mt19937.MT19937", "numpy.random.RandomState",
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier", "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfBinomialLoss", "sklearn._loss.link.LogitLink", "sklearn._loss.link.Interval",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer", "sklearn.preprocessing._label.LabelBinarizer",
)

#: image context (voxels per side) of one affinity: the features' context plus the predecessor voxel
CONTEXT = feats.CONTEXT + 1


def boundary_target(labels: np.ndarray) -> np.ndarray:
    """The training target of a (z, y, x) label volume.

    Returns uint8 of the same shape: 1 where the voxel's label differs from a 6-neighbour's, 0
    inside an object, 255 (ignore) at label 0 (unlabelled).

    >>> lab = np.array([[[1, 1, 2, 2, 0]]])
    >>> boundary_target(lab).tolist()
    [[[0, 1, 1, 0, 255]]]
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        o = np.moveaxis(out, axis, 0)
        differ = (a[1:] != a[:-1]) & (a[1:] != 0) & (a[:-1] != 0)
        o[1:] |= differ
        o[:-1] |= differ
    out[labels == 0] = 255
    return out


def affinities_from_boundary(boundary: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(3, z, y, x) float32 affinities ``1 - max(b(v), b(v - e_d))`` from a boundary map in [0, 1].

    The first plane along each axis is 0 (no predecessor); voxels where ``valid`` is false give 0.

    >>> b = np.array([[[0.0, 0.2, 0.9, 0.1]]], dtype=np.float32)
    >>> affinities_from_boundary(b)[2].astype(float).round(2).tolist()
    [[[0.0, 0.8, 0.1, 0.1]]]
    """
    b = np.asarray(boundary, dtype=np.float32)
    if valid is not None:
        b = np.where(valid, b, np.float32(1))
    affs = np.zeros((3,) + b.shape, dtype=np.float32)
    affs[0, 1:] = 1 - np.maximum(b[1:], b[:-1])
    affs[1, :, 1:] = 1 - np.maximum(b[:, 1:], b[:, :-1])
    affs[2, :, :, 1:] = 1 - np.maximum(b[:, :, 1:], b[:, :, :-1])
    return affs


def _input_dtype(classifier: Any) -> type:
    """The dtype scikit-learn converts a classifier's input to: float64 for histogram gradient
    boosting (``X_DTYPE``), float32 for the forests' trees; passing it so saves that copy."""
    return np.float64 if "HistGradientBoosting" in type(classifier).__name__ else np.float32


@dataclass
class ForestModel:
    """A trained boundary classifier; implements :class:`emseg.pipeline.backends.boundary.AffinityModel`.

    Attributes
    ----------
    classifier
        A fitted scikit-learn classifier with ``predict_proba`` over the classes (0 inside, 1 boundary),
        taking the :data:`emseg.pipeline.backends.boundary.features.NAMES` columns.
    meta
        Facts about training (data, split, voxels, wall time, scores); str / number values.
    tile_z
        Planes predicted at once. Memory: the tile's features, ``(tile_z + 2 * CONTEXT) * y * x * 31``
        float32, and, while they are copied out, the classified voxels' ``tile_z * y * x * 31`` in the
        classifier's dtype (float64 for gradient boosting). For a 176³ image classified on its 128³
        core, 64 planes took 727 MB above the image's (32 planes: 503 MB; 774 MB before the copy
        was made in the classifier's dtype with the features freed first) and about 4 % less CPU
        than 32 planes, whose features overlap more (5 runs each: median 19.3 against 20.0 CPU-s).
        The output does not depend on it.
    threads
        OpenMP / BLAS threads of the classifier (None: the library's default, all cores). 1 by
        default: Dask runs one block per core already, and OpenMP threads spinning on a busy
        machine made prediction several times slower here.
    """

    classifier: Any
    meta: dict[str, Any] = field(default_factory=dict)
    tile_z: int = 64
    threads: int | None = 1
    context_zyx: tuple[int, int, int] = (CONTEXT, CONTEXT, CONTEXT)

    def boundary(self, image: np.ndarray, region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """(z, y, x) float32 boundary probability of a (z, y, x) image in [0, 1] (NaN = no data).

        ``region`` (slices of ``image``, or None for all of it): classify only those voxels and
        return 1 elsewhere. The features are computed on the whole image as always, so the
        probabilities inside ``region`` are the ones the whole image gives; the classifier, most of
        the forest's cost, runs on the region alone.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"the forest predicts (z, y, x) images, got shape {image.shape}")
        from threadpoolctl import threadpool_limits

        zr, yr, xr = (slice(0, n) for n in image.shape) if region is None else \
            (slice(*s.indices(n)[:2]) for s, n in zip(region, image.shape))
        out = np.ones(image.shape, dtype=np.float32)
        c = feats.CONTEXT
        depth = image.shape[0]
        for z0 in range(zr.start, zr.stop, self.tile_z):
            z1 = min(zr.stop, z0 + self.tile_z)
            lo, hi = max(0, z0 - c), min(depth, z1 + c)
            tile = feats.compute(image[lo:hi])
            # one copy of the voxels to classify, made in the dtype the classifier converts to (so
            # it makes no copy of its own), and the tile's features freed before it runs
            x = np.ascontiguousarray(tile[z0 - lo : z1 - lo, yr, xr], dtype=_input_dtype(self.classifier))
            del tile
            shape = x.shape[:3]
            with threadpool_limits(self.threads):
                p = self.classifier.predict_proba(x.reshape(-1, x.shape[-1]))[:, 1]
            del x
            out[z0:z1, yr, xr] = p.reshape(shape)
        return out

    def predict(self, image: np.ndarray, origin_zyx: tuple[int, int, int] = (0, 0, 0),
                region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """(3, z, y, x) float32 affinities in [0, 1]; see :class:`emseg.pipeline.backends.boundary.AffinityModel`.

        ``origin_zyx`` (the block's global position) is accepted for the protocol and not needed:
        the features are translation-invariant. With ``region``, the affinities inside it are the
        whole image's and those outside it 0: the boundary is classified on the region and one
        plane before it along each axis (an affinity looks back one voxel).
        """
        image = np.asarray(image, dtype=np.float32)
        if region is None:
            return affinities_from_boundary(self.boundary(image), valid=~np.isnan(image))
        inner = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, image.shape))
        grown = tuple(slice(max(0, s.start - 1), s.stop) for s in inner)
        affs = affinities_from_boundary(self.boundary(image, grown), valid=~np.isnan(image))
        out = np.zeros_like(affs)
        out[(slice(None), *inner)] = affs[(slice(None), *inner)]
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model with ``skops.io`` (compressed), atomically."""
        import zipfile

        import skops.io as sio

        payload = {
            "format": FORMAT, "version": VERSION, "features": list(feats.NAMES),
            "classifier": self.classifier, "meta": _plain_meta(self.meta),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(sio.dumps(payload, compression=zipfile.ZIP_DEFLATED, compresslevel=9))
        os.replace(tmp, path)


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            plain[str(key)] = value
        elif isinstance(value, np.generic):
            plain[str(key)] = value.item()
        else:
            plain[str(key)] = str(value)
    return plain


def load(path: str | os.PathLike[str]) -> ForestModel:
    """Read a forest written by :meth:`ForestModel.save`, trusting only :data:`TRUSTED_TYPES`.

    Raises
    ------
    CheckpointError
        The file is missing, not a forest file, holds a type outside the trusted list, or was made
        for other features.
    """
    import skops.io as sio

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"no forest model at {path}; give the path of a file written by `emseg train` (model.kind: "
            "forest), or weights: bundled"
        ) from None
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a skops forest file ({type(exc).__name__}: {str(exc)[:160]}); train one with "
            "`emseg train` (model.kind: forest)"
        ) from None
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise CheckpointError(
            f"{path} holds types emseg does not trust ({', '.join(unknown[:5])}); only scikit-learn tree "
            "ensembles and plain arrays load; re-train the model with `emseg train`"
        )
    payload = sio.loads(data, trusted=sorted(set(untrusted)))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an emseg forest (no format={FORMAT!r}); train one with `emseg train`")
    allowed = ("RandomForestClassifier", "ExtraTreesClassifier", "HistGradientBoostingClassifier",
               "StandardScaler+MLPClassifier")
    classifier = payload.get("classifier")
    kind = type(classifier).__name__
    if kind == "Pipeline":
        kind = "+".join(type(step).__name__ for _, step in getattr(classifier, "steps", []))
    if kind not in allowed:
        raise CheckpointError(
            f"{path} holds a {kind}, which emseg does not trust as a boundary classifier (only "
            f"{', '.join(allowed)}); re-train the model with `emseg train`"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is forest version {payload.get('version')}, this emseg reads {VERSION}; re-train it"
        )
    if list(payload.get("features", [])) != list(feats.NAMES):
        raise CheckpointError(
            f"{path} was trained on other features ({len(payload.get('features', []))} columns, this emseg "
            f"computes {feats.NUM_FEATURES}); re-train it with this emseg's `emseg train`"
        )
    return ForestModel(classifier=payload["classifier"], meta=dict(payload.get("meta", {})))


def sample_voxels(
    target: np.ndarray, per_class: int, rng: np.random.Generator, margin: int = 0
) -> np.ndarray:
    """Flat indices of up to ``per_class`` voxels of each class (0, 1) of ``target``, drawn at random.

    Balanced sampling: the rare boundary class gets as many training voxels as the interior.
    Voxels within ``margin`` of the array's faces are left out (their features see the padding).
    """
    keep = np.ones(target.shape, dtype=bool)
    if margin:
        keep[:] = False
        keep[tuple(slice(margin, s - margin) for s in target.shape)] = True
    chosen = []
    for cls in (0, 1):
        idx = np.flatnonzero((target == cls) & keep)
        if idx.size == 0:
            continue
        chosen.append(rng.choice(idx, size=min(per_class, idx.size), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def make_classifier(kind: str, seed: int, **params: Any) -> Any:
    """A scikit-learn classifier by name: ``hgb`` (HistGradientBoosting), ``rf``, ``extra-trees`` or
    ``mlp`` (standard scaling + a multi-layer perceptron; ``params`` go to the MLPClassifier)."""
    if kind == "mlp":
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        defaults = {"hidden_layer_sizes": (32, 32), "max_iter": 30, "batch_size": 1024, "early_stopping": False}
        if isinstance(params.get("hidden_layer_sizes"), list):
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        return make_pipeline(StandardScaler(), MLPClassifier(random_state=seed, **{**defaults, **params}))
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        defaults = {"max_iter": 200, "max_leaf_nodes": 31, "learning_rate": 0.1, "early_stopping": False}
        return HistGradientBoostingClassifier(random_state=seed, **{**defaults, **params})
    if kind in ("rf", "extra-trees"):
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        cls = RandomForestClassifier if kind == "rf" else ExtraTreesClassifier
        defaults = {"n_estimators": 32, "max_depth": 14, "min_samples_leaf": 20, "n_jobs": 1}
        return cls(random_state=seed, **{**defaults, **params})
    from emseg.pipeline.errors import ConfigError

    raise ConfigError(f"model.classifier {kind!r} is not known; use hgb, rf, extra-trees or mlp")
