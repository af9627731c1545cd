"""What a user sees of `python -m jobs.restyle` before and around a run: --help, the errors that stop it before Ray
starts, and the progress line. (The run itself: tests/job/test_job.py.)"""

import io
import re
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

from jobs.demo import make_video
from jobs.restyle import GROUPS, build_parser
from tests.helpers import REPO
from v2v.job.report import LOG_EVERY_S, Progress, Summary


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.restyle", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_help_shows_real_defaults_in_groups():
    text = build_parser().format_help()
    assert "(default: None)" not in text and text.count("(default:") >= 30
    flat = " ".join(text.split())  # argparse wraps the help text
    for setting in ["--model URI 'tiny' or 'tiny-wan' (embedded), a diffusers folder (zeroscope / ModelScope or "
                    "Wan 2.1, read off its model_index.json), an fsspec URI of one, or a hub id (default: tiny)", "(default: 40)", "(default: 0.6)", "(default: 15.0)", "(default: h264)",
                    "(default: cover)", "--max-failures X failed clips allowed before the exit code is 1: a count, "
                    "or a fraction when < 1 (default: 0)", "auto: cuda when the cluster has GPUs"]:
        assert setting in flat, setting
    for title in GROUPS:
        assert title + ":" in text
    assert "usage: python -m jobs.restyle --manifest URI --output URI [settings]" in text


@pytest.mark.parametrize("args, says", [
    (["--stepz", "3"], "unrecognized arguments: --stepz 3; did you mean --steps?"),
    (["--strength", "strong"], "argument --strength: invalid float value: 'strong'"),
])
def test_a_mistyped_flag_is_one_line_and_a_pointer_to_help(args, says):
    r = _cli("--manifest", "m.csv", "--output", "out", *args)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"python -m jobs.restyle: {says}",
                                     "(python -m jobs.restyle --help lists every setting)"]


