"""Wan 2.1 behind the same job: `--model tiny-wan` (a Wan folder alike) plans clips of 4k+1 frames, restyles rows of
mixed settings and schedulers side by side, and every written clip is the model layer's clip alone."""

import json

import pandas as pd
import pytest
import torch

from jobs.demo import make_video
from v2v.config import ConfigError, JobConfig
from v2v.core.index import video_path
from v2v.core.manifest import ManifestError
from v2v.core.video import decode_clip, read_frames
from v2v.job.pipeline import run_job
from v2v.model import wan
from v2v.model.loading import load_components, make_scheduler, model_fingerprint
from v2v.model.sampler import ClipSettings, to_uint8_checked
from v2v.model.tiny import tiny_wan_dir

pytestmark = pytest.mark.slow  # the job on a Ray cluster

QUIET = dict(log=lambda m: None)


@pytest.fixture
def manifest(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    make_video(str(d / "a.mp4"), 16, 48, 40, seed=1)  # clips of 9: [0, 9), then 7 left
    make_video(str(d / "b.mp4"), 9, 32, 32, seed=2)  # one clip
    rows = [{"video": "a.mp4", "prompt": "ink wash", "seed": 1, "strength": 0.6, "guidance_scale": 5.0,
             "scheduler": ""},
            {"video": "b.mp4", "prompt": "oil paint", "seed": 2, "strength": 0.8, "num_inference_steps": 5,
             "guidance_scale": 1.0, "scheduler": "flow-euler"}]
    pd.DataFrame(rows).to_csv(d / "m.csv", index=False)
    return d / "m.csv"


@pytest.mark.parametrize("last_clip", ["overlap", "short"])
def test_the_job_runs_a_wan_model_and_each_clip_is_the_clip_alone(ray_cluster, manifest, tmp_path, last_clip):
    """a.mp4 (16 frames, clips of 9) leaves 7 frames: restyled whole with 2 context frames (overlap, nothing lost),
    or alone (short), cut to 5 (4k+1) and 2 dropped."""
    out = tmp_path / "out"
    cfg = JobConfig(manifest=str(manifest), output=str(out), model="tiny-wan", steps=4, codec="ffv1", batch_size=2,
                    max_failures=0, stitch=True, last_clip=last_clip)
    s = run_job(cfg, **QUIET)
    df = pd.read_parquet(out / "index").sort_values(["video", "clip_index"])
    a = df[df.video.str.endswith("a.mp4")]
    if last_clip == "overlap":
        assert (s.ok, s.failed, s.skipped) == (3, 0, 0), s.text()
        assert a.num_frames.tolist() == [9, 7] and a.context_frames.tolist() == [0, 2]
    else:
        assert (s.ok, s.failed, s.skipped) == (3, 0, 1), s.text()
        assert a.num_frames.tolist() == [9, 5, 2] and a.status.tolist() == ["ok", "ok", "skipped"]
        assert "4k+1" in a.error.iloc[2]  # the frames no clip could hold, said in the index
    ok = df[df.status == "ok"]
    assert set(ok.scheduler) == {"UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"}
    assert (ok.model_sha256 == model_fingerprint(tiny_wan_dir())).all()
    # the job's frames (lossless ffv1) against the model layer's, clip alone, from the same decoded source frames
    # (the context frames too), cut to the clip's own
    c = load_components("tiny-wan")
    for r in ok.itertuples():
        times = [(r.start_frame + k) / r.fps for k in range(-r.context_frames, r.num_frames)]
        source = torch.from_numpy(decode_clip(r.video, times, 32, 32, "cover"))
        clip = ClipSettings(r.prompt, seed=int(r.seed), strength=r.strength, num_inference_steps=r.num_inference_steps,
                            guidance_scale=r.guidance_scale, name=f"{r.id}/{r.clip_index:05d}")
        want, _ = to_uint8_checked(wan.restyle(c, source[None], [clip],
                                               scheduler=make_scheduler(c.scheduler, r.scheduler)))
        got = read_frames(str(out / r.output))
        assert got.shape == (r.num_frames, 32, 32, 3)
        assert (got == want[0][r.context_frames:]).all(), r.output  # bit for bit (CPU actors are batch-invariant)
    stitched = read_frames(str(out / video_path(a.id.iloc[0], "ffv1"))).shape[0]
    assert stitched == (16 if last_clip == "overlap" else 14)  # 9 + 7, or 9 + 5


def test_settings_a_wan_model_cannot_run_are_refused_before_the_job(manifest, tmp_path):
    base = dict(manifest=str(manifest), output=str(tmp_path / "out"), model="tiny-wan")
    for kw, says in [(dict(clip_frames=8), r"clip_frames 8: this model takes 4k\+1 frames a clip \(e.g. 5 or 9\)"),
                     (dict(width=40), r"width 40: a wan model takes sides that are multiples of 16"),
                     (dict(clip_skip=1), "clip_skip applies to CLIP text encoders; a wan model's is UMT5"),
                     (dict(scheduler="ddim"), r"scheduler 'ddim' \(DDIMScheduler\) cannot run a wan model")]:
        with pytest.raises((ConfigError, ValueError), match=says):
            run_job(JobConfig(**base, **kw), **QUIET)
    rows = pd.read_csv(manifest)
    rows.loc[1, "scheduler"] = "euler_a"
    rows["embeddings"] = ["", json.dumps([{"uri": str(tmp_path / "x.safetensors"), "token": "<x>"}])]
    rows.loc[1, "prompt"] = "a <x> style"
    rows.to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match=r"(?s)2 problem\(s\) with this model.*cannot run a wan model.*textual "
                                            r"inversion applies to CLIP"):
        run_job(JobConfig(**base), **QUIET)
    assert not (tmp_path / "out").exists()
