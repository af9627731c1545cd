"""Video I/O: probe, plan, exact-frame decode, encode round trips, atomic writes, stitch, bad input."""

import os
import signal
import subprocess
import sys
from fractions import Fraction

import fsspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.demo import make_video, pattern_frame
from tests.helpers import frame_index
from v2v.core.plan import PlanError, PlanSettings, plan_clips
from v2v.core.video import VideoError, decode_clip, describe_resize, probe, read_frames, stitch_frames, write_video


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("vids")
    return {
        "cfr": make_video(str(d / "cfr.mp4"), 60, 96, 64, fps=24, audio=True),
        "lossless": make_video(str(d / "lossless.mkv"), 40, 64, 64, codec="ffv1", pix_fmt="bgr0"),
        "vfr": make_video(str(d / "vfr.mkv"), 10, 64, 64, codec="ffv1", pix_fmt="bgr0",
                          pts=[0, 40, 80, 160, 200, 280, 300, 340, 400, 440], time_base=Fraction(1, 1000)),
        "odd": make_video(str(d / "odd.mkv"), 5, 333, 187, codec="ffv1", pix_fmt="bgr0"),
        "10bit": make_video(str(d / "10bit.mkv"), 5, 64, 64, codec="ffv1", pix_fmt="yuv420p10le"),
        "rot90": make_video(str(d / "rot90.mp4"), 4, 96, 64, rotation=90),
        "one": make_video(str(d / "one.mp4"), 1, 64, 64),
        "hd": make_video(str(d / "hd.mp4"), 3, 1920, 1080),
        "dir": d,
    }


def test_probe_reports_geometry_timing_and_audio(vids):
    p = probe(vids["cfr"])
    assert (p.num_frames, p.frame_count, p.fps, p.width, p.height) == (60, "header", 24.0, 96, 64)
    assert p.has_audio and not p.variable_fps and p.duration_s == pytest.approx(2.5)
    q = probe(vids["lossless"])
    assert (q.num_frames, q.frame_count, q.fps) == (40, "counted", 24.0)
    v = probe(vids["vfr"])
    assert v.variable_fps and v.num_frames == 10
    r = probe(vids["rot90"])
    assert (r.rotation, r.width, r.height) == (90, 64, 96)  # displayed size after rotation
    assert probe(vids["10bit"]).pix_fmt == "yuv420p10le"


def test_plan_windows_stride_and_remainder(vids):
    p = probe(vids["cfr"])  # 60 frames
    plan = plan_clips(p, PlanSettings(clip_frames=24))
    assert [(c.start_frame, c.num_frames) for c in plan.clips] == [(0, 24), (24, 24), (48, 12)]
    plan = plan_clips(p, PlanSettings(clip_frames=24, min_frames=13))
    assert [(c.start_frame, c.num_frames) for c in plan.clips] == [(0, 24), (24, 24)]
    assert "dropped the trailing 12 frame(s)" in plan.notes[0]
    assert (plan.dropped_start, plan.dropped_frames) == (48, 12)
    plan = plan_clips(p, PlanSettings(clip_frames=24, stride=16, max_clips=2))
    assert [(c.start_frame, c.num_frames) for c in plan.clips] == [(0, 24), (16, 24)]
    assert "max_clips=2" in plan.notes[0]
    plan = plan_clips(p, PlanSettings(clip_frames=8, fps=12, start_s=1.0, end_s=2.0))
    assert [(c.start_frame, c.num_frames, c.start_s) for c in plan.clips] == [(12, 8, 1.0), (20, 4, 20 / 12)]
    assert plan.clips[0].frame_times()[:2] == [1.0, 13 / 12]
    with pytest.raises(PlanError, match="stride"):
        plan_clips(p, PlanSettings(clip_frames=8, stride=0))


