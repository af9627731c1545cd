"""The Ray Data job end to end on a real local Ray cluster, with the tiny model and generated videos."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.demo import make_video
from tests.helpers import REPO
from v2v.config import JobConfig
from v2v.core.storage import sha256_file
from v2v.core.video import read_frames
from v2v.job.pipeline import run_job
from v2v.model.loading import resolve_model

pytestmark = pytest.mark.slow  # every test here runs the job on a Ray cluster

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three good videos (16, 20, 24 frames -> 2 + 3 + 3 clips of 8) and one bad one, in manifests of every
    format: m.csv / m.parquet / m.jsonl whole, and mixed/ with one row set per format."""
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
    (d / "mixed").mkdir()
    for name in ("v0", "v1", "v2", "bad"):
        (d / "mixed" / f"{name}.mp4").symlink_to(d / f"{name}.mp4")
    df.iloc[[0, 3]].to_csv(d / "mixed" / "a.csv", index=False)
    df.iloc[[1]].to_parquet(d / "mixed" / "b.parquet")
    df.iloc[[2]].to_json(d / "mixed" / "c.jsonl", orient="records", lines=True)
    return d


def _cfg(inputs, out, manifest="m.csv", **kw):
    base = dict(manifest=str(inputs / manifest), output=str(out), steps=4, codec="ffv1", max_failures=1,
                batch_size=2)
    return JobConfig(**{**base, **kw})


def _outputs(out) -> dict:
    df = pd.read_parquet(os.path.join(out, "index"))
    return {(r.id, r.clip_index): r.output_sha256 for r in df.itertuples() if r.status == "ok"}


