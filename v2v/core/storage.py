"""fsspec helpers: every read and write goes through here, so local paths and object stores behave alike."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import tempfile
import time
import urllib.parse
import uuid

import fsspec

logger = logging.getLogger(__name__)

# The packages whose exceptions mean "the store (or the network to it) failed", besides OSError.
_STORE_PACKAGES = {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "fsspec", "urllib3", "requests",
                   "google", "azure"}
# Tries of a read or write of one file, and the first wait between them (doubling): ~8 s of an outage covered.
STORE_TRIES = 4
STORE_FIRST_WAIT_S = 0.5


# What every StorageError says: a failed row's error holding it is one the store caused (core.index reads it).
KEPT_FAILING = "the store kept failing"


class StorageError(OSError):
    """A read or write that the store kept failing (timeouts, connection resets, 5xx) through every retry."""


# errno values of failures that may pass; others (a missing or forbidden file, a full or read-only disk) stay.
_TRANSIENT_ERRNOS = {errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                     errno.EAGAIN, errno.EBUSY, errno.EIO, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}


def is_transient(e: BaseException) -> bool:
    """Whether `e` is a failure of the store or the network to it that may pass: a timeout, a reset or refused
    connection, an object store's 5xx (raised by its client, or as an OSError without an errno). Not a missing
    object or bucket, nor a refusal (object stores are read-after-write consistent: these do not pass), which s3fs
    raises as FileNotFoundError or PermissionError without an errno."""
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    if isinstance(e, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(e, OSError):
        return e.errno is None or e.errno in _TRANSIENT_ERRNOS
    return type(e).__module__.split(".")[0] in _STORE_PACKAGES


def retrying(fn, what: str, tries: int = STORE_TRIES, first_wait_s: float = STORE_FIRST_WAIT_S):
    """fn(), tried again with exponential backoff while it fails with a transient store error; the last such
    failure is raised as StorageError naming `what`. Other errors pass through at once."""
    for attempt in range(tries):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == tries - 1:
                raise StorageError(f"{what}: {KEPT_FAILING} ({tries} tries): {type(e).__name__}: {e}") from e
            wait = first_wait_s * 2**attempt
            logger.warning("%s: %s: %s; trying again in %.1f s", what, type(e).__name__, e, wait)
            time.sleep(wait)


def url_to_fs(uri: str):
    """(filesystem, path) for a local path, file://, s3://, gs://, http(s):// or memory:// URI."""
    return fsspec.core.url_to_fs(uri)


def is_local(uri: str) -> bool:
    fs, _ = url_to_fs(uri)
    return "file" in _protocols(fs)


def _protocols(fs) -> tuple:
    p = fs.protocol
    return p if isinstance(p, tuple) else (p,)


def file_version(uri: str) -> str | None:
    """What tells one version of a file from the next without reading it: its size and its etag (object stores)
    or modification time. None where the file cannot be looked at."""
    fs, path = url_to_fs(uri)
    try:
        return info_version(fs.info(path))
    except Exception as e:  # the store's own exception types too: a version unknown now only costs a re-render
        if isinstance(e, (OSError, ValueError)) or is_transient(e):
            return None
        raise


def info_version(info: dict) -> str:
    """A file's size and etag or modification time, from what an fsspec listing says of it."""
    stamp = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated")
                  if info.get(k) is not None), None)
    return f"{info.get('size')}:{stamp}"


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts]])


def local_path(uri: str) -> str | None:
    """The OS path of a local URI, else None."""
    fs, path = url_to_fs(uri)
    return path if "file" in _protocols(fs) else None


@contextlib.contextmanager
def atomic_output(uri: str, suffix: str = ""):
    """Yield a local temporary path; on success it becomes `uri` in one step, on failure it vanishes.

    Local targets: a temp file in the same folder, then os.replace. Object stores: a local temp file, then
    one upload; an object appears at its key only once the upload completes, so no reader sees a partial file.
    """
    fs, path = url_to_fs(uri)
    if "file" in _protocols(fs):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}{suffix}")
        publish = os.replace
    else:
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        publish = fs.put_file
    try:
        yield tmp
        publish(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def machine_lock(path):
    """An exclusive lock on the local file `path` (made with its folder where missing), held while within: the
    processes of one machine that would each fetch or build the same thing (the restyle actors of a many-GPU node
    starting together) do it once; the others wait, then find it done. Released when its process dies."""
    import fcntl

    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    with atomic_output(uri) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def check_writable(folder: str) -> None:
    """Write a small file under `folder` and remove it, riding out transient store errors (`retrying`): an output
    that cannot be written (a bucket that does not exist, no permission, a read-only disk) fails here, before any
    work, not at each clip's write after hours of GPU time. Raises OSError (StorageError where the store kept
    failing)."""
    probe = join(folder, f".v2v-write-check-{uuid.uuid4().hex[:12]}")
    retrying(lambda: write_bytes_atomic(probe, b"v2v"), probe)
    fs, path = url_to_fs(probe)
    with contextlib.suppress(FileNotFoundError):
        retrying(lambda: fs.rm(path), probe)


@contextlib.contextmanager
def readable_path(uri: str):
    """Yield a local path for `uri`: the file itself if local, else a downloaded temporary copy."""
    lp = local_path(uri)
    if lp is not None:
        yield lp
        return
    fs, path = url_to_fs(uri)
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        os.unlink(tmp)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_len: int = 80) -> str:
    """A single path segment made from `text`: no separators, no '..', nothing hidden, bounded length.

    Percent-encoded separators are decoded first so they are caught too. Readable where `text` was.
    """
    text = urllib.parse.unquote(str(text))
    name = _SAFE.sub("_", text).strip("._")[:max_len]
    return name or "_"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