def test_plan_clips_of_4k_plus_1_frames_for_a_model_that_needs_them(vids):
    """Wan's VAE takes 4k+1 frames: a shorter last clip (last_clip=short) is cut to the next such count, the rest
    dropped and said; restyled whole with context frames (overlap, the default), it keeps every frame."""
    p = probe(vids["cfr"])  # 60 frames
    plan = plan_clips(p, PlanSettings(clip_frames=21, frame_step=4, last_clip="short"))
    assert [(c.start_frame, c.num_frames) for c in plan.clips] == [(0, 21), (21, 21), (42, 17)]
    assert (plan.dropped_start, plan.dropped_frames) == (59, 1) and "4k+1 frames" in plan.notes[0]
    plan = plan_clips(p, PlanSettings(clip_frames=21, frame_step=4))
    assert [(c.start_frame, c.num_frames, c.context_frames) for c in plan.clips] == [(0, 21, 0), (21, 21, 0),
                                                                                    (42, 18, 3)]
    assert plan.dropped_frames == 0 and plan.notes == []
    plan = plan_clips(p, PlanSettings(clip_frames=25, stride=20, frame_step=4, last_clip="short"))  # the tail once
    assert [(c.start_frame, c.num_frames) for c in plan.clips] == [(0, 25), (20, 25), (40, 17)]
    assert (plan.dropped_start, plan.dropped_frames) == (57, 3)
    plan = plan_clips(p, PlanSettings(clip_frames=29, min_frames=2, frame_step=4,
                                      last_clip="short"))  # 2 left: cut to 1 < 2
    assert [(c.start_frame, c.num_frames) for c in plan.clips] == [(0, 29), (29, 29)]
    assert (plan.dropped_start, plan.dropped_frames) == (58, 2) and "(1 once cut to 4k+1)" in plan.notes[0]
    with pytest.raises(PlanError, match=r"clip_frames 24: this model takes 4k\+1 frames a clip \(e.g. 21 or 25\)"):
        plan_clips(p, PlanSettings(clip_frames=24, frame_step=4))


def test_a_last_clip_restyled_whole_ends_at_the_window_end_with_context_frames(vids):
    """last_clip=overlap: a trailing remainder becomes a clip of the model's length ending at the window's end; the
    frames before the remainder (another clip's output) are its context, decoded first; its own frames are the
    remainder's. Remainders under min_frames are still dropped, and a window shorter than one clip gives a
    shorter clip."""
    p = probe(vids["cfr"])  # 60 frames
    plan = plan_clips(p, PlanSettings(clip_frames=24))
    assert [(c.start_frame, c.num_frames, c.context_frames) for c in plan.clips] == [(0, 24, 0), (24, 24, 0),
                                                                                    (48, 12, 12)]
    last = plan.clips[-1]
    assert (last.start_s, last.end_s) == (48 / p.fps, 60 / p.fps)
    assert [round(t * p.fps) for t in last.frame_times()] == list(range(36, 60))
    frames = decode_clip(vids["cfr"], last.frame_times(), 96, 64)
    assert [frame_index(f) for f in frames] == list(range(36, 60))
    plan = plan_clips(p, PlanSettings(clip_frames=24, min_frames=13))  # 12 left: dropped, as with short
    assert [c.num_frames for c in plan.clips] == [24, 24] and (plan.dropped_start, plan.dropped_frames) == (48, 12)
    plan = plan_clips(p, PlanSettings(clip_frames=16, stride=12, start_s=10 / p.fps))  # 50 frames from 10
    assert [(c.start_frame, c.num_frames, c.context_frames) for c in plan.clips] == [
        (10, 16, 0), (22, 16, 0), (34, 16, 0), (46, 14, 2)]  # context from 44: inside the window
    plan = plan_clips(p, PlanSettings(clip_frames=24, end_s=20 / p.fps, min_frames=1))  # a window of 20 frames
    assert [(c.start_frame, c.num_frames, c.context_frames) for c in plan.clips] == [(0, 20, 0)]
    with pytest.raises(PlanError, match="last_clip must be overlap or short"):
        plan_clips(p, PlanSettings(clip_frames=24, last_clip="pad"))


def test_too_short_video_plans_nothing_and_says_so(vids):
    plan = plan_clips(probe(vids["one"]), PlanSettings(clip_frames=24))
    assert plan.clips == [] and "fewer than min_frames" in plan.notes[0]
    plan = plan_clips(probe(vids["one"]), PlanSettings(clip_frames=24, min_frames=1))
    assert [(c.start_frame, c.num_frames) for c in plan.clips] == [(0, 1)]


