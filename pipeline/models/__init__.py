"""Bundled model weights and their model cards (data only): ``ffn_fib25.pt``, ``forest_fib25.skops``,
``unet_fib25.pt`` and one ``.md`` card each. Loaders find them with ``importlib.resources``
(``weights: bundled``); a package of its own so that setuptools installs the files as its data."""
