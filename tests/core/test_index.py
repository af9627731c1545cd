"""Which failed clips a plain rerun renders again (v2v.core.index): those the store or the cluster failed, once."""

from v2v.core.index import lost_error, retried_by_a_rerun


def _failed(error: str) -> dict:
    return {"status": "failed", "error": error}


def test_a_rerun_retries_what_the_store_or_the_cluster_failed_and_nothing_else():
    store = "decode: s3://b/v.mp4: the store kept failing (4 tries): OSError: SlowDown"
    lost = lost_error(3, None)
    assert retried_by_a_rerun(_failed(store)) and retried_by_a_rerun(_failed(lost))
    for error in ("decode: /v/a.mp4: not a readable video", "restyle: the output holds NaN or infinite values",
                  "encode: StorageError: s3://b/out/x.mp4: permission denied", None):
        assert not retried_by_a_rerun(_failed(error)), error
    assert not retried_by_a_rerun({"status": "ok", "error": lost})


def test_a_clip_lost_in_two_runs_running_waits_for_retry_failed():
    """A clip that kills every actor holding it (a decoder crash) would cost each nightly rerun its passes of actor
    restarts: a rerun retries a lost clip once, and one lost again waits for --retry-failed."""
    first = lost_error(3, None)
    assert first.startswith("lost: ") and "a rerun retries it" in first
    again = lost_error(3, _failed(first))
    assert again.startswith("lost again: ") and "--retry-failed" in again
    assert not retried_by_a_rerun(_failed(again))
    assert lost_error(3, _failed(again)).startswith("lost again: ")  # and stays so
    # lost after an earlier run had rendered it (or failed it otherwise): the first time
    assert lost_error(3, {"status": "ok", "error": None}) == first
    assert lost_error(3, _failed("decode: not a readable video")) == first
