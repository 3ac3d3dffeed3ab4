"""Key ranges of a tensorstore KvStore: list, delete and measure what lies under a key prefix.

Stores are opened by :func:`emseg.pipeline.io.urls.open_kvstore` (with the run's tensorstore context);
these helpers take the open store. A prefix is a plain string; ``""`` means every key.

>>> import tensorstore as ts
>>> kv = ts.KvStore.open("memory://").result()
>>> for k in ("edges/1", "edges/2", "edgesX", "faces/1/0"):
...     _ = kv.write(k, b"abc").result()
>>> list_keys(kv, "edges/")
['edges/1', 'edges/2']
>>> bytes_under(kv, "edges"), delete_prefix(kv, "edges/"), list_keys(kv)
(9, None, ['edgesX', 'faces/1/0'])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tensorstore as ts


def prefix_range(prefix: str = "") -> ts.KvStore.KeyRange:
    """The key range of every key that starts with ``prefix`` (all keys for ``""``)."""
    if not prefix:
        return ts.KvStore.KeyRange()
    return ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))


def key_range(key: str) -> ts.KvStore.KeyRange:
    """The key range holding exactly ``key``."""
    return ts.KvStore.KeyRange(key, key + "\x00")


def list_keys(kv: Any, prefix: str = "") -> list[str]:
    """The keys under ``prefix``, sorted."""
    return sorted(k.decode() for k in kv.list(prefix_range(prefix)).result())


def delete_prefix(kv: Any, prefix: str = "") -> None:
    """Delete every object under ``prefix`` (every object for ``""``)."""
    kv.delete_range(prefix_range(prefix)).result()


def delete_keys(kv: Any, keys: Iterable[str]) -> None:
    """Delete these objects; missing ones are no error."""
    futures = [kv.delete_range(key_range(k)) for k in keys]
    for f in futures:
        f.result()


def object_bytes(kv: Any, key: str) -> int:
    """The size of one object in bytes (0 when it is missing)."""
    got = kv.read(key).result()
    return len(got.value) if got.state == "value" else 0


def bytes_under(kv: Any, prefix: str = "", *, skip: Iterable[str] = ()) -> int:
    """Total bytes of the objects under ``prefix``, leaving out the keys in ``skip``.

    Reads every object (object stores give sizes only per request); meant for estimates and reports.
    """
    skipped = set(skip)
    return sum(object_bytes(kv, k) for k in list_keys(kv, prefix) if k not in skipped)
