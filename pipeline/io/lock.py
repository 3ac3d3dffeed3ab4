"""A lock on an output, so two runs never interleave their writes.

The lock is one object, ``<output>/emseg.lock``, created with a conditional write (only if absent),
which every kvstore tensorstore supports (local files, gs://, s3://). Its holder rewrites it every
``heartbeat`` seconds. A lock is stale — and taken over — when its heartbeat is older than
``stale_after`` seconds, or when it was taken on this host by a process that no longer exists (a
driver killed with SIGKILL does not have to be waited out).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from emseg.pipeline.io import urls
from emseg.pipeline.errors import OutputLockedError

KEY = "emseg.lock"
_UNCHANGED = b""  # the generation tensorstore reports when a conditional write did not happen


class OutputLock:
    def __init__(self, output: str, *, stale_after: float = 120.0, heartbeat: float = 20.0) -> None:
        self.output = output
        self.stale_after = stale_after
        self.interval = heartbeat
        self._kv: Any = None
        self._generation: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def _payload(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": time.time()}).encode()

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if time.time() - float(holder.get("heartbeat", 0)) > self.stale_after:
            return True
        if holder.get("host") == self.record["host"]:
            try:
                os.kill(int(holder.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                return False
        return False

    def acquire(self) -> None:
        self._kv = urls.open_kvstore(self.output)
        for _ in range(5):
            current = self._kv.read(KEY).result()
            if current.state == "value":
                try:
                    holder = json.loads(current.value)
                except ValueError:
                    holder = {}
                if not self._is_stale(holder):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
                    raise OutputLockedError(
                        f"the output {self.output} is being written by another emseg run (host "
                        f"{holder.get('host')}, pid {holder.get('pid')}, since {since}); wait for it to finish or "
                        f"choose another output (a dead run's lock expires {self.stale_after:.0f} s after its last "
                        f"heartbeat)"
                    )
            stamp = self._kv.write(KEY, self._payload(), if_equal=current.stamp.generation).result()
            if stamp.generation != _UNCHANGED:
                self._generation = stamp.generation
                self._thread = threading.Thread(target=self._beat, name="emseg-lock", daemon=True)
                self._thread.start()
                return
        raise OutputLockedError(f"could not lock the output {self.output}: other runs keep taking it")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            stamp = self._kv.write(KEY, self._payload(), if_equal=self._generation).result()
            if stamp.generation == _UNCHANGED:
                return  # taken over (we were presumed dead); the run's own writes stay idempotent
            self._generation = stamp.generation

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._kv is not None and self._generation is not None:
            self._kv.write(KEY, None, if_equal=self._generation).result()
        self._generation = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
