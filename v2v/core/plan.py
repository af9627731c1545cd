"""Cut a probed video into clip windows: plain, deterministic data, computed before any frame is decoded.

`plan_rows` turns one manifest row into the rows of its clips, the rows that travel through the job's stages."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from v2v.config import JobConfig
from v2v.core.index import clip_seed, work_key
from v2v.core.storage import StorageError, file_version, retrying
from v2v.core.video import Probe, VideoError, probe


class PlanError(ValueError):
    """Settings that cannot make a plan (e.g. a stride of 0); bad videos are not plan errors."""


@dataclass(frozen=True)
class PlanSettings:
    clip_frames: int  # frames per clip; the model's native count by default (24 for zeroscope)
    stride: int | None = None  # frames between clip starts; None = clip_frames (no overlap); smaller overlaps
    fps: float | None = None  # frame selection rate; None keeps the source's average rate
    start_s: float = 0.0
    end_s: float | None = None
    max_clips: int | None = None
    # A trailing remainder of at least this many frames becomes a shorter last clip; a shorter one is
    # dropped (and reported). None = half a clip.
    min_frames: int | None = None
    # Clips hold frame_step * k + 1 frames (Wan's VAE: 4); a shorter last clip is cut to the next such count
    # below its remainder, the frames past it dropped (and reported). 1: any count.
    frame_step: int = 1
    # A video's trailing remainder (kept: min_frames): "overlap" restyles it as a whole clip that ends at the
    # window's end, the frames before the remainder (`context_frames`, already another clip's output) given to the
    # model as context and cut from the output; "short" restyles the remainder alone, as a shorter clip. A video
    # shorter than one clip is always a shorter clip.
    last_clip: str = "overlap"

    def validate(self) -> None:
        if self.clip_frames < 1:
            raise PlanError(f"clip_frames must be >= 1, got {self.clip_frames}")
        if self.stride is not None and self.stride < 1:
            raise PlanError(f"stride must be >= 1, got {self.stride}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise PlanError(f"fps must be > 0, got {self.fps}")
        if self.start_s < 0 or (self.end_s is not None and self.end_s <= self.start_s):
            raise PlanError(f"need 0 <= start_s < end_s, got start_s={self.start_s}, end_s={self.end_s}")
        if self.max_clips is not None and self.max_clips < 1:
            raise PlanError(f"max_clips must be >= 1, got {self.max_clips}")
        if self.min_frames is not None and not 1 <= self.min_frames <= self.clip_frames:
            raise PlanError(f"min_frames must be in [1, clip_frames], got {self.min_frames}")
        if self.last_clip not in ("overlap", "short"):
            raise PlanError(f"last_clip must be overlap or short, got {self.last_clip!r}")
        if self.frame_step < 1 or (self.clip_frames - 1) % self.frame_step:
            k = (self.clip_frames - 1) // self.frame_step
            raise PlanError(f"clip_frames {self.clip_frames}: this model takes {self.frame_step}k+1 frames a clip "
                            f"(e.g. {k * self.frame_step + 1} or {(k + 1) * self.frame_step + 1})")


@dataclass(frozen=True)
class ClipPlan:
    clip_index: int
    start_frame: int  # index in the selected frame sequence (at `fps`), counted from the video's start
    num_frames: int
    fps: float
    start_s: float  # timestamp of the first frame, seconds from the video's start
    end_s: float  # start_s + num_frames / fps
    # Frames before start_frame the model sees with the clip and that are cut from its output (a last clip
    # restyled whole: PlanSettings.last_clip); the clip's output is still frames [start_frame, +num_frames).
    context_frames: int = 0

    def frame_times(self) -> list[float]:
        """Timestamps (s) of the frames to decode: the context frames, then the clip's own."""
        return frame_times(self.start_frame, self.num_frames, self.fps, self.context_frames)


def frame_times(start_frame: int, num_frames: int, fps: float, context_frames: int = 0) -> list[float]:
    """Timestamps (s) of a clip's frames in the sequence selected at `fps`, its context frames first."""
    return [(start_frame + k) / fps for k in range(-context_frames, num_frames)]


@dataclass
class Plan:
    clips: list[ClipPlan]
    fps: float
    total_frames: int  # frames in the selected window at `fps`
    notes: list[str] = field(default_factory=list)  # what was dropped or cut, and why; never silent
    dropped_start: int = 0  # first frame of a trailing remainder too short to keep (dropped_frames of them)
    dropped_frames: int = 0


