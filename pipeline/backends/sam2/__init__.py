"""SAM2 on EM blocks: the pieces behind the ``sam2`` backend.

The z-slices of a block are the frames of a video. The modules, in the order a block meets them:

``weights``    build a SAM2.1 video model from its hydra config and load a checkpoint (path or URL)
``frames``     block slices -> the model's normalised 3-channel frames; image features once per frame
``prompts``    automatic seed points: peaks of the distance transform of an interior estimate
``propagate``  batched propagation of many objects through the model's own modules
``resolve``    per-voxel winner by mask logit, size and score filters, uint32 labels

The reference it is tested against, the stock ``SAM2VideoPredictor`` loop one object at a time, is
test code (``tests/sam2_stock.py``): it patches sam2's frame loader, which a library must not do.

Nothing here is imported by ``emseg.pipeline.backends.sam2.backend`` at import time; torch and sam2 load when a
worker first segments a block.
"""
