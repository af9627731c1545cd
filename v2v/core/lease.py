"""One live job per output root: a lease file with its owner and a heartbeat.

A second job on an output that a live job is writing is refused with the owner's name. A lease is taken over when
its owner is known dead: at once where the owner ran on this host and its process is gone (its pid, and that pid's
start time, since pids are reused), else once its heartbeat is older than `ttl_s`. A lease whose owner has missed
two heartbeats is waited out (at most what is left of its `ttl_s`) rather than refused: the owner was most likely
killed on another host (a preempted head node, a KubeRay retry on a new cluster), and the job rerun at once takes
over as soon as the lease expires; a heartbeat seen meanwhile means the owner lives, and the job is refused.

Before a job replaces the index it checks that it still holds the lease (`check`, fencing): a job whose heartbeat
stalled and whose lease another job took never overwrites the newer job's index. On object stores there is no
atomic create-if-absent through fsspec, so taking a lease is write-then-read-back: it closes the common race (two
jobs started minutes apart), not two started within the same second.
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
    """Another live job holds the output root (or took it from this one)."""


def process_start(pid: int) -> float | None:
    """When process `pid` of this host started (seconds since the epoch), or None where there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def owner_is_gone(lease: dict) -> bool:
    """Whether a lease's owner was a process of this host that no longer runs: its pid is free, or now names
    another process (one started later than the owner)."""
    if lease.get("host") != socket.gethostname() or not isinstance(lease.get("pid"), int):
        return False
    started = process_start(lease["pid"])
    return started is None or abs(started - float(lease.get("pid_start") or 0)) > 1.0


class Lease:
    def __init__(self, output: str, run_id: str, ttl_s: float = 120.0, heartbeat_s: float = 15.0, log=None):
        self.uri = join(output, LEASE_FILE)
        self.run_id, self.ttl_s, self.heartbeat_s = run_id, ttl_s, heartbeat_s
        self.log = log  # where a wait for a silent owner's lease is said (print-like), or None
        self.owner = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                      "pid_start": process_start(os.getpid())}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict | None = None  # the stale lease we replaced, if any
        self.lost_to: dict | None = None  # the lease that replaced ours while we ran, once a beat or check sees it

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
        write_bytes_atomic(self.uri, json.dumps({**self.owner, "heartbeat": time.time(), "ttl_s": self.ttl_s,
                                                 "heartbeat_s": self.heartbeat_s}).encode())

    def acquire(self) -> "Lease":
        current = self._read()
        if current and current.get("run_id") != self.run_id:
            current = self._wait_out(current)
        if current and current.get("run_id") != self.run_id:
            age = time.time() - float(current.get("heartbeat", 0))
            if age < float(current.get("ttl_s", self.ttl_s)) and not owner_is_gone(current):
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

    def _wait_out(self, current: dict) -> dict | None:
        """Where `current`'s owner has missed two heartbeats, wait until its lease expires or changes: the lease as
        it then is (None: released). A live owner's lease, or one already expired, comes back at once."""
        ttl = float(current.get("ttl_s", self.ttl_s))
        beat = float(current.get("heartbeat_s") or ttl / 4)  # leases of older v2v versions beat every quarter
        said = False
        while current and current.get("run_id") != self.run_id:
            age = time.time() - float(current.get("heartbeat", 0))
            if age < 2 * beat or age >= ttl or owner_is_gone(current):
                return current
            if not said and self.log is not None:
                self.log(f"v2v: output in use by run {current.get('run_id')} on host {current.get('host')}, whose "
                         f"heartbeat stopped {age:.0f} s ago; waiting up to {ttl - age:.0f} s for its lease to expire")
                said = True
            time.sleep(min(ttl - age + 0.05, beat / 2))
            fresh = self._read()
            if (fresh or {}).get("run_id") != current.get("run_id") or fresh.get("heartbeat") != current.get(
                    "heartbeat"):
                return fresh  # released, taken by another job, or beating again: the caller decides
        return current

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self._read()
                if current and current.get("run_id") != self.run_id:  # taken over: never write over its lease
                    self.lost_to = current
                    return
                self._write()
            except OSError:  # a transient store error: the next beat retries; ttl_s covers several misses
                pass

    def check(self) -> None:
        """Raise LeaseError unless this job still holds the lease: call before replacing what the lease guards."""
        current = self._read()
        if self.lost_to is not None or (current or {}).get("run_id") != self.run_id:
            other = self.lost_to or current or {}
            raise LeaseError(f"output {self.uri.rsplit('/', 1)[0]}: this job (run {self.run_id}) lost its lease to "
                             f"run {other.get('run_id')} on host {other.get('host')} (pid {other.get('pid')}); "
                             "it leaves the index to that run")

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