def test_decode_returns_exactly_the_planned_frames(vids):
    p = probe(vids["cfr"])
    for clip in plan_clips(p, PlanSettings(clip_frames=16, stride=12, last_clip="short")).clips:
        frames = decode_clip(vids["cfr"], clip.frame_times(), 96, 64)
        assert frames.shape == (clip.num_frames, 64, 96, 3) and frames.dtype == np.uint8
        assert [frame_index(f) for f in frames] == list(range(clip.start_frame, clip.start_frame + clip.num_frames))
    # frame selection at half the rate takes every other frame
    clip = plan_clips(p, PlanSettings(clip_frames=6, fps=12)).clips[1]
    frames = decode_clip(vids["cfr"], clip.frame_times(), 96, 64)
    assert [frame_index(f) for f in frames] == [12, 14, 16, 18, 20, 22]


def test_decode_vfr_takes_frame_on_screen(vids):
    frames = decode_clip(vids["vfr"], [0.0, 0.1, 0.17, 0.29, 0.43], 64, 64)
    # frames sit at 0, 40, 80, 160, 200, 280, 300, 340, 400, 440 ms
    assert [frame_index(f) for f in frames] == [0, 2, 3, 5, 8]


def test_later_clip_does_not_decode_from_start(tmp_path):
    """A clip near the end of a long video is found by seeking: far faster than decoding everything."""
    path = make_video(str(tmp_path / "long.mp4"), 1200, 64, 64, fps=24)  # keyframes every 250 frames
    import av

    seen = []
    orig = av.container.InputContainer.decode

    def counting(self, *a, **k):
        for f in orig(self, *a, **k):
            seen.append(f.pts)
            yield f

    av.container.InputContainer.decode = counting
    try:
        frames = decode_clip(path, [k / 24 for k in range(1180, 1188)], 64, 64)
    finally:
        av.container.InputContainer.decode = orig
    assert [frame_index(f) for f in frames] == [k % 64 for k in range(1180, 1188)]
    assert len(seen) < 300, f"decoded {len(seen)} frames for a clip at frame 1180"


def test_resize_policies_and_rotation(vids):
    cover = decode_clip(vids["odd"], [0.0], 64, 64, "cover")[0]
    pad = decode_clip(vids["odd"], [0.0], 64, 64, "pad")[0]
    stretch = decode_clip(vids["odd"], [0.0], 64, 64, "stretch")[0]
    assert cover.shape == pad.shape == stretch.shape == (64, 64, 3)
    # pad letterboxes a 333x187 frame: black bars top and bottom, picture in the middle
    assert pad[:10].max() == 0 and pad[-10:].max() == 0 and pad[32].max() > 0
    assert cover[:10].max() > 0  # cover fills the frame
    # rotation metadata is honoured: stored 96x64, displayed 64x96 with the gray index block rotated
    rot = decode_clip(vids["rot90"], [0.0], 64, 96, "stretch")[0]
    src = pattern_frame(0, 96, 64)
    want = np.rot90(src, 1)
    assert rot.shape == want.shape == (96, 64, 3)
    assert np.abs(rot.astype(int) - want.astype(int)).mean() < 8


def test_10bit_and_hd_sources_decode(vids):
    assert decode_clip(vids["10bit"], [0.0, 1 / 24], 64, 64).shape == (2, 64, 64, 3)
    hd = decode_clip(vids["hd"], [0.0, 1 / 24, 2 / 24], 64, 64)
    assert hd.shape == (3, 64, 64, 3)


@pytest.mark.parametrize("codec", ["h264", "h265", "av1", "ffv1"])
def test_encode_keeps_frames_and_fps(tmp_path, codec):
    # 96 x 64: at 64 x 48, SVT-AV1 in PyAV 19's FFmpeg codes frame 1 as a repeat of frame 0 (their index
    # blocks differ by 4 gray levels), which says nothing about v2v's writer
    frames = np.stack([pattern_frame(i, 96, 64) for i in range(12)])
    ext = "mkv" if codec == "ffv1" else "mp4"
    out = str(tmp_path / f"o.{ext}")
    write_video(frames, out, fps=12.5, codec_name=codec, crf=None if codec == "ffv1" else 20)
    p = probe(out)
    assert (p.num_frames, p.width, p.height) == (12, 96, 64) and p.fps == pytest.approx(12.5, rel=1e-3)
    back = read_frames(out)
    if codec == "ffv1":
        assert np.array_equal(back, frames)  # lossless: bit for bit
    else:
        assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
        assert [frame_index(f) for f in back] == list(range(12))


