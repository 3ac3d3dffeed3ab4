"""Build a SAM2.1 video model and load its weights.

The model is built from the hydra config that ships with the ``sam2`` package
(``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``) through ``sam2.build_sam.build_sam2_video_predictor``,
with random weights, then the checkpoint named in the config is read and loaded with
``torch.load(..., weights_only=True)``. A checkpoint is a local path or a ``file://``, ``gs://``,
``s3://``, ``http://`` or ``https://`` URL; remote ones are read through tensorstore's key-value
stores and kept in a local cache so that each machine reads them once.

A smaller ``image_size`` than the trained 1024 is allowed (tests use 256). No parameter's shape
depends on it: the Hiera position embedding is interpolated and the rotary encodings of memory
attention are recomputed for the feature size, which the overrides below set once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from emseg.pipeline.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: backend ``model`` name -> hydra config inside the sam2 package
MODEL_CONFIGS: dict[str, str] = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

#: the official checkpoint file of each model (the SAM2.1 release, 2024-09-24)
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "sam2.1_hiera_t": "sam2.1_hiera_tiny.pt",
    "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_l": "sam2.1_hiera_large.pt",
}
RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

# (trunk embed_dim, number of Hiera blocks) -> model name, to name the model a checkpoint fits
_TRUNK_SIGNATURES: dict[tuple[int, int], str] = {
    (96, 12): "sam2.1_hiera_t",
    (96, 16): "sam2.1_hiera_s",
    (112, 24): "sam2.1_hiera_b+",
    (144, 48): "sam2.1_hiera_l",
}

_MAX_LISTED_KEYS = 12


def model_overrides(image_size: int) -> list[str]:
    """Hydra overrides that make a config consistent at ``image_size``.

    >>> model_overrides(256)[1]
    '++model.memory_attention.layer.self_attention.feat_sizes=[16,16]'
    """
    if image_size % 32 != 0 or image_size < 64:
        raise ConfigError(
            f"backend.image_size must be a multiple of 32 and at least 64, got {image_size}; "
            "SAM2.1 is trained at 1024 (256 or 512 are cheaper and coarser)"
        )
    side = image_size // 16  # stride of the features that memory attention sees
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
    ]


def build_model(model: str, image_size: int, device: str) -> Any:
    """A ``SAM2VideoPredictor`` with random weights, in eval mode, on ``device``.

    Parameters
    ----------
    model
        One of :data:`MODEL_CONFIGS`.
    image_size
        Side of the square frames the model sees (1024 for the released weights).
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """
    if model not in MODEL_CONFIGS:
        raise ConfigError(f"unknown SAM2 model {model!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        MODEL_CONFIGS[model],
        ckpt_path=None,
        device=device,
        hydra_overrides_extra=model_overrides(image_size),
    )
    # Hole filling needs sam2's optional CUDA extension; emseg never uses it, so that the stock
    # loop and the batched path see the same masks on every machine.
    predictor.fill_hole_area = 0
    return predictor


def local_checkpoint(location: str) -> str:
    """The local path of checkpoint ``location``: a path, or a URL fetched once into the cache
    (``$EMSEG_CACHE/sam2``) by :func:`emseg.pipeline.io.checkpoints.resolve`, as every emseg model is.

    Raises :class:`CheckpointError` with where to get the weights when the file is not there.
    """
    from emseg.pipeline.io import checkpoints

    if location == "bundled":
        raise CheckpointError(f"emseg bundles no SAM2 weights; download the SAM2.1 weights from {RELEASE_URL} "
                              "and set backend.checkpoint to their path or URL")
    path = checkpoints.resolve(location, bundled="", family="sam2", what="SAM2 checkpoint")
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {location!r} not found; download the SAM2.1 weights from {RELEASE_URL} "
            "(e.g. sam2.1_hiera_tiny.pt) and set backend.checkpoint to their path or URL"
        )
    return str(path)


def read_state_dict(location: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True``: ``{"model": state_dict}`` or a bare state dict."""
    import torch

    path = local_checkpoint(location)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"could not load checkpoint {location!r} with weights_only=True: {exc}; "
            "it must be a PyTorch file holding tensors only, like the official SAM2.1 checkpoints"
        ) from exc
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint {location!r} holds no state dict; expected {{'model': state_dict}} as in "
            "the official SAM2.1 release"
        )
    return state


def guess_model(state: dict[str, Any]) -> str | None:
    """The SAM2.1 model whose trunk a state dict fits, from its patch embedding and block count."""
    weight = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if weight is None:
        return None
    blocks = {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    return _TRUNK_SIGNATURES.get((int(weight.shape[0]), len(blocks)))


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f" … and {more} more" if more > 0 else "") if keys else "none"


def load_weights(predictor: Any, state: dict[str, torch.Tensor], model: str, source: str) -> None:
    """Load ``state`` into ``predictor`` exactly; on any mismatch raise :class:`CheckpointError`.

    The error lists the missing keys, the unexpected keys and the keys whose shapes differ, and names
    the model config the checkpoint fits when it can tell.
    """
    own = predictor.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    reshaped = sorted(
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    )
    if missing or unexpected or reshaped:
        fits = guess_model(state)
        hint = (
            f"it looks like a {fits} checkpoint: set backend.model: {fits}"
            if fits and fits != model
            else f"use the {OFFICIAL_CHECKPOINTS[model]} checkpoint of the SAM2.1 release"
        )
        raise CheckpointError(
            f"checkpoint {source!r} does not fit model {model}: "
            f"{len(missing)} missing keys ({_listed(missing)}); "
            f"{len(unexpected)} unexpected keys ({_listed(unexpected)}); "
            f"{len(reshaped)} keys of another shape ({_listed(reshaped)}); {hint}"
        )
    predictor.load_state_dict(state, strict=True)


def save_checkpoint(predictor: Any, path: str) -> None:
    """Write ``predictor``'s weights as the official release does, ``{"model": state_dict}``."""
    import torch

    torch.save({"model": predictor.state_dict()}, path)


_CACHE: dict[tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()


def get_predictor(
    model: str,
    checkpoint: str | None,
    random_weights: bool,
    image_size: int,
    device: str,
    compile_image_encoder: bool = False,
    seed: int = 0,
) -> Any:
    """The worker's model for these settings, built and loaded on first use, then cached.

    ``checkpoint=None`` is refused unless ``random_weights`` is set (tests and benchmarks); random
    weights are drawn from ``torch.manual_seed(seed)``, so every worker builds the same model.
    """
    key = (model, checkpoint, random_weights, image_size, device, compile_image_encoder, seed)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if checkpoint is None and not random_weights:
            raise CheckpointError(
                f"backend.checkpoint is not set; download {OFFICIAL_CHECKPOINTS[model]} from "
                f"{RELEASE_URL} and set backend.checkpoint to its path or URL "
                "(backend.random_weights: true builds an untrained model, for tests only)"
            )
        state = read_state_dict(checkpoint) if checkpoint is not None else None
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            predictor = build_model(model, image_size, device)
        if state is not None:
            load_weights(predictor, state, model, checkpoint)
        if compile_image_encoder:
            # compile the bound forward (not the module) so that state dicts keep their keys
            predictor.image_encoder.forward = torch.compile(
                predictor.image_encoder.forward, dynamic=False
            )
        _CACHE[key] = predictor
        return predictor
