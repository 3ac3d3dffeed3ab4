"""emseg's library: geometry, volume I/O, backends, stitching, writers and metrics.

Importing this package has no side effects: it reads no files and imports no torch, dask or sam2.
The Dask graphs and the CLI live in the sibling package ``tasks``.
"""

__version__ = "0.1.0"