def test_one_and_two_frame_h265_clips_encode_every_time(tmp_path):
    """libx265 sometimes leaves such a stream's dts unset, which mp4's muxer refused (a failed row) or wrote as a
    broken timeline; before the fix ~10-40 % of these encodes failed in one process."""
    for n in (1, 2):
        for i in range(15):
            frames = np.zeros((n, 64, 64, 3), np.uint8) if i % 2 else np.stack([pattern_frame(j, 64, 64)
                                                                                 for j in range(n)])
            out = str(tmp_path / f"s{n}-{i}.mp4")
            write_video(frames, out, fps=12.0, codec_name="h265")
            p = probe(out)
            assert (p.num_frames, read_frames(out).shape[0]) == (n, n) and p.fps == pytest.approx(12.0)


@pytest.mark.parametrize("codec,crf,preset,match", [
    ("h264", None, "bogus", r"the h264 encoder \(libx264\) refuses crf 18 with preset 'bogus'"),
    ("h264", 52, None, r"crf must be an integer in 0\.\.51 for h264, got 52"),
    ("h265", None, "warp9", "refuses crf 23 with preset 'warp9'"),
    ("av1", None, "14", "refuses crf 35 with preset '14'"),  # SVT-AV1's OverflowError, not a ValueError
    ("av1", 64, None, r"0\.\.63 for av1, got 64"),
])
def test_encoder_settings_are_checked_by_a_trial_encode(codec, crf, preset, match):
    from v2v.core.video import check_encoder

    with pytest.raises(VideoError, match=match):
        check_encoder(codec, crf, preset)
    check_encoder(codec, None, None)  # the defaults pass
    check_encoder("ffv1", 99, "x")  # lossless takes neither; they are ignored as the writer ignores them


def test_encoder_check_names_the_writers_reason_when_ffmpeg_gives_none(monkeypatch):
    """A VideoError of the writer's own (no FFmpeg error behind it) is named, not printed as 'None'."""
    from v2v.core import video

    def refuse(*args, **kwargs):
        raise VideoError("the muxer took no frames")

    monkeypatch.setattr(video, "write_video", refuse)
    with pytest.raises(VideoError, match=r"refuses crf 18 with preset 'medium': the muxer took no frames$"):
        video.check_encoder("h264", None, "medium")