@pytest.fixture(scope="module")
def baseline(ray_cluster, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "out"
    summary = run_job(_cfg(inputs, out, "mixed", stitch=True, max_failures=0), **QUIET)
    return out, summary


def test_end_to_end_over_every_manifest_format(baseline):
    out, s = baseline
    df = pq.read_table(out / "index").to_pandas()  # the index folder reads as one dataset
    assert (s.planned, s.ok, s.failed, s.skipped) == (9, 8, 1, 0)
    assert len(df) == 9 and not df.duplicated(["id", "clip_index"]).any()
    bad = df[df.tag == "broken"].iloc[0]
    assert bad.status == "failed" and bad.clip_index == -1 and "bad.mp4" in bad.error
    ok = df[df.status == "ok"]
    assert set(ok.tag) == {"t0", "t1", "t2"}  # pass-through column, from csv, parquet and jsonl rows
    for r in ok.itertuples():
        frames = read_frames(str(out / r.output))
        assert frames.shape == (r.num_frames, 64, 64, 3)
        assert r.seed == 100 * int(r.tag[1]) + r.clip_index  # row seed + clip index
        assert r.decode_s > 0 and r.restyle_s > 0 and r.encode_s > 0 and len(r.output_sha256) == 64
        assert r.temporal_flicker > 0 and -1 <= r.source_ssim <= 1 and r.blank in (True, False)
        # per-actor timing: the clip's batch was inside the model for at least its share of the batch's time
        # (1e-5: unix times near 1.8e9 s are float64s with 2.4e-7 s steps)
        assert r.restyle_finished_at - r.restyle_started_at >= r.restyle_s - 1e-5 and r.restyle_s > 0
        assert r.restyle_started_at < r.finished_at and r.worker.split("/")[1].isdigit()
    meta = json.loads((out / "job.json").read_text())
    assert meta["versions"]["ray"] and meta["model"]["sha256"] and meta["summary"]["ok"] == 8
    assert not (out / "_progress").exists()
    # one failure with --max-failures 0: exit code 1 and the failure named in the summary and job.json
    assert s.exit_code == 1 and "bad.mp4" in s.text()
    [failure] = meta["failures"]
    assert failure["count"] == 1 and failure["cause"].startswith("<video>: ") and "bad.mp4" in failure["example"]
    stitched = sorted(os.listdir(out / "videos"))
    assert len(stitched) == 3
    lengths = sorted(read_frames(str(out / "videos" / v)).shape[0] for v in stitched)
    assert lengths == [16, 20, 24]


def test_outputs_do_not_depend_on_batch_size_or_actor_count(baseline, inputs, tmp_path):
    """CPU actors are batch-invariant by default: bit-identical lossless outputs whatever the batch size or the
    number of actors sharing the machine (each runs a fixed number of threads)."""
    ref = _outputs(baseline[0])  # batch 2, one actor
    assert len(ref) == 8
    for name, kw in {"b1a1": dict(batch_size=1, num_actors=1), "b4a2": dict(batch_size=4, num_actors=2),
                     "b1a2": dict(batch_size=1, num_actors=2)}.items():
        run_job(_cfg(inputs, tmp_path / name, "mixed", **kw), **QUIET)
        assert _outputs(tmp_path / name) == ref, name


def test_a_manifest_that_mixes_settings_and_schedulers_gives_each_clip_what_it_gives_alone(ray_cluster, inputs,
                                                                                            tmp_path):
    """Rows of different strengths, step counts, guidance (off and on), schedulers and clip lengths (v1's last clip
    is shorter) share each actor's forwards, clips in flight at different steps: every clip comes out bit for bit
    as at batch size 1, and a row's scheduler is the one its clips ran."""
    rows = [{"video": "v0.mp4", "prompt": "ink", "seed": 1, "strength": 0.5, "guidance_scale": 1.0, "scheduler": "dpm"},
            {"video": "v0.mp4", "prompt": "ink", "seed": 1, "strength": 0.5, "guidance_scale": 1.0, "scheduler": ""},
            {"video": "v1.mp4", "prompt": "oil", "seed": 2, "strength": 0.9, "num_inference_steps": 6,
             "guidance_scale": 9.0, "scheduler": "euler_a"},
            {"video": "v2.mp4", "prompt": "chalk", "seed": 3, "strength": 0.75, "guidance_scale": 15.0}]
    d = tmp_path / "in"
    d.mkdir()
    for name in ("v0", "v1", "v2"):
        (d / f"{name}.mp4").symlink_to(inputs / f"{name}.mp4")
    pd.DataFrame(rows).to_csv(d / "m.csv", index=False)
    outs = {}
    for batch in (3, 1):  # v1's last clip restyled alone: a shorter clip, in a stream of its own
        run_job(_cfg(d, tmp_path / f"b{batch}", "m.csv", batch_size=batch, max_failures=0, last_clip="short"),
                **QUIET)
        outs[batch] = _outputs(tmp_path / f"b{batch}")
    assert len(outs[3]) == 10 and outs[3] == outs[1]
    df = pd.read_parquet(tmp_path / "b3" / "index").sort_values(["video", "strength", "scheduler"])
    assert df.groupby("video").scheduler.agg(lambda s: sorted(set(s))).to_dict() == {
        str(d / "v0.mp4"): ["DDIMScheduler", "DPMSolverMultistepScheduler"],
        str(d / "v1.mp4"): ["EulerAncestralDiscreteScheduler"], str(d / "v2.mp4"): ["DDIMScheduler"]}
    # the two v0 rows differ only in their scheduler, and so do their clips' bytes
    v0 = df[df.video == str(d / "v0.mp4")]
    by_scheduler = v0.groupby("scheduler").output_sha256.agg(lambda s: sorted(s)).to_dict()
    assert len(by_scheduler) == 2 and set(by_scheduler["DDIMScheduler"]).isdisjoint(
        by_scheduler["DPMSolverMultistepScheduler"])


def test_a_last_clip_is_restyled_whole_and_keeps_only_its_own_frames(ray_cluster, inputs, tmp_path):
    """last_clip=overlap (the default): v1 (20 frames, clips of 8) ends in a 4-frame remainder, restyled as frames
    12-19 and cut to 16-19. Its output is exactly the last 4 frames of the same 8 frames restyled as a clip of their
    own (a row starting at frame 12, seeded as that clip); the stitched video has all 20 frames."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "v1.mp4").symlink_to(inputs / "v1.mp4")
    fps = 24.0
    pd.DataFrame([{"id": "whole", "video": "v1.mp4", "prompt": "ink", "seed": 10},
                  {"id": "tail", "video": "v1.mp4", "prompt": "ink", "seed": 12, "start_s": 12 / fps}]).to_csv(
        d / "m.csv", index=False)
    out = tmp_path / "out"
    s = run_job(_cfg(d, out, "m.csv", stitch=True, max_failures=0), **QUIET)
    df = pd.read_parquet(out / "index").set_index(["id", "clip_index"])
    assert s.ok == 4 and df.context_frames.to_dict() == {("whole", 0): 0, ("whole", 1): 0, ("whole", 2): 4,
                                                         ("tail", 0): 0}
    assert df.loc[("whole", 2), ["start_frame", "num_frames"]].tolist() == [16, 4]
    last = read_frames(str(out / df.loc[("whole", 2), "output"]))
    alone = read_frames(str(out / df.loc[("tail", 0), "output"]))
    assert last.shape[0] == 4 and alone.shape[0] == 8
    assert np.array_equal(last, alone[4:])
    assert read_frames(str(next(out.glob("videos/whole.*")))).shape[0] == 20


def test_resume_skips_done_clips_and_retries_failed_only_when_asked(baseline, inputs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(baseline[0], out, symlinks=True)
    first = _outputs(out)
    victim = sorted(first)[0]
    path = out / pd.read_parquet(out / "index").set_index(["id", "clip_index"]).loc[victim].output
    path.unlink()  # a lost output is redone; the others are not touched
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.mkv")}
    videos = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    s = run_job(_cfg(inputs, out, "mixed", stitch=True), **QUIET)
    assert s.rendered_now == 1 and _outputs(out) == first
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())
    assert len(pd.read_parquet(out / "index")) == 9
    # only the video with a clip rendered again is stitched again
    changed = sorted(name for name, m in videos.items() if (out / "videos" / name).stat().st_mtime_ns != m)
    assert changed == [f"{victim[0]}.mkv"], changed
    s = run_job(_cfg(inputs, out, "mixed", retry_failed=True), **QUIET)
    assert s.rendered_now == 0 and s.failed == 1  # the bad video was tried again, and failed again
    # as an earlier run left them: one clip lost by the cluster, one that failed for its own sake. A plain rerun
    # renders the lost one again (and reads the bad video again); the other waits for --retry-failed.
    table = pq.read_table(out / "index")
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    ok[0].update(status="failed", error="lost: its actor stopped in each of 3 passes; rerun to retry it")
    ok[1].update(status="failed", error="restyle: the output holds NaN or infinite values")
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / "index" / "index.parquet")
    s = run_job(_cfg(inputs, out, "mixed"), **QUIET)
    assert (s.rendered_now, s.failed, s.retried) == (1, 2, 1)
    assert "failures: 2 (allowed 1); a rerun tries 1 of them again, --retry-failed all" in s.text()
    again = pd.read_parquet(out / "index").set_index(["id", "clip_index"])
    assert again.loc[(ok[0]["id"], ok[0]["clip_index"]), "status"] == "ok"
    assert again.loc[(ok[1]["id"], ok[1]["clip_index"]), "status"] == "failed"
    s = run_job(_cfg(inputs, out, "mixed", retry_failed=True), **QUIET)
    assert (s.rendered_now, s.failed) == (1, 1)
    s = run_job(_cfg(inputs, out, "mixed", guidance_scale=9.0), **QUIET)
    assert s.rendered_now == 8  # changed settings are not "done": every clip is rendered again
    runs = json.loads((out / "job.json").read_text())["runs"]  # the baseline's run, then these three
    assert [r["rendered_now"] for r in runs] == [8, 1, 0, 1, 1, 8] and len({r["run_id"] for r in runs}) == 6
    assert all(r["finished_at"] >= r["started_at"] for r in runs) and runs[2]["failed"] == 1


def test_a_run_of_other_rows_into_the_same_output_keeps_the_index_rows_it_does_not_list(baseline, inputs, tmp_path):
    """A few rows redone into a night's output: the index keeps the rows of the videos the small manifest does not
    list, as they were, with their pass-through columns; the run's counts are its own; and the night's manifest run
    again after it renders nothing. With --drop-unlisted the output mirrors the manifest."""
    out = tmp_path / "out"
    shutil.copytree(baseline[0], out, symlinks=True)
    night = pd.read_parquet(out / "index").set_index(["id", "clip_index"])
    pd.DataFrame([{"id": "redo", "video": str(inputs / "v0.mp4"), "prompt": "chalk", "note": "asked again"}]).to_csv(
        tmp_path / "redo.csv", index=False)
    s = run_job(_cfg(tmp_path, out, "redo.csv", max_failures=0), **QUIET)
    assert (s.planned, s.ok, s.failed, s.rendered_now, s.exit_code) == (2, 2, 0, 2, 0)  # the bad video is not its
    assert s.text().splitlines()[2].endswith("index.parquet (and 9 earlier rows of clips this run did not plan)")
    assert json.loads((out / "job.json").read_text())["runs"][-1]["unlisted"] == 9
    df = pd.read_parquet(out / "index").set_index(["id", "clip_index"])
    assert len(df) == len(night) + 2 and df.loc["redo"].note.eq("asked again").all()
    kept = df.drop(index="redo")
    for col in ("status", "output_sha256", "run_id", "work_key", "tag", "error"):
        assert kept[col].equals(night[col]), col
    s = run_job(_cfg(inputs, out, "mixed"), **QUIET)
    assert (s.planned, s.rendered_now) == (9, 0)  # nothing lost: every clip of the night is still done
    assert len(pd.read_parquet(out / "index")) == len(night) + 2
    # --drop-unlisted: the output mirrors the manifest, the other videos' rows and files gone, its own kept
    lines = []
    s = run_job(_cfg(tmp_path, out, "redo.csv", drop_unlisted=True), log=lines.append)
    assert (s.planned, s.rendered_now) == (2, 0)
    assert any("removes the rows and files of 9 clips of 4 videos" in line for line in lines), lines
    assert s.text().splitlines()[2].endswith("index.parquet (without 9 earlier rows of clips this run did not plan)")
    assert set(pd.read_parquet(out / "index").id) == {"redo"}
    assert [p.name for p in (out / "clips").iterdir()] == ["redo"] and len(list((out / "clips/redo").iterdir())) == 2
    assert not list((out / "videos").iterdir())  # the night's stitched videos


def test_a_run_keeps_the_clips_of_its_videos_that_it_does_not_plan(baseline, inputs, tmp_path):
    """A listed video's earlier clips that a run does not plan stay in the index, with their files: a quick check
    with a smaller --max-clips into the night's output, and a video unreadable this time (its store timed out). The
    night's next full run renders nothing. --drop-unlisted removes exactly those clips' rows and files."""
    out = tmp_path / "out"
    shutil.copytree(baseline[0], out, symlinks=True)
    night = pd.read_parquet(out / "index").set_index(["id", "clip_index"])
    s = run_job(_cfg(inputs, out, "mixed", max_clips=1), **QUIET)
    assert (s.planned, s.rendered_now, s.unlisted) == (4, 0, 5)  # each video's first clip (done), the bad one's row
    assert s.text().splitlines()[2].endswith("index.parquet (and 5 earlier rows of clips this run did not plan)")
    df = pd.read_parquet(out / "index").set_index(["id", "clip_index"])
    assert df.index.sort_values().equals(night.index.sort_values())
    assert df.loc[night.index, "output_sha256"].equals(night.output_sha256)
    # the second video unreadable this time: one failed row, and its three clips of the night kept
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "v1.mp4").write_bytes(b"")
    pd.DataFrame([{"video": "v1.mp4", "prompt": "style 1", "seed": 100, "tag": "t1"}]).to_csv(gone / "m.csv",
                                                                                               index=False)
    s = run_job(_cfg(gone, out, "m.csv", max_failures=1), **QUIET)
    assert (s.planned, s.failed) == (1, 1)
    df = pd.read_parquet(out / "index")
    v1 = night[night.tag == "t1"]
    assert len(v1) == 3 and len(df) == len(night) + 1
    assert (df[df.tag == "t1"].set_index(["id", "clip_index"]).loc[v1.index, "status"] == "ok").all()
    s = run_job(_cfg(inputs, out, "mixed"), **QUIET)
    assert (s.planned, s.rendered_now, s.unlisted) == (9, 0, 0)  # the failed row of the unreadable run is gone
    assert pd.read_parquet(out / "index").set_index(["id", "clip_index"]).index.sort_values().equals(
        night.index.sort_values())
    # --drop-unlisted: the clips past the first of each video leave the index and the output
    s = run_job(_cfg(inputs, out, "mixed", max_clips=1, drop_unlisted=True), **QUIET)
    assert s.text().splitlines()[2].endswith("index.parquet (without 5 earlier rows of clips this run did not plan)")
    df = pd.read_parquet(out / "index")
    assert len(df) == 4 and set(df.clip_index) == {-1, 0}
    assert sorted(p.name.split(".")[0] for p in out.glob("clips/*/*")) == ["00000"] * 3


def test_a_rerun_renders_again_exactly_the_clips_whose_output_would_differ(ray_cluster, inputs, tmp_path):
    """Nightly reruns with other settings: each clip's work key covers what changes its bytes (codec, scheduler,
    the source video's version, the model's version, ...); a rerun renders exactly the clips whose key changed,
    in place, with the same ids; batch size and speed switches change nothing."""
    from v2v.config import SpeedSettings

    src = tmp_path / "src"
    src.mkdir()
    for name in ("v0.mp4", "v1.mp4"):
        shutil.copy(inputs / name, src / name)
    (src / "m.csv").write_text("video,prompt\nv0.mp4,ink\nv1.mp4,oil\n")  # 2 + 3 clips
    model = tmp_path / "model"
    shutil.copytree(resolve_model("tiny"), model)
    out = tmp_path / "out"
    cfg = JobConfig(manifest=str(src / "m.csv"), output=str(out), model=str(model), steps=4, codec="ffv1")

    def rerun(**kw):
        s = run_job(dataclasses.replace(cfg, **kw), **QUIET)
        df = pd.read_parquet(out / "index")
        assert s.ok == 5 and len(df) == 5 and df.work_key.notna().all()
        return s.rendered_now, df

    n, first = rerun()
    assert n == 5
    assert rerun(batch_size=1, speed=SpeedSettings(channel_stats=True))[0] == 0  # the same bytes: nothing to do
    n, h264 = rerun(codec="h264")
    assert n == 5 and set(h264.id) == set(first.id)  # the same ids, rendered in place
    assert not list(out.glob("clips/*/*.mkv"))  # the ffv1 files the index no longer names are gone
    n, h265 = rerun(codec="h265")  # the same .mp4 paths, other bytes
    assert n == 5 and list(h265.output) == list(h264.output) and set(h265.work_key).isdisjoint(h264.work_key)
    assert rerun(codec="h265")[0] == 0
    n, before = rerun(codec="h265", scheduler="euler")
    assert n == 5
    make_video(str(src / "v0.mp4"), 16, 80, 64, seed=9)  # the source replaced at the same path
    n, after = rerun(codec="h265", scheduler="euler")
    both = before.merge(after, on=["id", "clip_index"], suffixes=("_before", "_after"))
    renewed = both[both.run_id_before != both.run_id_after]
    assert n == 2 and len(renewed) == 2 and renewed.video_after.str.endswith("v0.mp4").all()
    (model / "unet" / "NOTICE.txt").write_text("replaced")  # the model changed at the same place
    assert rerun(codec="h265", scheduler="euler")[0] == 5
    # v1's last clip (4 frames) restyled alone instead of whole with 4 context frames: that clip alone
    n, short = rerun(codec="h265", scheduler="euler", last_clip="short")
    assert n == 1 and (short.context_frames == 0).all()


def test_a_video_that_cannot_be_stitched_is_reported_and_the_run_ends_normally(baseline, inputs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(baseline[0], out, symlinks=True)
    shutil.rmtree(out / "videos")
    df = pd.read_parquet(out / "index")
    victim = df[(df.status == "ok") & (df.clip_index == 0)].iloc[0]
    path = out / victim.output
    path.write_bytes(b"\0" * path.stat().st_size)  # damaged in place, at its size: still counts as done
    s = run_job(_cfg(inputs, out, "mixed", stitch=True), **QUIET)
    assert s.rendered_now == 0 and s.exit_code == 0 and list(s.stitch_failed) == [victim.id]
    assert victim.id in s.text() and len(os.listdir(out / "videos")) == 2  # the other videos stitched
    meta = json.loads((out / "job.json").read_text())
    assert list(meta["summary"]["stitch_failed"]) == [victim.id] and (out / "index" / "index.parquet").exists()


def _start_driver(inputs, out, ray_cluster, output=subprocess.DEVNULL, manifest=None,
                  background: bool = False) -> subprocess.Popen:
    """The CLI as a separate driver process (its own process group, so it can be killed with all it started),
    with the baseline's settings (and manifest, unless given) and the default lease (120 s): a rerun on this host
    takes over a killed driver's lease at once, since its process is gone. background: started as a shell's or a CI
    runner's background job is, with SIGINT ignored (which Python then leaves ignored)."""
    cmd = [sys.executable, "-m", "jobs.restyle", "--manifest", str(manifest or inputs / "mixed"), "--output", str(out),
           "--steps", "4", "--codec", "ffv1", "--max-failures", "1", "--batch-size", "1",
           "--ray-address", ray_cluster["address"]]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=output, stderr=output,
                            start_new_session=True, text=True, preexec_fn=ignore)


