"""Reads and writes through fsspec: transient failures of a store tried again with backoff, others not."""

import errno

import pytest

from v2v.core.storage import StorageError, file_version, is_transient, retrying


@pytest.mark.parametrize("error, transient", [
    (ConnectionResetError(errno.ECONNRESET, "reset by peer"), True),
    (TimeoutError("read timed out"), True),
    (OSError("An error occurred (SlowDown) when calling the GetObject operation"), True),  # s3fs, no errno
    (FileNotFoundError(errno.ENOENT, "no such key"), False),
    (FileNotFoundError("The specified bucket does not exist"), False),  # s3fs, no errno: lasting all the same
    (PermissionError("Access Denied"), False),
    (PermissionError(errno.EACCES, "forbidden"), False),
    (OSError(errno.ENOSPC, "no space left on device"), False),
    (FileExistsError(errno.EEXIST, "a file where a folder should be"), False),
    (ValueError("a programmer's mistake"), False),
])
def test_transient_store_errors_are_told_from_lasting_ones(error, transient):
    assert is_transient(error) is transient


def test_retrying_tries_a_transient_failure_again_then_names_what_kept_failing():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
        return "read"

    assert retrying(flaky, "s3://b/v.mp4", first_wait_s=0.01) == "read" and len(calls) == 3
    calls.clear()

    def down():
        calls.append(1)
        raise TimeoutError("read timed out")

    with pytest.raises(StorageError, match=r"s3://b/v.mp4: the store kept failing \(4 tries\): TimeoutError"):
        retrying(down, "s3://b/v.mp4", first_wait_s=0.01)
    assert len(calls) == 4
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError(errno.ENOENT, "no such key")

    with pytest.raises(FileNotFoundError):
        retrying(missing, "s3://b/v.mp4", first_wait_s=0.01)
    assert len(calls) == 1  # a lasting failure is not tried again


def test_file_version_changes_with_the_file(tmp_path):
    f = tmp_path / "v.mp4"
    f.write_bytes(b"one")
    first = file_version(str(f))
    f.write_bytes(b"two!")
    assert file_version(str(f)) != first and file_version(str(tmp_path / "missing.mp4")) is None
