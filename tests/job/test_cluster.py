"""The job on clusters that change under it, built with Ray's own multi-node test tooling
(ray.cluster_utils.Cluster: real GCS and raylets, several nodes on this machine): a node that joins mid-run gets a
restyle actor, a node that leaves costs only its in-flight clips, and --device cuda without a GPU stops cleanly."""

import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from ray.cluster_utils import Cluster

from jobs.demo import make_video
from tests.helpers import REPO, progress_rows

pytestmark = pytest.mark.slow

GIB = 2**30


@pytest.fixture
def cluster(cache_dir):
    """A one-node cluster whose head holds one restyle actor (by its reserved memory: --actor-memory-gib 1)."""
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 3, "memory": int(1.5 * GIB)})
    yield c
    c.shutdown()


@pytest.fixture
def driver(tmp_path):
    """Starts `python -m jobs.restyle --ray-address ADDRESS ...` with its output in a file (a pipe nobody reads
    while the test waits would stall it once full); the process is killed if the test ends before it does."""
    procs = []

    def start(address: str, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"driver{len(procs)}.log", "w+")
        p = subprocess.Popen([sys.executable, "-m", "jobs.restyle", "--ray-address", address, *args], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, stdout=log, stderr=subprocess.STDOUT, text=True)
        p.output = lambda: (log.seek(0), log.read())[1]
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_device_cuda_without_a_gpu_waits_then_stops_naming_the_problem(cluster, driver, tmp_path):
    make_video(str(tmp_path / "v.mp4"), 8, 64, 64)
    (tmp_path / "m.csv").write_text("video,prompt\nv.mp4,ink\n")
    t0 = time.time()
    p = driver(cluster.address, "--manifest", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"),
               "--device", "cuda", "--gpu-wait-s", "3")
    p.wait(timeout=300)
    out = p.output()
    assert p.returncode == 2, out[-2000:]
    assert "waiting up to 3 s for a GPU node" in out
    assert "no GPU joined the cluster within 3 s (--gpu-wait-s)" in out and "Traceback" not in out
    assert time.time() - t0 >= 3


def test_a_node_that_joins_gets_an_actor_and_one_that_leaves_loses_no_clip(cluster, driver, tmp_path):
    for i in range(8):
        make_video(str(tmp_path / f"v{i}.mp4"), 96, 64, 64, seed=i)  # 12 clips of 8 frames each
    (tmp_path / "m.csv").write_text("video,prompt\n" + "".join(f"v{i}.mp4,style {i}\n" for i in range(8)))
    out = tmp_path / "out"
    p = driver(cluster.address, "--manifest", str(tmp_path / "m.csv"), "--output", str(out), "--steps", "20",
               "--codec", "ffv1", "--device", "cpu", "--num-actors", "2", "--actor-memory-gib", "1",
               "--batch-size", "1")

    def progress() -> pd.DataFrame:
        return progress_rows(out)

    def wait(until, what: str, limit: float):
        deadline = time.time() + limit
        while not until():
            assert p.poll() is None, f"the job ended before {what}: {p.output()[-2000:]}"
            assert time.time() < deadline, f"no {what} in {limit} s; the job's output:\n{p.output()[-3000:]}"
            time.sleep(0.5)

    # Generous limits: on a 2-core machine the actors start at the lowest priority (Ray's workers run at nice 15)
    # beside three raylets and the head's busy actor, and Ray Data sees a new node on its 20 s resource tick.
    wait(lambda: len(progress()) > 0, "first clips", 420)
    joined = cluster.add_node(num_cpus=2, memory=int(1.5 * GIB))
    tag = f"node-{joined.node_id[:12]}"
    wait(lambda: progress().worker.astype(str).str.contains(tag).any(), "clip from the node that joined", 420)
    # Preempted mid-run, with whatever it had in flight. No node comes back, and the restarted actor does not fit
    # on the head (its reserved memory): the clips it had must be redone by the head's actor, not wait for it.
    cluster.remove_node(joined)
    p.wait(timeout=600)
    assert p.returncode == 0, p.output()[-3000:]
    assert "came back from no actor (an actor stopped or its node left); restyling them again" in p.output()
    df = pd.read_parquet(out / "index")
    assert len(df) == 96 and (df.status == "ok").all() and not df.duplicated(["id", "clip_index"]).any()
    assert df.worker.str.contains(tag).any()  # the joined node's actor restyled clips before it left
    assert df.worker.str.extract(r"node-(\w+)")[0].nunique() == 2
