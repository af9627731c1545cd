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


def _driver(address: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.restyle", "--ray-address", address, *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_device_cuda_without_a_gpu_waits_then_stops_naming_the_problem(cluster, tmp_path):
    make_video(str(tmp_path / "v.mp4"), 8, 64, 64)
    (tmp_path / "m.csv").write_text("video,prompt\nv.mp4,ink\n")
    t0 = time.time()
    p = _driver(cluster.address, "--manifest", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"),
                "--device", "cuda", "--gpu-wait-s", "3")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, err[-2000:]
    assert "waiting up to 3 s for a GPU node" in out + err
    assert "no GPU joined the cluster within 3 s (--gpu-wait-s)" in err and "Traceback" not in err
    assert time.time() - t0 >= 3


def test_a_node_that_joins_gets_an_actor_and_one_that_leaves_loses_no_clip(cluster, tmp_path):
    for i in range(8):
        make_video(str(tmp_path / f"v{i}.mp4"), 96, 64, 64, seed=i)  # 12 clips of 8 frames each
    (tmp_path / "m.csv").write_text("video,prompt\n" + "".join(f"v{i}.mp4,style {i}\n" for i in range(8)))
    out = tmp_path / "out"
    p = _driver(cluster.address, "--manifest", str(tmp_path / "m.csv"), "--output", str(out), "--steps", "20",
                "--codec", "ffv1", "--device", "cpu", "--num-actors", "2", "--actor-memory-gib", "1",
                "--batch-size", "1")

    def progress() -> pd.DataFrame:
        return progress_rows(out)

    def wait(until, what: str, limit: float = 240):
        deadline = time.time() + limit
        while not until():
            assert p.poll() is None, f"the job ended before {what}: {p.communicate()[1][-2000:]}"
            assert time.time() < deadline, f"no {what} in {limit} s"
            time.sleep(0.5)

    wait(lambda: len(progress()) > 0, "first clips")
    joined = cluster.add_node(num_cpus=2, memory=int(1.5 * GIB))
    tag = f"node-{joined.node_id[:12]}"
    wait(lambda: progress().worker.astype(str).str.contains(tag).any(), "clip from the node that joined")
    cluster.remove_node(joined)  # preempted mid-run, with whatever it had in flight
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    df = pd.read_parquet(out / "index")
    assert len(df) == 96 and (df.status == "ok").all() and not df.duplicated(["id", "clip_index"]).any()
    assert df.worker.str.contains(tag).any()  # the joined node's actor restyled clips before it left
    assert df.worker.str.extract(r"node-(\w+)")[0].nunique() == 2
