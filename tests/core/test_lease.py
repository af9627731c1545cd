"""The output's lease: one live job per output root; a dead owner's lease taken over; fencing before the index."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from v2v.core.lease import LEASE_FILE, Lease, LeaseError, process_start


def _write(out, **lease):
    out.mkdir(exist_ok=True)
    (out / LEASE_FILE).write_text(json.dumps({"run_id": "other-run", "host": socket.gethostname(),
                                              "heartbeat": time.time(), "ttl_s": 120.0, **lease}))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_lease_of_this_host_whose_process_is_gone_is_taken_over_at_once(tmp_path):
    out = tmp_path / "out"
    _write(out, pid=_dead_pid(), pid_start=time.time() - 5)  # heartbeat fresh, process gone
    with Lease(str(out), "new-run") as lease:
        assert lease.took_over["run_id"] == "other-run"
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == "new-run"
    # a reused pid (a live process started at another time than the lease's owner) is not the owner either
    _write(out, pid=os.getpid(), pid_start=process_start(os.getpid()) - 3600)
    with Lease(str(out), "newer-run") as lease:
        assert lease.took_over["run_id"] == "other-run"


@pytest.mark.parametrize("owner", ["live process", "another host"])
def test_a_live_or_unknowable_owner_keeps_its_lease_until_its_heartbeat_stops(tmp_path, owner):
    out = tmp_path / "out"
    if owner == "live process":
        _write(out, pid=os.getpid(), pid_start=process_start(os.getpid()))
    else:  # a process elsewhere: only its heartbeat can say it died
        _write(out, host="another-host", pid=_dead_pid(), pid_start=0)
    with pytest.raises(LeaseError, match="in use by run other-run"):
        Lease(str(out), "new-run").acquire()
    _write(out, **{**json.loads((out / LEASE_FILE).read_text()), "heartbeat": time.time() - 600})
    with Lease(str(out), "new-run") as lease:
        assert lease.took_over["run_id"] == "other-run"


def test_a_lease_whose_owner_stopped_beating_is_waited_out_not_refused(tmp_path):
    """A job rerun at once after its head node died (a KubeRay retry on a new cluster): the dead run's lease, on
    another host, has missed two heartbeats; the new job waits for it to expire and takes over, saying so once."""
    out = tmp_path / "out"
    _write(out, host="another-host", pid=1, heartbeat=time.time() - 1.0, ttl_s=2.0, heartbeat_s=0.25)
    said = []
    t0 = time.monotonic()
    with Lease(str(out), "new-run", log=said.append) as lease:
        waited = time.monotonic() - t0
        assert lease.took_over["run_id"] == "other-run"
    assert 0.7 < waited < 1.9, waited  # the rest of its ttl, not the whole of it
    assert len(said) == 1 and "whose heartbeat stopped 1 s ago; waiting up to 1 s" in said[0], said


def test_an_owner_that_beats_again_while_waited_out_keeps_its_lease(tmp_path):
    """A heartbeat late but alive (a stalled store): the waiting job sees it and is refused, as against any live job."""
    import threading

    out = tmp_path / "out"
    _write(out, host="another-host", pid=1, heartbeat=time.time() - 0.6, ttl_s=3.0, heartbeat_s=0.25)
    late = threading.Timer(0.3, lambda: _write(out, host="another-host", pid=1, ttl_s=3.0, heartbeat_s=0.25))
    late.start()
    t0 = time.monotonic()
    with pytest.raises(LeaseError, match="in use by run other-run"):
        Lease(str(out), "new-run").acquire()
    late.join()
    assert time.monotonic() - t0 < 1.5  # refused once it beat, not after the lease's ttl
    assert json.loads((out / LEASE_FILE).read_text())["run_id"] == "other-run"


def test_a_job_that_lost_its_lease_does_not_write_over_the_new_owner(tmp_path):
    out = tmp_path / "out"
    lease = Lease(str(out), "old-run", ttl_s=1.0, heartbeat_s=0.05).acquire()
    lease.check()  # still ours
    _write(out, run_id="new-run", pid=os.getpid(), pid_start=process_start(os.getpid()))  # taken while it stalled
    time.sleep(0.3)  # several heartbeats: none writes over the new owner's lease
    assert json.loads((out / LEASE_FILE).read_text())["run_id"] == "new-run"
    with pytest.raises(LeaseError, match="lost its lease to run new-run"):
        lease.check()
    lease.release()
    assert json.loads((out / LEASE_FILE).read_text())["run_id"] == "new-run"  # not ours to remove
