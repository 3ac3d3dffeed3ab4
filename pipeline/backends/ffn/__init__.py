"""Flood-filling networks (FFN) in PyTorch: model, flood-fill inference, training, checkpoints.

An FFN segments one object at a time. From a seed voxel, a 3D convolutional network reads the image
and the current object map (the *POM*, as logits) inside a field of view (FOV) and returns an updated
object map; the FOV then moves, by a fixed step, towards the faces where the object continues. After
the object is done, its voxels are claimed and the next seed starts a new object.

Modules, in the order data flows through them:

- :mod:`emseg.pipeline.backends.ffn.config` — the model and training configurations (pydantic, no torch).
- :mod:`emseg.pipeline.backends.ffn.model` — the network and the torch predictor used by inference.
- :mod:`emseg.pipeline.backends.ffn.seeds` — the seed policy (distance-transform peaks, then a fallback grid).
- :mod:`emseg.pipeline.backends.ffn.inference` — the flood fill of all objects in one block (numpy; any predictor).
- :mod:`emseg.pipeline.backends.ffn.sampling` — training FOVs balanced between object interiors and boundaries.
- :mod:`emseg.pipeline.backends.ffn.training` — the training loop.
- :mod:`emseg.pipeline.backends.ffn.weights` — checkpoints: save, load with ``weights_only=True``, locate.

Importing this package imports neither torch nor any submodule.
"""
