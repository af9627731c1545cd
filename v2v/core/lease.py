"""One live job per output root: a lease file with its owner and a heartbeat.

A second job on an output that a live job is writing is refused with the owner's name; a lease whose
heartbeat is older than `ttl_s` belongs to a dead job and is taken over. On object stores there is no atomic
create-if-absent through fsspec, so taking a lease is write-then-read-back: it closes the common race (two jobs
started minutes apart), not two started within the same second.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from v2v.core.storage import join, url_to_fs, write_bytes_atomic

LEASE_FILE = "_lease.json"


class LeaseError(RuntimeError):
    """Another live job holds the output root."""


class Lease:
    def __init__(self, output: str, run_id: str, ttl_s: float = 120.0, heartbeat_s: float = 15.0):
        self.uri = join(output, LEASE_FILE)
        self.run_id, self.ttl_s, self.heartbeat_s = run_id, ttl_s, heartbeat_s
        self.owner = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict | None = None  # the stale lease we replaced, if any

    def _read(self) -> dict | None:
        fs, path = url_to_fs(self.uri)
        try:
            with fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {"run_id": "?", "heartbeat": 0}  # unreadable: treat as stale

    def _write(self) -> None:
        write_bytes_atomic(self.uri, json.dumps({**self.owner, "heartbeat": time.time(), "ttl_s": self.ttl_s}).encode())

    def acquire(self) -> "Lease":
        current = self._read()
        if current and current.get("run_id") != self.run_id:
            age = time.time() - float(current.get("heartbeat", 0))
            if age < float(current.get("ttl_s", self.ttl_s)):
                raise LeaseError(
                    f"output {self.uri.rsplit('/', 1)[0]} is in use by run {current.get('run_id')} on host "
                    f"{current.get('host')} (pid {current.get('pid')}), heartbeat {age:.0f} s ago. Wait for it, or "
                    f"if that job is dead, rerun after {float(current.get('ttl_s', self.ttl_s)) - age:.0f} s "
                    f"(or delete {LEASE_FILE} there)")
            self.took_over = current
        self._write()
        time.sleep(0.05)
        if (self._read() or {}).get("run_id") != self.run_id:
            raise LeaseError(f"output {self.uri.rsplit('/', 1)[0]}: another job took the lease at the same time")
        self._thread = threading.Thread(target=self._beat, name="v2v-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError:  # a transient store error: the next beat retries; ttl_s covers several misses
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if (self._read() or {}).get("run_id") == self.run_id:
            fs, path = url_to_fs(self.uri)
            fs.rm(path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
