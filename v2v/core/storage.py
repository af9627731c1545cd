"""fsspec helpers: every read and write goes through here, so local paths and object stores behave alike."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.parse
import uuid

import fsspec


def url_to_fs(uri: str):
    """(filesystem, path) for a local path, file://, s3://, gs://, http(s):// or memory:// URI."""
    return fsspec.core.url_to_fs(uri)


def is_local(uri: str) -> bool:
    fs, _ = url_to_fs(uri)
    return "file" in _protocols(fs)


def _protocols(fs) -> tuple:
    p = fs.protocol
    return p if isinstance(p, tuple) else (p,)


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


def write_bytes_atomic(uri: str, data: bytes) -> None:
    with atomic_output(uri) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


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