def _wait_mid_run(proc, out, parts: int = 2) -> None:
    """Until the driver has written `parts` parts of rows (with the baseline's manifest the first part holds the bad
    video's row, written before rendering: 2 means rendered clips' rows), or it ended."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("_progress/*/part-*"))) < parts:
        time.sleep(0.05)


def test_adapters_per_row_are_applied_recorded_and_keyed(ray_cluster, tmp_path, cache_dir):
    """Rows with a LoRA, an embedding, a broken LoRA, a missing one and none: each restyled with its own (the
    broken and missing ones failed rows naming the file), recorded with sha256 in the index; a rerun with one
    row's scale changed renders only that row's clips again."""
    import torch
    from safetensors.torch import save_file

    from tests.model.test_adapters import make_lora
    from v2v.model.loading import load_components

    c = load_components("tiny", cache_dir=cache_dir)
    make_lora(tmp_path / "style.safetensors", c)
    hidden = c.text_encoder.get_input_embeddings().weight.shape[1]
    save_file({"<ink>": torch.randn(2, hidden, generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "ink.safetensors"))
    save_file({"unet.nope.lora_A.weight": torch.zeros(2, 4), "unet.nope.lora_B.weight": torch.zeros(4, 2)},
              str(tmp_path / "broken.safetensors"))
    make_video(str(tmp_path / "v.mp4"), 16, 64, 64)
    lora = '"[{""uri"": ""style.safetensors"", ""scale"": SCALE}]"'
    rows = ["id,video,prompt,lora,embeddings",
            'plain,v.mp4,a fox,,',
            'styled,v.mp4,a fox,' + lora.replace('SCALE', '0.8') + ',',
            'inked,v.mp4,a <ink> fox,,"[{""uri"": ""ink.safetensors"", ""token"": ""<ink>""}]"',
            'broken,v.mp4,a fox,"[{""uri"": ""broken.safetensors""}]",',
            'missing,v.mp4,a fox,"[{""uri"": ""nowhere.safetensors""}]",']
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    cfg = JobConfig(manifest=str(tmp_path / "m.csv"), output=str(out), steps=4, codec="ffv1", max_failures=4)
    s = run_job(cfg, **QUIET)
    df = pd.read_parquet(out / "index").set_index(["id", "clip_index"])
    assert s.ok == 6 and s.failed == 4
    assert (df.loc["broken"].error.str.contains("broken.safetensors: unet.nope: the model has no such module")).all()
    assert (df.loc["missing"].error.str.contains("nowhere.safetensors: not found")).all()
    ran = json.loads(df.loc[("styled", 0)].adapters)
    assert ran["lora"][0]["scale"] == 0.8
    assert ran["lora"][0]["sha256"] == sha256_file(str(tmp_path / "style.safetensors"))
    assert json.loads(df.loc[("inked", 0)].adapters)["embeddings"][0]["token"] == "<ink>"
    assert df.loc[("plain", 0)].adapters == ""
    frames = {rid: read_frames(str(out / df.loc[(rid, 0)].output)) for rid in ("plain", "styled", "inked")}
    assert not np.array_equal(frames["plain"], frames["styled"])
    assert not np.array_equal(frames["plain"], frames["inked"])

    rescaled = 'styled,v.mp4,a fox,' + lora.replace('SCALE', '0.5') + ','
    (tmp_path / "m.csv").write_text("\n".join(rows[:2] + [rescaled] + rows[3:4]))
    s = run_job(cfg, **QUIET)
    assert s.rendered_now == 2  # the two clips of the row whose LoRA scale changed; the others were done


def test_clips_reach_the_actor_grouped_by_lora_set(ray_cluster, tmp_path, cache_dir):
    """Rows alternating between two LoRAs and none, as a nightly manifest of styles does: the actor restyles each
    set's clips as one run (an actor merges a set once and drains its clips in flight at each change of set), and
    every clip still has its own set."""
    from tests.model.test_adapters import make_lora
    from v2v.model.loading import load_components

    c = load_components("tiny", cache_dir=cache_dir)
    make_lora(tmp_path / "a.safetensors", c, seed=1)
    make_lora(tmp_path / "b.safetensors", c, seed=2)
    make_video(str(tmp_path / "v.mp4"), 8, 64, 64)
    styles = ["a", "b", ""]
    rows = ["id,video,prompt,lora"] + [
        f'r{i},v.mp4,a fox,' + (f'"[{{""uri"": ""{styles[i % 3]}.safetensors""}}]"' if styles[i % 3] else "")
        for i in range(9)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    s = run_job(JobConfig(manifest=str(tmp_path / "m.csv"), output=str(out), steps=2, codec="ffv1", batch_size=2,
                          num_actors=1), **QUIET)
    assert s.ok == 9
    df = pd.read_parquet(out / "index").sort_values("restyle_started_at")
    ran = [json.loads(a)["lora"][0]["uri"].rsplit("/", 1)[-1][0] if a else "" for a in df.adapters]
    assert ran == [styles[int(rid[1:]) % 3] for rid in df.id]  # each clip its own set
    assert sum(x != y for x, y in zip(ran, ran[1:])) == 2, ran  # three runs, one per set


def test_audio_reaches_the_clips_and_the_stitched_video(ray_cluster, tmp_path):
    import av

    make_video(str(tmp_path / "v.mp4"), 40, 64, 64, fps=24, audio=True)  # 5 clips of 8 frames: 40/24 s of audio
    (tmp_path / "m.csv").write_text("video,prompt\nv.mp4,ink\n")
    out = tmp_path / "out"
    s = run_job(JobConfig(manifest=str(tmp_path / "m.csv"), output=str(out), steps=2, audio=True, stitch=True),
                **QUIET)
    assert s.ok == 5

    def audio_s(path) -> float:
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            return float(sum(p.duration for p in c.demux(a) if p.size) * a.time_base)

    clips = sorted((out / "clips").rglob("*.mp4"))
    assert len(clips) == 5 and all(0.25 <= audio_s(c) <= 0.42 for c in clips)  # 8/24 s each, to a packet
    (video,) = (out / "videos").iterdir()
    assert 1.55 <= audio_s(video) <= 1.8


def test_previews_show_every_video_and_open_in_a_browser(baseline, inputs, tmp_path):
    from PIL import Image

    from tests.helpers import browser_dom

    out = tmp_path / "out"
    shutil.copytree(baseline[0], out, symlinks=True)
    s = run_job(_cfg(inputs, out, "mixed", preview=True, preview_frames=3), **QUIET)
    assert s.rendered_now == 0 and s.preview == str(out / "previews" / "index.html") and s.preview in s.text()
    df = pd.read_parquet(out / "index")
    good = sorted(set(df[df.status == "ok"].id))
    strips = sorted(p.stem for p in (out / "previews").glob("*.jpg"))
    assert strips == good and len(good) == 3
    with Image.open(out / "previews" / f"{good[0]}.jpg") as im:  # 3 source frames above 3 restyled, 64x64 each
        assert im.size == (3 * 64, 2 * 64)
    dom = browser_dom((out / "previews" / "index.html").as_uri())
    assert 'data-broken-images="0"' in dom and '<span class="missing">' not in dom  # every image loaded
    assert dom.count("<img ") == 3
    bad = df[df.status == "failed"].iloc[0]
    assert re.search(rf'<tr class="failed" data-id="{re.escape(bad.id)}".*not a readable video', dom), dom[-3000:]
    # sorted from the address, as a link to the page can ask: lowest SSIM first
    dom = browser_dom((out / "previews" / "index.html").as_uri() + "#sort=ssim")
    order = re.findall(r'<tr class="\w+" data-id="([^"]+)"[^>]*data-ssim="([^"]*)"', dom)
    ssims = [float(v) for _, v in order if v]
    assert len(ssims) == 3 and ssims == sorted(ssims)
    (out / "previews" / f"{good[0]}.jpg").unlink()  # a strip that is gone shows as missing, not as a broken page
    dom = browser_dom((out / "previews" / "index.html").as_uri())
    assert 'data-broken-images="1"' in dom and dom.count('<span class="missing">preview missing</span>') == 1


def test_killed_run_resumes_to_the_undisturbed_result(baseline, ray_cluster, inputs, tmp_path):
    out = tmp_path / "out"
    proc = _start_driver(inputs, out, ray_cluster)
    _wait_mid_run(proc, out)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-run
    proc.wait()
    written = list(out.glob("clips/*/*.mkv"))
    assert 0 < len(written) < 8, "the kill should land mid-run"
    assert not (out / "index" / "index.parquet").exists()
    s = run_job(_cfg(inputs, out, "mixed"), **QUIET)  # at once: the killed driver's lease names a dead process
    assert s.ok == 8 and s.rendered_now < 8 and _outputs(out) == _outputs(baseline[0])
    df = pd.read_parquet(out / "index")
    assert len(df) == 9 and not df.duplicated(["id", "clip_index"]).any()


def test_job_datasets_are_built_in_the_driver(ray_cluster):
    """The plan's and the render's datasets start without remote tasks: from_arrow's metadata tasks held the
    cluster's CPUs (Ray Data then warned that the job would hang) and cost seconds per thousand clips."""
    import ray

    from v2v.job.pipeline import _dataset

    rows = [{"id": f"v{i}", "seed": None if i % 3 else i, "strength": 0.5} for i in range(40)]
    before = ray.available_resources().get("CPU", 0)
    ds = _dataset(rows)
    assert ray.available_resources().get("CPU", 0) >= before  # nothing took a CPU to build it
    assert ds.num_blocks() == 40 and _dataset(rows, 16).num_blocks() == 3
    assert sorted(ds.take_all(), key=lambda r: int(r["id"][1:])) == rows  # nulls and order of fields kept


