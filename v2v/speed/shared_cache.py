"""A compile cache shared by machines: what one actor compiled, another machine's actors fetch instead of compiling.

The compile cache (`V2V_COMPILE_CACHE`) is a folder on one machine: an actor's second start there loads its
compiled parts in ~30 s, but a machine that has not compiled them (a new node of an autoscaled cluster, a fresh
pod) pays the first start, minutes of compiling (benchmarks/RESULTS.md). With a shared cache, a URI every machine
reaches (s3://, gs://, a shared folder), the actor that compiles a part puts the files it wrote into one archive
there, `<part>-<key>.tar` (the key of v2v.speed.stored, which names the model, settings, input shapes, torch version and
card), and an actor on another machine that lacks that part fetches the archive into its own cache, then loads as
on a second start.

An archive holds the files that appeared in the local cache while its part was built and first called: the saved
compiled function and the kernels inductor compiled for it (on a GPU Triton's binaries, with their tuned launch
settings, written at the first call), and perhaps a few files of another part built at the same moment by another
actor. Not in it: files the cache already held from an earlier build, and kernels that only loading a saved part
in a fresh process compiles (a few small reductions). A machine that fetches the archive and compiles such files puts the archive back with them, so the
machines after it compile nothing. Files are named by what they hold, so fetching never overwrites a file the
machine already has.

The shared cache is code the actors run (compiled kernels, pickled graphs): give it the trust of the model itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import time
from pathlib import Path

from v2v.core.storage import atomic_output, join, readable_path, url_to_fs

logger = logging.getLogger(__name__)


def _kept(rel: str) -> bool:
    """Whether a cache file travels: not a lock, a temporary file, or a per-machine check (v2v.speed.stored's `.loads`)."""
    name = rel.rsplit("/", 1)[-1]
    return not (name.endswith((".lock", ".loads")) or name.startswith(".tmp") or rel.startswith("locks/"))


class SharedCache:
    """Archives of compiled parts at `uri`, fetched into and stored from the local compile cache `local`."""

    def __init__(self, uri: str, local: str | Path):
        self.uri = uri.rstrip("/")
        self.local = Path(local)
        # archives moved, their megabytes and seconds, for the actor's start-up line
        self.moved = {"fetched": [0, 0.0, 0.0], "stored": [0, 0.0, 0.0]}

    def summary(self) -> str:
        """e.g. 'fetched 3 archives (120.3 MB) in 2.1 s', or '' where none moved."""
        return ", ".join(f"{k} {n} archive{'s' * (n > 1)} ({mb:.1f} MB) in {s:.1f} s"
                         for k, (n, mb, s) in self.moved.items() if n)

    def _count(self, what: str, size: int, seconds: float) -> None:
        m = self.moved[what]
        m[0] += 1
        m[1] += size / 1e6
        m[2] += seconds

    def files(self) -> set[str]:
        """Paths (relative, '/'-separated) of the local cache's files that travel."""
        out = set()
        for folder, _, names in os.walk(self.local):
            rel = os.path.relpath(folder, self.local).replace(os.sep, "/")
            for n in names:
                path = n if rel == "." else f"{rel}/{n}"
                if _kept(path):
                    out.add(path)
        return out

    def fetch(self, name: str) -> set[str]:
        """Extract `<uri>/<name>.tar` into the local cache, each file it lacks written whole, then renamed.
        Returns the files the archive held ({} where there is none). One that cannot be read costs a warning and
        an empty set: the caller compiles instead."""
        uri = join(self.uri, f"{name}.tar")
        t0 = time.perf_counter()
        try:
            fs, path = url_to_fs(uri)
            if not fs.exists(path):
                return set()
            with readable_path(uri) as tmp, tarfile.open(tmp) as tar:
                held = self._extract(tar)
                size = os.path.getsize(tmp)
        except Exception as e:  # a store out of reach or refusing (credentials), a bad archive: compile instead
            logger.warning("shared compile cache: %s could not be fetched (%s: %s); compiling here instead",
                           uri, type(e).__name__, e)
            return set()
        self._count("fetched", size, time.perf_counter() - t0)
        logger.info("shared compile cache: fetched %d files (%.1f MB) from %s in %.1f s", len(held), size / 1e6, uri,
                    time.perf_counter() - t0)
        return held

    def _extract(self, tar: tarfile.TarFile) -> set[str]:
        members = tar.getmembers()
        for m in members:  # all checked before anything is written
            if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/") or not _kept(m.name):
                raise ValueError(f"member {m.name!r} is not a cache file")
        # the compiled functions and packages themselves last: an actor that sees one finds its kernels too
        members.sort(key=lambda m: m.name.endswith((".dynamo", ".pt2")))
        for m in members:
            target = self.local / m.name
            if target.exists():
                continue
            with atomic_output(str(target)) as tmp:  # a `.tmp-` file beside it, renamed once whole
                with tar.extractfile(m) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.chmod(tmp, m.mode & 0o755 | 0o644)
        return {m.name for m in members}

    def store(self, name: str, files: set[str]) -> None:
        """Put `files` of the local cache into `<uri>/<name>.tar` (written whole: no reader sees part of it). A
        store that fails costs a warning: this machine has its part; others compile theirs."""
        uri = join(self.uri, f"{name}.tar")
        t0 = time.perf_counter()
        try:
            with atomic_output(uri, suffix=".tar") as tmp:
                with tarfile.open(tmp, "w") as tar:
                    for rel in sorted(files):
                        if (self.local / rel).is_file():  # a file removed meanwhile (a temporary one) is left out
                            tar.add(self.local / rel, arcname=rel, recursive=False)
                size = os.path.getsize(tmp)
        except Exception as e:  # as in fetch: the part is built and loaded here whatever the store says
            logger.warning("shared compile cache: %s could not be stored (%s: %s)", uri, type(e).__name__, e)
            return
        self._count("stored", size, time.perf_counter() - t0)
        logger.info("shared compile cache: stored %d files (%.1f MB) in %s in %.1f s", len(files), size / 1e6, uri,
                    time.perf_counter() - t0)
