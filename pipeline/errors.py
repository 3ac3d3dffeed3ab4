"""The errors emseg raises for bad input.

Every error is an :class:`EmsegError` and also inherits the builtin that fits it, so callers may catch
either. Messages say what was wrong *and* how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations


class EmsegError(Exception):
    """Base class of all emseg errors."""


class ConfigError(EmsegError, ValueError):
    """A configuration value is missing, unknown or inconsistent."""


class UnsupportedURLError(EmsegError, ValueError):
    """A volume URL has a scheme or format emseg does not know."""


class VolumeNotFoundError(EmsegError, FileNotFoundError):
    """No volume exists at the given URL or spec."""


class VolumeReadError(EmsegError, ValueError):
    """A volume exists but cannot be read: corrupt metadata, a missing chunk, a wrong format."""


class AlignmentError(ConfigError):
    """Block write boxes would not align to the output's chunks or shards."""


class RegionError(EmsegError, ValueError):
    """A region of interest lies (partly) outside the volume."""


class DtypeError(EmsegError, TypeError):
    """The input's dtype is not one the backend can take."""


class CheckpointError(EmsegError, ValueError):
    """Model weights are missing or do not fit the model."""


class OutputExistsError(EmsegError, FileExistsError):
    """The output holds a different run's data; resume would mix the two."""


class BlocksFailedError(EmsegError, RuntimeError):
    """Some blocks failed after all retries; the run is incomplete."""


class OutputLockedError(EmsegError, RuntimeError):
    """Another run is writing the same output right now."""


class ShapeMismatchError(EmsegError, ValueError):
    """A segmentation and its ground truth do not cover the same voxels."""
