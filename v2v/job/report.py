"""What a run tells its user: the progress line while it runs, the dry run's plan, and the summary at its end
(with the clips whose quality signals stand out). Plain functions and classes; the pipeline calls them."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from v2v.config import JobConfig, denoising_steps

LOG_EVERY_S = 30.0  # a progress line this often in logs; on a terminal one live line instead


@dataclass
class Summary:
    planned: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    rendered_now: int = 0  # clips rendered in this run (the rest were done before, or failed/skipped)
    frames: int = 0
    wall_s: float = 0.0
    index: str = ""
    allowed_failures: int = 0
    # the failed rows by cause (failure_causes): [(count, cause, one of them as "<id>/<clip>: <error>")], most first
    causes: list[tuple[int, str, str]] = field(default_factory=list)
    retried: int = 0  # failed rows that a plain rerun tries again (the rest: with --retry-failed)
    stitch_failed: dict[str, str] = field(default_factory=dict)  # id -> why its video could not be stitched
    dry_run: bool = False
    outliers: list[str] = field(default_factory=list)  # lines naming the clips whose quality signals stand out
    preview: str = ""  # the preview page, where --preview wrote one
    unlisted: int = 0  # index rows of earlier runs' clips that this run did not plan (kept, or dropped)
    dropped: bool = False  # --drop-unlisted removed them

    @property
    def clips_per_minute(self) -> float:
        return 60.0 * self.rendered_now / self.wall_s if self.wall_s else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed > self.allowed_failures else 0

    def text(self) -> str:
        if self.dry_run:
            return (f"v2v: {plural(self.planned, 'clip')} planned: {self.ok} done before, {self.failed} failed, "
                    f"{self.skipped} skipped (dry run)")
        lines = [f"v2v: {plural(self.planned, 'clip')} planned: {self.ok} ok, {self.failed} failed, "
                 f"{self.skipped} skipped",
                 f"     {self.rendered_now} rendered in this run ({plural(self.frames, 'frame')}) in "
                 f"{self.wall_s:.1f} s = {self.clips_per_minute:.1f} clips/min",
                 f"     index: {self.index}" + self._unlisted_text()]
        if self.failed:
            again = ("a rerun tries them again" if self.retried == self.failed else
                     f"a rerun tries {self.retried} of them again, --retry-failed all" if self.retried else
                     "--retry-failed tries them again")
            lines.append(f"     failures: {self.failed} (allowed {self.allowed_failures}); {again}")
            lines += [f"       {example}" if n == 1 else f"       {n} × {cause} (e.g. {example})"
                      for n, cause, example in self.causes[:CAUSES_SHOWN]]
            if len(self.causes) > CAUSES_SHOWN:
                lines.append(f"       ... and {plural(len(self.causes) - CAUSES_SHOWN, 'other cause')} (the index's "
                             "`error` column)")
        if self.stitch_failed:
            lines.append(f"     videos not stitched: {len(self.stitch_failed)}")
            lines += [f"       {rid}: {why}" for rid, why in list(self.stitch_failed.items())[:5]]
        lines += [f"     {line}" for line in self.outliers]
        if self.preview:
            lines.append(f"     previews: {self.preview}")
        return "\n".join(lines)

    def _unlisted_text(self) -> str:
        if not self.unlisted:
            return ""
        kept = "without" if self.dropped else "and"
        return f" ({kept} {plural(self.unlisted, 'earlier row')} of clips this run did not plan)"


class Progress:
    """Clips done of the total, failed so far, clips per minute, time left and the restyle actors at work (those
    that returned clips in the last ACTIVE_S): one line rewritten in place on a terminal (`live`), else a line
    every LOG_EVERY_S and one at the end."""

    ACTIVE_S = 120.0

    def __init__(self, total: int, log, live: bool = False, clock=time.time):
        self.total, self.log, self.live, self.clock = total, log, live, clock
        self.started = clock()
        self.first_done: tuple[float, int] | None = None  # (when, how many): the rate leaves out the start-up
        self.last_line = -math.inf
        self.done = self.failed = 0
        self.actors: dict[str, float] = {}  # worker -> when it last returned clips

    def add(self, rows: list[dict]) -> None:
        """Count finished clip rows (ok or failed), and show the line if it is time."""
        now = self.clock()
        self.done += len(rows)
        self.failed += sum(r.get("status") == "failed" for r in rows)
        for r in rows:
            if r.get("worker"):
                self.actors[r["worker"]] = now
        self.update()

    def line(self) -> str:
        now, done = self.clock(), self.done
        rate = 60 * done / max(1e-9, now - self.started)
        text = f"v2v: {done}/{self.total} clips, {self.failed} failed, {rate:.1f} clips/min"
        if self.first_done and done > self.first_done[1] and done < self.total:
            per_clip = (now - self.first_done[0]) / (done - self.first_done[1])
            text += f", about {duration((self.total - done) * per_clip)} left"
        at_work = sum(now - t <= self.ACTIVE_S for t in self.actors.values())
        if at_work:
            text += f", {plural(at_work, 'restyle actor')} at work"
        return text

    def update(self) -> None:
        now, done = self.clock(), self.done
        if done and self.first_done is None:
            self.first_done = (now, done)
        end = done >= self.total
        if self.live:
            if now - self.last_line >= 1 or end:
                print("\r" + self.line() + "\033[K", end="\n" if end else "", flush=True)
                self.last_line = now
        elif now - self.last_line >= LOG_EVERY_S or end:
            self.log(self.line())
            self.last_line = now


# Seconds per clip-step (one denoising step of one clip) where a benchmark measured the geometry: the job's
# default variant at batch 4 on one H200, benchmarks/RESULTS.md (2.56 s a clip of 24 steps).
GPU_S_PER_CLIP_STEP = {(576, 320, 24): ("one H200", 2.56 / 24)}
DRY_RUN_VIDEOS_SHOWN = 20


def dry_run_report(cfg: JobConfig, rows: list[dict], todo: list[dict], log) -> None:
    """Per video (the first DRY_RUN_VIDEOS_SHOWN): its clips, their size and what resizing does to its frames;
    then totals, and the GPU time where a benchmark measured this clip size."""
    from v2v.core.video import VideoError, describe_resize, probe

    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    for k, (rid, clips) in enumerate(by_id.items()):
        if k == DRY_RUN_VIDEOS_SHOWN:
            log(f"  ... and {plural(len(by_id) - k, 'more video')}")
            break
        planned = [c for c in clips if c["status"] == "planned"]
        failed = [c for c in clips if c["status"] == "failed"]
        if failed and not planned:
            log(f"  {rid}: cannot be read: {failed[0]['error']}")
            continue
        if not planned:  # e.g. a start_s past the video's end
            log(f"  {rid}: nothing to restyle: {clips[0]['error']}")
            continue
        first = planned[0]
        try:
            p = probe(first["video"], count_frames=False)
            resize = describe_resize(p.width, p.height, first["width"], first["height"], cfg.resize)
        except (VideoError, OSError) as e:
            resize = f"source not probed again ({type(e).__name__})"
        skipped = sum(c["status"] == "skipped" for c in clips)
        log(f"  {rid}: {plural(len(planned), 'clip')} ({sum(c['num_frames'] for c in planned)} frames, "
            f"{planned[0]['start_s']:.2f}-{planned[-1]['end_s']:.2f} s) at {first['width']}x{first['height']}; "
            f"{cfg.resize}: {resize}" + (f"; {skipped} remainder skipped" if skipped else ""))
    steps = sum(denoising_steps(r["num_inference_steps"], r["strength"]) for r in todo)
    text = f"v2v: dry run: would render {plural(len(todo), 'clip')} ({sum(r['num_frames'] for r in todo)} frames, " \
           f"{steps} clip-steps)"
    shape = (todo[0]["width"], todo[0]["height"], max(r["num_frames"] for r in todo)) if todo else None
    if shape in GPU_S_PER_CLIP_STEP:
        card, per_step = GPU_S_PER_CLIP_STEP[shape]
        text += f"; about {duration(steps * per_step)} on {card} (benchmarks/RESULTS.md)"
    elif todo:
        text += f"; no GPU time measured for {shape[0]}x{shape[1]}x{shape[2]} clips"
    log(text + "; nothing was written")


OUTLIERS_SHOWN = 5


def outliers(rows: list[dict], shown: int = OUTLIERS_SHOWN) -> list[str]:
    """Summary lines naming the ok clips whose quality signals stand out: blank outputs, then the highest flicker
    and the lowest SSIM against the source (`shown` of each)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("source_ssim") is not None]
    if not ok:
        return []

    def name(r: dict) -> str:
        return f"{r['id']}/{r['clip_index']}"

    lines = []
    blanks = [r for r in ok if r.get("blank")]
    if blanks:
        lines.append(f"blank outputs ({len(blanks)}): " + ", ".join(name(r) for r in blanks[:shown]))
    flicker = sorted((r for r in ok if r.get("temporal_flicker") == r.get("temporal_flicker")),
                     key=lambda r: -r["temporal_flicker"])
    if flicker:
        lines.append("highest flicker: " + ", ".join(f"{name(r)} {r['temporal_flicker']:.2f}" for r in flicker[:shown]))
    lowest = sorted(ok, key=lambda r: r["source_ssim"])
    lines.append("lowest SSIM to source: " + ", ".join(f"{name(r)} {r['source_ssim']:.2f}" for r in lowest[:shown]))
    return lines


CAUSES_SHOWN = 5  # failure causes in the summary (job.json keeps the 20 commonest)


def failure_causes(rows: list[dict], most: int = 20) -> list[tuple[int, str, str]]:
    """The failed rows grouped by what their errors say once each row's own video URI and numbers are taken out
    (e.g. 250 clips of `<video>: file not found`, 50 of `restyle: CUDA out of memory. Tried to allocate N GiB`):
    [(count, cause, one of them as "<id>/<clip>: <error>")], the `most` commonest, most first (ties: first seen)."""
    groups: dict[str, list] = {}
    for r in rows:
        if r["status"] != "failed":
            continue
        error = str(r.get("error") or "unknown")
        cause = error.replace(r["video"], "<video>") if r.get("video") else error
        cause = re.sub(r"\d+(?:\.\d+)?", "N", cause)[:200]
        # clip_index -1: the row of a video that could not be read or planned at all
        where = f"{r['id']}/{r['clip_index']}" if r["clip_index"] >= 0 else f"{r['id']} (the whole video)"
        groups.setdefault(cause, [0, f"{where}: {error}"])[0] += 1
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])  # stable: ties keep the order first seen
    return [(n, cause, example) for cause, (n, example) in ranked[:most]]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