def test_dry_run_plans_without_loading_a_model(ray_cluster, inputs, tmp_path):
    rows = pd.read_csv(inputs / "m.csv")
    rows["video"] = [str(inputs / v) for v in rows.video]
    late = {"video": str(inputs / "v0.mp4"), "prompt": "late", "id": "late", "start_s": 99.0}  # past its end
    pd.concat([rows, pd.DataFrame([late])]).to_csv(tmp_path / "m.csv", index=False)
    lines = []
    s = run_job(_cfg(tmp_path, tmp_path / "out", dry_run=True), log=lines.append)
    assert s.planned == 10 and "8 to render (60 frames)" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written, no actor started
    # per video: its clips, their size and what resizing does (80x64 sources, 64x64 clips); then the totals
    text = "\n".join(lines)
    assert re.search(r"  [\w-]+: 3 clips \(24 frames, 0.00-1.00 s\) at 64x64; cover: scaled from 80x64 to 80x64, "
                     r"16 px of width cropped", text), text
    assert re.search(r"  [\w-]+: cannot be read: .*bad.mp4", text), text
    assert "  late: nothing to restyle: no frames in the selected window" in text
    assert lines[-1] == ("v2v: dry run: would render 8 clips (60 frames, 16 clip-steps); no GPU time measured for "
                         "64x64x8 clips; nothing was written")
    assert s.text() == "v2v: 10 clips planned: 0 done before, 1 failed, 1 skipped (dry run)"