def plan_clips(probe: Probe, s: PlanSettings) -> Plan:
    s.validate()
    fps = s.fps or probe.fps
    stride = s.stride or s.clip_frames
    min_frames = s.min_frames or max(1, s.clip_frames // 2)
    notes: list[str] = []
    # Frames of the selected sequence: frame k sits at k / fps. Keep those inside [start_s, end_s) and
    # inside the source's duration (the source's own frame count when we select at its rate).
    n_total = probe.num_frames if s.fps is None else math.floor(probe.duration_s * fps + 1e-6)
    first = math.ceil(s.start_s * fps - 1e-6)
    last = n_total if s.end_s is None else min(n_total, math.ceil(s.end_s * fps - 1e-6))
    window = max(0, last - first)
    clips: list[ClipPlan] = []
    dropped = (0, 0)
    start = first
    while start < last:
        n = min(s.clip_frames, last - start)
        short = n < s.clip_frames  # the last clip: its remainder
        # overlap: the remainder as the last clip_frames of the window (the model's own shape, nothing cut to 4k+1),
        # the frames before it context; else cut to frame_step * k + 1 frames
        context = s.clip_frames - n if short and s.last_clip == "overlap" and window >= s.clip_frames else 0
        keep = n if context else n - (n - 1) % s.frame_step
        if short and keep < min_frames:
            cut = f" ({keep} once cut to {s.frame_step}k+1)" if keep != n else ""
            notes.append(f"dropped the trailing {n} frame(s) from frame {start}: fewer than min_frames={min_frames}"
                         + cut)
            dropped = (start, n)
            break
        if s.max_clips is not None and len(clips) == s.max_clips:
            notes.append(f"stopped at max_clips={s.max_clips}; frames from {start} on are not planned")
            break
        if short and keep < n:
            notes.append(f"dropped the trailing {n - keep} frame(s) from frame {start + keep}: this model takes "
                         f"{s.frame_step}k+1 frames a clip")
            dropped, n = (start + keep, n - keep), keep
        clips.append(ClipPlan(len(clips), start, n, fps, start / fps, (start + n) / fps, context_frames=context))
        if short or start + n >= last:
            break
        start += stride
    if not clips and not notes:
        notes.append("no frames in the selected window")
    return Plan(clips=clips, fps=fps, total_frames=window, notes=notes, dropped_start=dropped[0],
                dropped_frames=dropped[1])


# Columns that travel with a clip through the stages (pass-through manifest columns stay on the driver).
CLIP_COLUMNS = ["id", "clip_index", "video", "start_frame", "num_frames", "context_frames", "fps", "start_s", "end_s",
                "width", "height", "prompt", "negative_prompt", "seed", "strength", "num_inference_steps",
                "guidance_scale", "lora", "embeddings", "scheduler", "work_key", "status", "error"]



def plan_rows(row: dict, cfg: JobConfig, geometry: tuple[int, int, int], job_key: dict,
              frame_step: int = 1) -> list[dict]:
    """One manifest row -> one row per planned clip (status 'planned'), plus 'skipped' rows for dropped
    remainders, or a single 'failed' row (clip_index -1) when the video cannot be read. Each row carries its
    `work_key` (core.index.work_key over the row and `job_key`, the job's settings that change the output).
    frame_step: the model's (clips of frame_step * k + 1 frames)."""
    rows = _plan_rows(row, cfg, geometry, frame_step)
    version = file_version(row["video"])
    uris = [a["uri"] for kind in ("lora", "embeddings") for a in json.loads(row.get(kind) or "[]")]
    adapter_versions = [file_version(u) for u in uris]
    missing = [u for u, v in zip(uris, adapter_versions) if v is None]
    for r in rows:
        r["work_key"] = work_key({**r, "video_version": version, "adapter_versions": adapter_versions}, job_key)
        if missing and r["status"] == "planned":  # found before any GPU time is spent on it
            r.update(status="failed", error=f"adapter: {missing[0]}: not found or not readable")
    return rows


def _plan_rows(row: dict, cfg: JobConfig, geometry: tuple[int, int, int], frame_step: int) -> list[dict]:
    width, height, frames = cfg.clip_shape(geometry)
    base = {k: row.get(k) for k in ("id", "video", "prompt", "negative_prompt", "strength", "num_inference_steps",
                                    "guidance_scale", "lora", "embeddings", "scheduler")}
    base.update(width=width, height=height, error=None)
    try:
        p = retrying(lambda: probe(row["video"]), row["video"])
    except (VideoError, StorageError) as e:
        return [{**base, "clip_index": -1, "start_frame": 0, "num_frames": 0, "context_frames": 0, "fps": None,
                 "start_s": None, "end_s": None, "seed": None, "status": "failed", "error": str(e)}]
    settings = PlanSettings(clip_frames=frames, stride=cfg.clip_stride, fps=cfg.fps,
                            start_s=row.get("start_s") or 0.0, end_s=row.get("end_s"), max_clips=cfg.max_clips,
                            min_frames=cfg.min_frames, frame_step=frame_step, last_clip=cfg.last_clip)
    plan = plan_clips(p, settings)
    rows = []
    for c in plan.clips:
        rows.append({**base, "clip_index": c.clip_index, "start_frame": c.start_frame, "num_frames": c.num_frames,
                     "context_frames": c.context_frames, "fps": c.fps, "start_s": c.start_s, "end_s": c.end_s,
                     "status": "planned", "seed": clip_seed(row.get("seed"), cfg.seed, row["id"], c.clip_index)})
    if not plan.clips or plan.dropped_frames:
        # Record what the plan left out as a 'skipped' row, so it is never silent.
        k = len(plan.clips)
        start = plan.dropped_start if plan.dropped_frames else 0
        rows.append({**base, "clip_index": k, "start_frame": start, "num_frames": max(0, plan.total_frames - start),
                     "context_frames": 0, "fps": plan.fps, "start_s": start / plan.fps, "end_s": None,
                     "status": "skipped", "seed": clip_seed(row.get("seed"), cfg.seed, row["id"], k),
                     "error": "; ".join(plan.notes)})
    return rows