def test_job_refuses_encoder_settings_before_it_runs(tmp_path):
    """No Ray, no manifest read, no model: the job stops at the setting, naming it."""
    from v2v.config import ConfigError, JobConfig
    from v2v.job.pipeline import run_job

    cfg = JobConfig(manifest=str(tmp_path / "absent.csv"), output=str(tmp_path / "out"), preset="bogus")
    with pytest.raises(ConfigError, match="--crf/--preset: the h264 encoder .* preset 'bogus'"):
        run_job(cfg, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_audio_passthrough_muxes_the_segment(vids, tmp_path):
    frames = decode_clip(vids["cfr"], [k / 24 for k in range(24, 48)], 64, 64)
    out = str(tmp_path / "a.mp4")
    write_video(frames, out, 24, "h264", audio_from=vids["cfr"], audio_span=(1.0, 2.0))
    import av

    with av.open(out) as c:
        a = c.streams.audio[0]
        dur = sum(p.duration for p in c.demux(a) if p.size) * a.time_base
    assert 0.9 <= float(dur) <= 1.1


def test_write_to_memory_filesystem_and_read_back():
    frames = np.stack([pattern_frame(i, 64, 64) for i in range(4)])
    write_video(frames, "memory://bucket/x/clip.mkv", 24, "ffv1")
    assert fsspec.filesystem("memory").exists("/bucket/x/clip.mkv")
    assert np.array_equal(read_frames("memory://bucket/x/clip.mkv"), frames)
    assert probe("memory://bucket/x/clip.mkv").num_frames == 4


def test_writer_killed_mid_file_leaves_nothing_at_final_path(tmp_path):
    final = tmp_path / "out.mp4"
    code = f"""
import numpy as np, os, signal
from v2v.core import video
real = video.av.VideoFrame.from_ndarray
n = [0]
def slow(*a, **k):
    n[0] += 1
    if n[0] == 20:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
video.av.VideoFrame.from_ndarray = slow
video.write_video(np.zeros((50, 64, 64, 3), np.uint8), {str(final)!r}, 24, "h264")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert not final.exists()
    # the partial data sits under a hidden temporary name, never the final one
    assert all(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_stitch_crossfades_overlaps():
    a = np.full((8, 2, 2, 3), 100, np.uint8)
    b = np.full((8, 2, 2, 3), 200, np.uint8)
    out = stitch_frames([(0, a), (5, b)])  # frames 5, 6, 7 overlap
    assert out.shape[0] == 13
    assert out[:5, 0, 0, 0].tolist() == [100] * 5
    assert out[5:8, 0, 0, 0].tolist() == [125, 150, 175]  # (1 - a) * 100 + a * 200, a = 1/4, 2/4, 3/4
    assert out[8:, 0, 0, 0].tolist() == [200] * 5
    assert stitch_frames([(0, a), (8, b)]).shape[0] == 16  # no overlap: plain concatenation


@pytest.mark.parametrize(
    "name,make,match",
    [
        ("missing.mp4", None, "file not found"),
        ("empty.mp4", lambda p: p.write_bytes(b""), "empty file"),
        ("text.mp4", lambda p: p.write_text("this is not a video\n" * 20), "not a readable video"),
        ("random.mp4", lambda p: p.write_bytes(np.random.default_rng(0).bytes(50_000)), "not a readable video"),
    ],
)
def test_bad_files_raise_video_error_naming_file(tmp_path, name, make, match):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(VideoError, match=match) as e:
        probe(str(path))
    assert str(path) in str(e.value)


def test_audio_only_and_truncated_files(tmp_path):
    import av

    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for k in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, k * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(VideoError, match="no video stream"):
        probe(str(audio))
    good = make_video(str(tmp_path / "good.mp4"), 48, 64, 64)
    data = open(good, "rb").read()
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(data[: len(data) // 2])  # mp4 with moov at the end: header lost
    with pytest.raises(VideoError, match=str(trunc)):
        probe(str(trunc))
    # a video whose frames end before the plan does: a clear error, not fewer frames
    lossless = make_video(str(tmp_path / "l.mkv"), 48, 64, 64, codec="ffv1", pix_fmt="bgr0")
    data = open(lossless, "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoError, match="video ends before"):
        decode_clip(str(cut), [k / 24 for k in range(40, 48)], 64, 64)


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory) -> bytes:
    return open(make_video(str(tmp_path_factory.mktemp("fuzz") / "good.mp4"), 24, 64, 64, audio=True), "rb").read()


@settings(max_examples=40, deadline=None)
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=20))
def test_fuzzed_video_bytes_decode_or_raise_video_error(good_mp4, tmp_path_factory, cut, flips):
    """Truncated or corrupted mp4 bytes: probe and decode either work or raise VideoError; never anything else."""
    data = bytearray(good_mp4)
    for pos, val in flips:
        data[int(pos * (len(data) - 1))] = val
    data = bytes(data[: max(1, int(len(data) * cut))]) if cut < 1 else bytes(data)
    path = tmp_path_factory.mktemp("case") / "v.mp4"
    path.write_bytes(data)
    try:
        p = probe(str(path))
        frames = decode_clip(str(path), [k / 24 for k in range(min(p.num_frames, 8))], 64, 64)
        assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3)
    except VideoError as e:
        assert str(path) in str(e)


@pytest.mark.parametrize("src, policy, says", [
    ((1920, 1080), "cover", "scaled from 1920x1080 to 576x324, 4 px of height cropped"),
    ((1080, 1920), "pad", "scaled from 1080x1920 to 180x320, 396 px of width padded"),
    ((640, 480), "stretch", "stretched from 640x480"),
    ((576, 320), "cover", "kept as it is"),
])
def test_resize_is_described_as_decoding_does_it(src, policy, says):
    assert describe_resize(*src, 576, 320, policy) == says