def test_ray_job_submit(ray_cluster, inputs, tmp_path):
    out = tmp_path / "submitted"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", ray_cluster["dashboard"],
           "--working-dir", REPO, "--", sys.executable, "-m", "jobs.restyle", "--manifest", str(inputs / "m.jsonl"),
           "--output", str(out), "--steps", "2", "--max-failures", "1", "--max-clips", "1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "3 ok, 1 failed" in r.stdout
    # the actor's own log line (where its start went) reaches the job's output
    assert "INFO v2v.job.stages: restyle actor ready: imports" in r.stdout
    # and Ray's own lines do not, unless -v: its start-up, each dataset's start/plan/end, the progress bars' notice,
    # the core worker's note about restarts, the loaders' progress bars
    job_output = r.stdout.split("Tailing logs until the job exits", 1)[-1]
    for noise in ["Connecting to existing Ray cluster", "streaming_executor", "Progress bars disabled",
                  "core_worker.cc", "Loading weights", "RayDeprecationWarning"]:
        assert noise not in job_output, (noise, job_output)
    assert re.search(r"v2v: 3/3 clips, 0 failed, [\d.]+ clips/min", job_output)  # the progress line, at its end
    df = pd.read_parquet(out / "index")
    assert sorted(df.status) == ["failed", "ok", "ok", "ok"] and all(df[df.status == "ok"].output.str.endswith(".mp4"))


