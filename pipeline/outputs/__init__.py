"""Viewing outputs: pyramids, meshes, shard files, segment properties, annotations, skeletons, OME-Zarr, the viewer state."""
