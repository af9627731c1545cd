"""The Ray Data job end to end on a real local Ray cluster, with the tiny model and generated videos."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from v2v.config import JobConfig
from v2v.pipeline import run_job
from v2v.samples import make_video
from v2v.video import read_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    for i in range(3):
        make_video(str(d / f"v{i}.mp4"), 16 + 4 * i, 80, 64, seed=i)
    (d / "bad.mp4").write_text("not a video")
    rows = [{"video": f"v{i}.mp4", "prompt": f"style {i}", "seed": 100 * i, "tag": f"t{i}"} for i in range(3)]
    rows.append({"video": "bad.mp4", "prompt": "x", "seed": None, "tag": "broken"})
    df = pd.DataFrame(rows)
    df.to_csv(d / "m.csv", index=False)
    df.to_parquet(d / "m.parquet")
    df.to_json(d / "m.jsonl", orient="records", lines=True)
    return d


def _cfg(inputs, out, manifest="m.csv", **kw):
    base = dict(manifest=str(inputs / manifest), output=str(out), steps=4, codec="ffv1", max_failures=1,
                batch_size=2)
    return JobConfig(**{**base, **kw})


def _outputs(out) -> dict:
    df = pd.read_parquet(os.path.join(out, "index"))
    return {(r.id, r.clip_index): r.output_sha256 for r in df.itertuples() if r.status == "ok"}


@pytest.mark.parametrize("manifest", ["m.csv", "m.parquet", "m.jsonl"])
def test_end_to_end_from_each_manifest_format(ray_cluster, inputs, tmp_path, manifest):
    out = tmp_path / "out"
    s = run_job(_cfg(inputs, out, manifest), log=lambda m: None)
    df = pq.read_table(out / "index").to_pandas()  # the index folder reads as one dataset
    # videos of 16, 20, 24 frames at 8 frames per clip -> 2 + 3 (last of 4) + 3 clips, plus the bad video
    assert (s.planned, s.ok, s.failed, s.skipped) == (9, 8, 1, 0)
    assert s.exit_code == 0 and len(df) == 9 and not df.duplicated(["id", "clip_index"]).any()
    bad = df[df.tag == "broken"].iloc[0]
    assert bad.status == "failed" and bad.clip_index == -1 and "bad.mp4" in bad.error
    ok = df[df.status == "ok"]
    assert set(ok.tag) == {"t0", "t1", "t2"}  # pass-through column
    for r in ok.itertuples():
        frames = read_frames(str(out / r.output))
        assert frames.shape == (r.num_frames, 64, 64, 3)
        assert r.seed == 100 * int(r.tag[1]) + r.clip_index  # row seed + clip index
        assert r.decode_s >= 0 and r.restyle_s > 0 and r.encode_s > 0 and len(r.output_sha256) == 64
    meta = json.loads((out / "job.json").read_text())
    assert meta["versions"]["ray"] and meta["model"]["sha256"] and meta["summary"]["ok"] == 8
    assert not (out / "_progress").exists()


def test_outputs_do_not_depend_on_batch_size_or_actor_count(ray_cluster, inputs, tmp_path):
    runs = {}
    for name, kw in {"b1": dict(batch_size=1), "b4": dict(batch_size=4), "a2": dict(batch_size=2, num_actors=2)}.items():
        run_job(_cfg(inputs, tmp_path / name, **kw), log=lambda m: None)
        runs[name] = _outputs(tmp_path / name)
    assert len(runs["b1"]) == 8
    assert runs["b1"] == runs["b4"] == runs["a2"]


def test_stitch_and_failures_over_limit(ray_cluster, inputs, tmp_path):
    out = tmp_path / "out"
    s = run_job(_cfg(inputs, out, stitch=True, max_failures=0), log=lambda m: None)
    assert s.exit_code == 1 and "bad.mp4" in s.text()  # one failure, none allowed
    stitched = read_frames(str(out / "videos" / sorted(os.listdir(out / "videos"))[0]))
    assert stitched.shape[1:] == (64, 64, 3) and stitched.shape[0] in (16, 20, 24)


def test_resume_skips_done_clips_and_retries_failed_only_when_asked(ray_cluster, inputs, tmp_path):
    out = tmp_path / "out"
    run_job(_cfg(inputs, out), log=lambda m: None)
    first = _outputs(out)
    victim = sorted(first)[0]
    path = out / pd.read_parquet(out / "index").set_index(["id", "clip_index"]).loc[victim].output
    path.unlink()  # a lost output is redone; the others are not touched
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.mkv")}
    s = run_job(_cfg(inputs, out), log=lambda m: None)
    assert s.rendered_now == 1 and _outputs(out) == first
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())
    assert len(pd.read_parquet(out / "index")) == 9
    s = run_job(_cfg(inputs, out, retry_failed=True), log=lambda m: None)
    assert s.rendered_now == 0 and s.failed == 1  # the bad video was tried again, and failed again


def test_killed_run_resumes_to_the_undisturbed_result(ray_cluster, inputs, tmp_path):
    ref = tmp_path / "ref"
    run_job(_cfg(inputs, ref), log=lambda m: None)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.restyle", "--manifest", str(inputs / "m.csv"), "--output", str(out),
           "--steps", "4", "--codec", "ffv1", "--max-failures", "1", "--batch-size", "1",
           "--ray-address", ray_cluster["address"]]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "clips").rglob("*.mkv")) if out.exists() else True:
        time.sleep(0.2)
        if proc.poll() is not None:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (out / "index" / "index.parquet").exists()  # killed before finishing
    s = run_job(_cfg(inputs, out), log=lambda m: None)
    assert s.ok == 8 and _outputs(out) == _outputs(ref)
    df = pd.read_parquet(out / "index")
    assert len(df) == 9 and not df.duplicated(["id", "clip_index"]).any()


def test_dry_run_plans_without_loading_a_model(ray_cluster, inputs, tmp_path):
    s = run_job(_cfg(inputs, tmp_path / "out", dry_run=True, model="/nonexistent/model"), log=lambda m: None)
    assert s.planned == 9 and not (tmp_path / "out" / "clips").exists()


def test_ray_job_submit(ray_cluster, inputs, tmp_path):
    out = tmp_path / "submitted"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", ray_cluster["dashboard"],
           "--working-dir", REPO, "--", "python", "-m", "jobs.restyle", "--manifest", str(inputs / "m.jsonl"),
           "--output", str(out), "--steps", "2", "--max-failures", "1", "--max-clips", "1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "3 ok, 1 failed" in r.stdout
    df = pd.read_parquet(out / "index")
    assert sorted(df.status) == ["failed", "ok", "ok", "ok"] and all(df[df.status == "ok"].output.str.endswith(".mp4"))
