"""Durable progress at scale, on a 2-CPU cluster (ray.cluster_utils.Cluster): 5,000 clips of the tiny model. Clips
are written seconds after they are restyled and their rows follow within the flush interval, so a SIGKILL loses at
most a bound of clips (those of the actor's call and one flush), never the run's work."""

import os
import signal
import subprocess
import sys
import time

import pytest
from ray.cluster_utils import Cluster

from jobs.demo import make_video
from tests.helpers import REPO, progress_rows
from v2v.job.stages import ClipWorker

pytestmark = pytest.mark.slow

# What a kill may lose: the written clips whose rows the one actor has not yielded yet (at most its call's
# CALL_BATCHES batches of 4; it yields each row once its clip is written, at the next clip's end) and the rows of the
# last flush interval (2 s of writes; generous here for a loaded 2-core machine).
BOUND = ClipWorker.CALL_BATCHES * 4 + 40


def _counts(out) -> tuple[int, int]:
    """(clip files written, rows in _progress) now."""
    files = len(list(out.glob("clips/*/*.mkv")))
    return files, int((progress_rows(out, ["status"]).status == "ok").sum())


def test_a_large_manifest_is_written_as_it_is_restyled_and_a_kill_loses_at_most_the_bound(cache_dir, tmp_path):
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2})
    try:
        videos = tmp_path / "videos"
        videos.mkdir()
        lines = ["video,prompt"]
        for i in range(100):  # 100 videos x 400 frames = 5,000 clips of 8 frames
            make_video(str(videos / f"v{i}.mp4"), 400, 64, 64, seed=i)
            lines.append(f"v{i}.mp4,style {i % 7}")
        (videos / "m.csv").write_text("\n".join(lines) + "\n")
        out = tmp_path / "out"
        args = ["--manifest", str(videos / "m.csv"), "--output", str(out), "--steps", "2", "--codec", "ffv1",
                "--batch-size", "4", "--device", "cpu", "--ray-address", cluster.address]
        p = subprocess.Popen([sys.executable, "-m", "jobs.restyle", *args], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while _counts(out)[0] == 0:  # the actor's start, and the plan of 100 videos
            assert p.poll() is None and time.time() < deadline, "no clip written"
            time.sleep(0.5)
        seen = []
        for _ in range(12):  # a minute of writing
            time.sleep(5)
            files, rows = _counts(out)
            seen.append(files)
            assert files - rows <= BOUND, (files, rows)  # rows follow the files within the flush interval
        assert all(b > a for a, b in zip(seen, seen[1:])), seen  # clips reach the disk steadily
        assert seen[-1] < 5000, "the kill should land mid-run"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        files, rows = _counts(out)
        assert 0 < rows and files - rows <= BOUND
        # what a rerun would do: the clips whose rows were saved are done; only the rest is to render
        dry = subprocess.run([sys.executable, "-m", "jobs.restyle", *args, "--dry-run"], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=600)
        assert dry.returncode == 0, dry.stderr[-2000:]
        planned = f"5000 clips planned; {rows} done or failed before, {5000 - rows} to render"
        assert planned in dry.stdout + dry.stderr, (planned, dry.stdout[-1000:])
    finally:
        cluster.shutdown()