def test_unusable_input_stops_before_ray_starts(tmp_path):
    """Each is one line, exit 2; Ray's address is one nothing listens on, so reaching it would be another error."""
    make_video(str(tmp_path / "v.mp4"), 8, 64, 64)
    (tmp_path / "m.csv").write_text("video,prompt,strength\nv.mp4,ink,0.5\nv.mp4,ink,1.5\n")
    (tmp_path / "a-file").write_text("x")
    nowhere = ["--ray-address", "127.0.0.1:9"]
    for args, says in [
        (["--manifest", str(tmp_path / "m.csv"), "--output", str(tmp_path / "a-file")],
         f"v2v: --output {tmp_path / 'a-file'} is a file; give a folder"),
        (["--manifest", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out")],
         "m.csv line 3: strength: 1.5 is out of range: strength must be in (0, 1]"),
        (["--manifest", str(tmp_path / "typo.csv"), "--output", str(tmp_path / "out")], "typo.csv: not found"),
        (["--manifest", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"), "--model",
          str(tmp_path / "no-model")], "no-model"),
        (["--config", str(tmp_path / "job.yaml")], f"v2v: --config {tmp_path / 'job.yaml'}: cannot be read"),
        (["--config", str(tmp_path)], f"v2v: --config {tmp_path}: cannot be read"),
    ]:
        r = _cli(*args, *nowhere)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert says in r.stderr and "Traceback" not in r.stderr and "Ray" not in r.stderr, (says, r.stderr)
    assert not (tmp_path / "out").exists()


def test_progress_line_fields_live_and_in_logs():
    now = [1000.0]
    lines: list[str] = []
    p = Progress(10, lines.append, live=False, clock=lambda: now[0])
    now[0] += 20  # the actors' start
    p.add([{"status": "ok", "worker": "a"}, {"status": "ok", "worker": "b"}])
    assert lines == ["v2v: 2/10 clips, 0 failed, 6.0 clips/min, 2 restyle actors at work"]
    now[0] += 10
    p.add([{"status": "failed", "worker": "a"}, {"status": "ok", "worker": "a"}])
    assert len(lines) == 1  # in logs: a line every LOG_EVERY_S
    now[0] += LOG_EVERY_S
    p.add([{"status": "ok", "worker": "a"}])  # 5 clips in 60 s; 3 in the 40 s since the first two: 13.3 s a clip
    assert lines[-1] == "v2v: 5/10 clips, 1 failed, 5.0 clips/min, about 67 s left, 2 restyle actors at work"
    now[0] += Progress.ACTIVE_S  # b has returned nothing since: not at work
    p.add([{"status": "ok", "worker": "a"}])
    assert lines[-1].endswith("left, 1 restyle actor at work")
    p.add([{"status": "ok"}] * 4)
    assert lines[-1].startswith("v2v: 10/10 clips, 1 failed,") and "left" not in lines[-1]  # the end, always

    live = Progress(3, lines.append, live=True, clock=lambda: now[0])
    out = io.StringIO()
    with redirect_stdout(out):
        live.add([{"status": "ok"}])
        now[0] += 2
        live.add([{"status": "ok"}])
        now[0] += 2
        live.add([{"status": "ok"}])
    shown = out.getvalue()
    assert shown.count("\r") == 3 and shown.endswith("\n") and shown.count("\n") == 1  # one line, rewritten
    assert re.search(r"\rv2v: 2/3 clips, 0 failed, [\d.]+ clips/min, about 2 s left\x1b\[K", shown), shown
    assert lines[-1].startswith("v2v: 10/10")  # nothing of the live line went to the log


def test_summary_counts_read_as_words():
    s = Summary(planned=1, ok=1, rendered_now=1, frames=1, wall_s=2.0, index="out/index")
    assert s.text().splitlines()[:2] == ["v2v: 1 clip planned: 1 ok, 0 failed, 0 skipped",
                                         "     1 rendered in this run (1 frame) in 2.0 s = 30.0 clips/min"]


def test_the_summary_names_the_clips_that_stand_out():
    from v2v.job.report import outliers

    rows = [{"id": f"v{i}", "clip_index": 0, "status": "ok", "temporal_flicker": 1 + i / 10,
             "source_ssim": 0.9 - i / 10, "blank": i == 3} for i in range(7)]
    rows.append({"id": "bad", "clip_index": -1, "status": "failed", "temporal_flicker": None, "source_ssim": None})
    assert outliers(rows, shown=2) == ["blank outputs (1): v3/0", "highest flicker: v6/0 1.60, v5/0 1.50",
                                       "lowest SSIM to source: v6/0 0.30, v5/0 0.40"]
    assert outliers(rows[-1:]) == []  # nothing restyled: nothing to name
    s = Summary(planned=8, ok=7, failed=1, index="i", outliers=outliers(rows, shown=2),
                preview="out/previews/index.html")
    assert "     highest flicker: v6/0 1.60, v5/0 1.50" in s.text() and s.text().endswith("out/previews/index.html")


def test_the_summary_groups_failures_by_cause():
    """A night's failures read as their causes, commonest first: the same error on many videos (their URIs and
    numbers aside) is one line with its count and one example; a cause seen once is its row's own line."""
    from v2v.job.report import CAUSES_SHOWN, failure_causes

    rows = [{"id": f"gone{i}", "clip_index": -1, "video": f"s3://b/gone{i}.mp4", "status": "failed",
             "error": f"s3://b/gone{i}.mp4: file not found"} for i in range(3)]
    rows += [{"id": "big", "clip_index": c, "video": "s3://b/big.mp4", "status": "failed",
              "error": f"restyle: CUDA out of memory. Tried to allocate {c + 1}.50 GiB"} for c in range(2)]
    rows += [{"id": "odd", "clip_index": 0, "video": "odd.mp4", "status": "failed", "error": "encode: ValueError: x"},
             {"id": "fine", "clip_index": 0, "video": "s3://b/fine.mp4", "status": "ok", "error": None}]
    causes = failure_causes(rows)
    assert [(n, cause) for n, cause, _ in causes] == [
        (3, "<video>: file not found"), (2, "restyle: CUDA out of memory. Tried to allocate N GiB"),
        (1, "encode: ValueError: x")]
    assert causes[0][2] == "gone0 (the whole video): s3://b/gone0.mp4: file not found"
    s = Summary(planned=7, ok=1, failed=6, index="i", causes=causes, retried=3)
    lines = s.text().splitlines()
    i = lines.index("     failures: 6 (allowed 0); a rerun tries 3 of them again, --retry-failed all")
    assert lines[i + 1:i + 4] == [
        "       3 × <video>: file not found (e.g. gone0 (the whole video): s3://b/gone0.mp4: file not found)",
        "       2 × restyle: CUDA out of memory. Tried to allocate N GiB (e.g. big/0: restyle: CUDA out of memory. "
        "Tried to allocate 1.50 GiB)",
        "       odd/0: encode: ValueError: x"]
    many = [{"id": f"v{i}", "clip_index": 0, "video": "v.mp4", "status": "failed", "error": f"cause {'ab'[i % 2]}{i}"}
            for i in range(CAUSES_SHOWN + 3)]  # (digits aside, `a` and `b` causes: only two)
    assert len(failure_causes(many)) == 2
    many = [{**r, "error": "x" * (i + 1)} for i, r in enumerate(many)]
    s = Summary(planned=8, failed=8, index="i", causes=failure_causes(many))
    assert s.text().splitlines()[-1] == "       ... and 3 other causes (the index's `error` column)"


def test_dry_run_estimates_gpu_time_where_a_benchmark_measured_the_clip_size(tmp_path):
    from v2v.config import JobConfig
    from v2v.job.report import dry_run_report

    make_video(str(tmp_path / "v.mp4"), 8, 1024, 576)
    rows = [{"id": "v", "clip_index": k, "video": str(tmp_path / "v.mp4"), "status": "planned", "num_frames": 24,
             "start_s": k, "end_s": k + 1, "width": 576, "height": 320, "strength": 0.6, "num_inference_steps": 40}
            for k in range(100)]
    lines: list[str] = []
    dry_run_report(JobConfig(manifest="m", output="o"), rows, rows, lines.append)
    assert lines[0] == ("  v: 100 clips (2400 frames, 0.00-100.00 s) at 576x320; cover: scaled from 1024x576 to "
                        "576x324, 4 px of height cropped")
    # 100 clips x 24 steps at 2.56 s a clip of 24 steps on one H200: 256 s
    assert lines[-1] == ("v2v: dry run: would render 100 clips (2400 frames, 2400 clip-steps); about 4 min on one "
                         "H200 (benchmarks/RESULTS.md); nothing was written")