def _scrape(url: str) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every v2v sample Ray's metrics endpoint serves."""
    import urllib.request

    samples = []
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        m = re.match(r"(ray_v2v_\w+)\{(.*)\} (\S+)$", line)
        if m:
            samples.append((m[1], dict(re.findall(r'(\w+)="([^"]*)"', m[2])), float(m[3])))
    return samples


def test_metrics_reach_prometheus_with_the_right_counts(baseline, ray_cluster, inputs, tmp_path):
    """Ray exports the actors' metrics for Prometheus; a scrape of the node's endpoint shows this run's clips."""
    out = tmp_path / "out"
    s = run_job(_cfg(inputs, out, "mixed", max_failures=1), **QUIET)
    run = json.loads((out / "job.json").read_text())["run_id"]
    deadline, samples = time.time() + 90, []
    while time.time() < deadline:  # Ray's agent exports what the workers recorded every few seconds
        samples = [(n, labels, v) for n, labels, v in _scrape(ray_cluster["metrics"]) if labels.get("run") == run]
        clips = {labels["status"]: v for n, labels, v in samples if n == "ray_v2v_clips_total"}
        if clips.get("ok") == s.ok:
            break
        time.sleep(2)
    assert clips == {"ok": 8.0}, samples  # the unreadable video never reached an actor
    counts = {labels["stage"]: v for n, labels, v in samples if n == "ray_v2v_clip_stage_seconds_count"}
    assert counts == {"decode": 8.0, "restyle": 8.0, "encode": 8.0}
    busy = [v for n, _, v in samples if n == "ray_v2v_gpu_busy_fraction"]
    steps = [v for n, _, v in samples if n == "ray_v2v_unet_steps_per_second"]
    assert busy and all(0 < v <= 1 for v in busy) and steps and all(v > 0 for v in steps)
    assert any(n == "ray_v2v_restyle_queue_depth" for n, _, _ in samples)


