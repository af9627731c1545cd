"""The whole job on S3 (manifest, videos, model folder, outputs, index) against a real S3-compatible server."""

import json

import pandas as pd
import pytest
import s3fs

from jobs.demo import make_video
from v2v.config import JobConfig
from v2v.job.pipeline import run_job

pytestmark = pytest.mark.slow  # every test here runs the job on a Ray cluster


@pytest.fixture
def bucket(s3_endpoint, tiny, tmp_path):
    fs = s3fs.S3FileSystem()  # endpoint and credentials from the standard AWS environment
    fs.mkdir("v2v-test")
    for i in range(2):
        fs.put_file(make_video(str(tmp_path / f"v{i}.mp4"), 12, 64, 64, seed=i), f"v2v-test/in/v{i}.mp4")
    fs.pipe_file("v2v-test/in/broken.mp4", b"\x00" * 1000)
    pd.DataFrame({"video": ["v0.mp4", "v1.mp4", "broken.mp4"], "prompt": ["a", "b", "c"]}).to_parquet(
        tmp_path / "m.parquet")
    fs.put_file(str(tmp_path / "m.parquet"), "v2v-test/in/m.parquet")
    fs.put(str(tiny.folder) + "/", "v2v-test/models/tiny/", recursive=True)
    yield fs
    fs.rm("v2v-test", recursive=True)


def test_whole_job_on_s3(ray_cluster, bucket, tmp_path):
    logs = []
    cfg = JobConfig(manifest="s3://v2v-test/in/m.parquet", output="s3://v2v-test/out",
                    model="s3://v2v-test/models/tiny", steps=2, codec="ffv1", max_failures=1, stitch=True)
    s = run_job(cfg, log=logs.append)
    with bucket.open("v2v-test/out/index/index.parquet", "rb") as f:
        df = pd.read_parquet(f)
    # 12 frames -> clips of 8 + 4 per video; the broken file is one failed row
    assert (s.ok, s.failed) == (4, 1), df[["id", "clip_index", "status", "num_frames", "error"]].to_string()
    assert len(df) == 5 and set(df.status) == {"ok", "failed"}
    for r in df[df.status == "ok"].itertuples():
        assert bucket.info(f"v2v-test/out/{r.output}")["size"] == r.output_bytes
    assert len(bucket.ls("v2v-test/out/videos")) == 2
    assert not bucket.exists("v2v-test/out/_progress")
    # credentials never reach the logs, job.json or the index
    secret = "v2v-test-secret-do-not-log"
    meta = bucket.cat_file("v2v-test/out/job.json").decode()
    assert secret not in meta and "v2v-test-key-id" not in meta and json.loads(meta)["model"]["sha256"]
    assert not any(secret in str(v) for v in df.astype(str).values.ravel())
    assert not any(secret in line for line in logs) and secret not in s.text()
    # a second run resumes from what S3 holds: nothing left to render
    again = run_job(cfg, log=logs.append)
    assert again.rendered_now == 0 and again.ok == 4


def test_model_uri_without_a_model_is_refused_before_the_job_runs(bucket):
    from v2v.model.loading import ModelError, check_model

    check_model("s3://v2v-test/models/tiny")
    with pytest.raises(ModelError, match="'s3://v2v-test/models/tiny2': no model_index.json there"):
        check_model("s3://v2v-test/models/tiny2")


def test_store_outages_are_ridden_out_or_become_failed_rows(ray_cluster, bucket, s3_network, tmp_path):
    """Faults between the job and the store: v0.mp4 unreachable for 3 s (connections reset; the job's retries ride
    it out), v1.mp4 answering 503 SlowDown for the whole run (its clips become failed rows naming the store's error;
    the job goes on and ends with its summary, instead of the dataset aborting)."""
    s3_network.outage("in/v0.mp4", seconds=3.0, how="reset")
    s3_network.outage("in/v1.mp4", how="503")
    cfg = JobConfig(manifest="s3://v2v-test/in/m.parquet", output="s3://v2v-test/out",
                    model="s3://v2v-test/models/tiny", steps=2, codec="ffv1", max_failures=5)
    s = run_job(cfg, log=lambda m: None)
    with bucket.open("v2v-test/out/index/index.parquet", "rb") as f:
        df = pd.read_parquet(f)
    by_video = {v: g for v, g in df.groupby(df.video.str.rsplit("/", n=1).str[-1])}
    assert (by_video["v0.mp4"].status == "ok").all() and len(by_video["v0.mp4"]) == 2
    assert s3_network.failed["in/v0.mp4"] >= 2  # tried again after failures, not lucky
    v1 = by_video["v1.mp4"]
    assert (v1.status == "failed").all() and v1.error.str.contains("v1.mp4").all()
    assert v1.error.str.contains("the store kept failing").all(), v1.error.tolist()
    assert s.failed == len(v1) + 1 and s.exit_code == 0  # + broken.mp4
    # the store back: a plain rerun (no --retry-failed) renders what the store failed, and leaves the broken video
    s3_network.clear()
    s = run_job(cfg, log=lambda m: None)
    assert (s.ok, s.failed, s.rendered_now) == (4, 1, 2), s.text()


def test_an_output_that_cannot_be_written_is_refused_before_the_job_runs(bucket):
    from v2v.config import ConfigError
    from v2v.job.pipeline import preflight

    cfg = JobConfig(manifest="s3://v2v-test/in/m.parquet", output="s3://no-such-bucket/out")
    with pytest.raises(ConfigError, match="--output s3://no-such-bucket/out: cannot be written .*bucket does not"):
        preflight(cfg)
    assert len(preflight(JobConfig(manifest=cfg.manifest, output="s3://v2v-test/out"))) == 3
    assert not bucket.exists("v2v-test/out") or not bucket.find("v2v-test/out")  # the check's file is gone