def test_verbose_shows_rays_own_lines(ray_cluster, inputs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "jobs.restyle", "--ray-address", ray_cluster["address"], "-v",
                        "--manifest", str(inputs / "m.jsonl"), "--output", str(tmp_path / "out"), "--steps", "2",
                        "--max-failures", "1", "--max-clips", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in r.stderr and "Execution plan of Dataset" in r.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_keeps_its_clips_releases_the_lease_and_says_how_to_resume(ray_cluster, inputs, tmp_path,
                                                                                  sig, code):
    """Ctrl-C (SIGINT) or `ray job stop` / a preempted head (SIGTERM) to the driver mid-run: finished rows are
    flushed, the lease released, one line says how many clips were saved, and the exit code says which signal.
    The driver starts as a background job does, SIGINT ignored: `kill -INT` stops it all the same."""
    # the three videos four times over (32 clips) at 24 denoising steps a clip: rendering lasts well past the first
    # rows saved (a flush every 2 s), when the signal comes; the baseline's 8 clips of 2 steps could end first
    m = tmp_path / "m.csv"
    pd.DataFrame([{"video": str(inputs / f"v{i}.mp4"), "prompt": f"style {i} take {k}", "seed": 10 * k + i,
                   "num_inference_steps": 40} for k in range(4) for i in range(3)]).to_csv(m, index=False)
    out = tmp_path / "out"
    proc = _start_driver(inputs, out, ray_cluster, output=subprocess.PIPE, manifest=m, background=True)
    _wait_mid_run(proc, out, parts=1)
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    said = re.search(r"v2v: interrupted: (\d+) clips saved; run the same command to resume", stderr)
    assert said and "Traceback" not in stderr, stderr[-2000:]
    saved = pd.concat([pd.read_parquet(p) for p in out.glob("_progress/*/part-*")])
    assert (saved.status == "ok").sum() >= int(said[1]) > 0 and int(said[1]) < 32
    assert not (out / "_lease.json").exists() and not (out / "index" / "index.parquet").exists()
    s = run_job(_cfg(inputs, out, manifest=str(m)), **QUIET)  # resumes: only the clips not saved are rendered
    assert s.ok == 32 and s.rendered_now <= 32 - int(said[1])


def test_driver_killed_at_five_moments_then_finished(baseline, ray_cluster, inputs, tmp_path):
    """Kill the driver (and everything it started) at five different moments, rerunning each time."""
    out = tmp_path / "out"
    for delay in (0.5, 4.0, 7.0, 9.0, 11.0):  # before Ray connects, while planning, mid-render, ...
        proc = _start_driver(inputs, out, ray_cluster)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()  # rerun at once: the dead driver's lease is taken over without waiting for its heartbeat
    s = run_job(_cfg(inputs, out, "mixed"), **QUIET)
    assert s.ok == 8 and _outputs(out) == _outputs(baseline[0])
    df = pd.read_parquet(out / "index")
    assert len(df) == 9 and not df.duplicated(["id", "clip_index"]).any()
    assert not list(out.rglob(".tmp-*"))  # killed writers' partial files were cleaned up
    for r in df[df.status == "ok"].itertuples():
        assert sha256_file(str(out / r.output)) == r.output_sha256


def test_clips_of_an_actor_killed_mid_batch_are_restyled_again(baseline, ray_cluster, inputs, tmp_path):
    import threading

    from ray.util.state import list_actors

    out = tmp_path / "out"
    killed = []

    def killer():
        deadline = time.time() + 120
        pid = None
        while time.time() < deadline and pid is None:  # find the restyle actor once it is up
            pid = next((a.pid for a in list_actors(filters=[("state", "=", "ALIVE")])
                        if "Restyle" in (a.class_name or "") and a.pid), None)
            time.sleep(0.1)
        while time.time() < deadline and pid and not list(out.glob("clips/*/*.mkv")):
            time.sleep(0.01)
        if pid:  # its first clip is out and seven more are queued or in its hands
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    t = threading.Thread(target=killer)
    t.start()
    lines = []
    s = run_job(_cfg(inputs, out, "mixed", batch_size=1), log=lines.append)
    t.join()
    assert killed, "the restyle actor was never seen alive"
    # The clips it had in flight were not retried on it (restarted, it might never fit again): a second pass did.
    assert any("came back from no actor" in line and "pass 2 of 3" in line for line in lines), lines
    assert s.ok == 8 and _outputs(out) == _outputs(baseline[0])
    df = pd.read_parquet(out / "index")
    assert len(df) == 9 and not df.duplicated(["id", "clip_index"]).any()


def test_an_error_the_stages_did_not_expect_stops_the_job_naming_it(ray_cluster, inputs, tmp_path):
    """Blocks that fail are taken for a stopped actor's and redone; a programmer error must not be: it stops the
    job with its traceback."""
    import ray

    from v2v.job.pipeline import _render
    from v2v.job.report import Progress
    from v2v.job.resources import reachable_resources, resources

    cfg = _cfg(inputs, tmp_path / "out")
    res = resources(cfg, ray.cluster_resources(), reachable_resources())
    row = {"id": "v0", "clip_index": 0, "video": str(inputs / "v0.mp4"), "start_frame": "zero"}  # not a frame number
    with pytest.raises(RuntimeError, match=r"(?s)a restyle actor failed:.*Traceback.*Error"):
        _render(cfg, res, [row], "run-x", Progress(1, QUIET["log"]))


def test_unwritable_output_gives_failed_rows_and_a_clear_summary(ray_cluster, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clips").write_text("a file where the clips folder should be")  # every clip write fails
    s = run_job(_cfg(inputs, out, "mixed"), **QUIET)
    assert (s.ok, s.failed, s.exit_code) == (0, 9, 1)
    df = pd.read_parquet(out / "index")
    errs = df[df.clip_index >= 0].error
    assert len(df) == 9 and all(e.startswith("encode: ") and "clips" in e for e in errs)
    assert "encode:" in s.text()


def test_lease_refuses_a_second_live_job_and_takes_over_a_dead_ones(ray_cluster, inputs, tmp_path):
    from v2v.core.lease import LeaseError

    out = tmp_path / "out"
    out.mkdir()
    live = {"run_id": "other-run", "host": "node-7", "pid": 4242, "heartbeat": time.time(), "ttl_s": 120}
    (out / "_lease.json").write_text(json.dumps(live))
    with pytest.raises(LeaseError, match="in use by run other-run on host node-7 \\(pid 4242\\)"):
        run_job(_cfg(inputs, out, "mixed"), **QUIET)
    assert not (out / "index").exists()
    (out / "_lease.json").write_text(json.dumps({**live, "heartbeat": time.time() - 600}))
    lines = []
    s = run_job(_cfg(inputs, out, "mixed"), log=lines.append)
    assert s.ok == 8 and any("took over the lease of run other-run" in ln for ln in lines)
    assert not (out / "_lease.json").exists()  # released at the end
    # rerun at once on another host after the driver died (a KubeRay retry): its lease, silent for two beats, is
    # waited out, not refused
    (out / "_lease.json").write_text(json.dumps({**live, "heartbeat": time.time() - 1.5, "ttl_s": 3,
                                                 "heartbeat_s": 0.5}))
    lines = []
    s = run_job(_cfg(inputs, out, "mixed"), log=lines.append)
    assert s.ok == 8 and any(re.search(r"whose heartbeat stopped \d s ago; waiting up to \d s", ln) for ln in lines)
    assert any("took over the lease of run other-run" in ln for ln in lines)


def test_a_job_whose_lease_was_taken_leaves_the_index_to_the_new_owner(ray_cluster, inputs, tmp_path):
    """Fencing: a job whose heartbeat stalled long enough for another to take its lease does not replace the
    index at its end."""
    from v2v.core.lease import LeaseError

    out = tmp_path / "out"
    newer = {"run_id": "newer-run", "host": "node-7", "pid": 4242, "heartbeat": time.time() + 3600, "ttl_s": 120}

    def log(line):  # once clips are rendered, another job takes the output
        if re.match(r"v2v: \d+/\d+ clips, ", line):
            (out / "_lease.json").write_text(json.dumps(newer))

    with pytest.raises(LeaseError, match="lost its lease to run newer-run"):
        run_job(_cfg(inputs, out, "mixed"), log=log)
    assert not (out / "index").exists()  # the newer job's to write
    assert json.loads((out / "_lease.json").read_text())["run_id"] == "newer-run"


def test_demo_runs_end_to_end(tmp_path):
    """The README's first command after the install: its own local Ray, sample videos, the tiny model."""
    r = subprocess.run([sys.executable, "-m", "jobs.demo", "--output", str(tmp_path / "demo")], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ""}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "9 clips planned: 9 ok, 0 failed, 0 skipped" in r.stdout
    assert f"previews: {tmp_path / 'demo' / 'previews' / 'index.html'}" in r.stdout
    assert "does not have any available CPUs" not in r.stdout + r.stderr  # no false "will hang" warning
    assert len(list((tmp_path / "demo" / "videos").iterdir())) == 3
    assert len(pd.read_parquet(tmp_path / "demo" / "index")) == 9


def test_benchmark_runs_under_ray_job_submit(ray_cluster, tmp_path):
    """The benchmark entry joins the cluster `ray job submit` names instead of starting its own; its LoRA manifest
    (each video a style of its own) runs with the adapters recorded."""
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", ray_cluster["dashboard"],
           "--working-dir", REPO, "--", sys.executable, "-m", "benchmarks.run", "--model", "tiny", "--device", "cpu",
           "--steps", "2", "--variants", "float32", "--batch-sizes", "1", "--e2e-clips", "8",
           "--manifest-mix", "uniform,lora", "--mix-modes", "",
           "--work-dir", str(tmp_path / "work"), "--results", str(results), "--json", str(tmp_path / "bench.json")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = results.read_text()
    e2e = next(line for line in table.splitlines() if line.startswith("| ray job end to end"))
    assert "| float32 | 1 | 1 |" in e2e  # variant, batch, one actor
    # the run's verdict on issue 5's Ray job target is read off this job's rows
    verdict = next(line for line in table.splitlines() if line.startswith("| Ray job ≥ 90 %"))
    assert verdict.endswith("| met |") or verdict.endswith("| missed |"), verdict
    out = tmp_path / "work" / "e2e-1"
    df = pd.read_parquet(out / "index")
    assert len(df) == 8 and (df.status == "ok").all() and (df.adapters == "").all()
    lora = pd.read_parquet(tmp_path / "work" / "e2e-lora-1" / "index")
    assert len(lora) == 8 and (lora.status == "ok").all()
    styles = {json.loads(a)["lora"][0]["uri"].rsplit("/", 1)[-1] for a in lora.adapters}
    assert styles == {"style0-rank16.safetensors", "style1-rank64.safetensors"}  # 2 videos, 2 styles
    rows = {x["what"]: x for x in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert rows["ray job end to end, lora"]["clips"] == 8 and rows["ray job end to end, lora"]["cost_vs_uniform"] > 0
    # it joined the test cluster instead of starting a local Ray of its own
    assert "Started a local Ray instance" not in r.stdout + r.stderr


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """The tiny model with one token's embedding set to NaN: a prompt holding the word "~" gives that clip NaN
    latents and frames (as float16 overflow or damaged weights would); every other prompt runs as on `tiny`."""
    import torch

    from v2v.model.tiny import build_tiny_components, save_tiny

    comps = build_tiny_components()
    token = comps["tokenizer"].convert_tokens_to_ids("~</w>")
    with torch.no_grad():
        comps["text_encoder"].get_input_embeddings().weight[token] = float("nan")
    folder = tmp_path_factory.mktemp("nan-model")
    save_tiny(comps, folder)
    return str(folder)


def test_nan_output_fails_its_clip_and_spares_its_batch_mates(nan_model):
    """The actor stage with clips batched into one forward: the NaN clip's row fails and says so, the other's
    frames are those of the same batch with a clean prompt, bit for bit."""
    import numpy as np

    from v2v.job.resources import resources
    from v2v.job.stages import Restyle

    cfg = JobConfig(manifest="-", output="-", model=nan_model, steps=4, batch_size=2, batch_invariant=False)
    actor = Restyle(cfg, resources(cfg, {"CPU": 2}))
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 64, 64, 3), dtype=np.uint8)

    def batch(first_prompt):
        return {"id": np.array(["a", "b"], object), "clip_index": np.array([0, 0]),
                "prompt": np.array([first_prompt, "ink"], object), "negative_prompt": np.array(["", ""], object),
                "seed": np.array([1, 2]), "strength": np.array([0.6, 0.6]), "num_inference_steps": np.array([4, 4]),
                "guidance_scale": np.array([9.0, 9.0]), "frames": frames, "error": np.array([None, None], object)}

    bad, clean = actor(batch("a ~ fox")), actor(batch("a fox"))
    assert bad["error"][0].startswith("restyle: the output holds NaN") and "float32" in bad["error"][0]
    assert bad["error"][1] is None and clean["error"][0] is None and clean["error"][1] is None
    assert np.array_equal(bad["frames"][1], clean["frames"][1])  # the batch-mate: restyled, unchanged
    assert not np.array_equal(clean["frames"][1], frames[1])


def test_nan_clip_is_a_failed_row_not_a_black_video(ray_cluster, inputs, nan_model, baseline, tmp_path):
    """Through the job: the poisoned video's clips are failed rows with no files; the others match `tiny`'s."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("v0", "v1"):
        (d / f"{name}.mp4").symlink_to(inputs / f"{name}.mp4")
    rows = [{"video": "v0.mp4", "prompt": "style ~ 0", "seed": 0, "tag": "t0"},
            {"video": "v1.mp4", "prompt": "style 1", "seed": 100, "tag": "t1"}]
    pd.DataFrame(rows).to_csv(d / "m.csv", index=False)
    out = tmp_path / "out"
    s = run_job(_cfg(d, out, model=nan_model, max_failures=2), **QUIET)
    assert (s.ok, s.failed, s.exit_code) == (3, 2, 0)
    df = pd.read_parquet(out / "index")
    failed = df[df.status == "failed"]
    assert set(failed.tag) == {"t0"} and all(e.startswith("restyle: the output holds NaN") for e in failed.error)
    assert not (out / "clips" / failed.id.iloc[0]).exists()  # no black video written
    base = pd.read_parquet(baseline[0] / "index")
    shas = lambda d: sorted(zip(d.clip_index, d.output_sha256))  # noqa: E731
    assert shas(df[df.status == "ok"]) == shas(base[base.tag == "t1"])  # v1's clips as `tiny` made them


def test_actor_memory_is_reserved_for_each_restyle_actor(ray_cluster, inputs, tmp_path):
    """--actor-memory-gib reaches Ray as the restyle actors' `memory` resource (what Ray Data's warning asks)."""
    from ray.util.state import list_actors

    def restyle_actors():
        return {a.actor_id: a for a in list_actors(detail=True, limit=10000) if "Restyle" in (a.class_name or "")}

    d = tmp_path / "in"
    d.mkdir()
    (d / "v0.mp4").symlink_to(inputs / "v0.mp4")
    pd.DataFrame([{"video": "v0.mp4", "prompt": "style 0", "seed": 0}]).to_csv(d / "m.csv", index=False)
    before = set(restyle_actors())
    s = run_job(_cfg(d, tmp_path / "out", actor_memory_gib=0.25), **QUIET)
    assert s.ok == 2
    new = [a for k, a in restyle_actors().items() if k not in before]
    assert new and all(a.required_resources.get("memory") == 0.25 * 2**30 for a in new), [
        a.required_resources for a in new]
