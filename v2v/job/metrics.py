"""The restyle actors' metrics, through Ray's metrics API (ray.util.metrics), which every node exports for
Prometheus (`ray start --metrics-export-port`, names prefixed `ray_`). cluster/grafana-dashboard.json plots them.

    v2v_clips_total{status, run}             clips finished, by status (ok, failed)
    v2v_clip_stage_seconds{stage, run}       seconds per clip in decode, restyle and encode (histogram)
    v2v_unet_steps_per_second{actor, run}    clip-steps a second in the actor's last call
    v2v_gpu_busy_fraction{actor, run}        share of the actor's time since it was ready with clips in the model
    v2v_restyle_queue_depth{actor, run}      clips of the actor's call not yet taken into the model

`run` is the run's id (job.json, the index's run_id): one night's run on a dashboard.
"""

from __future__ import annotations

import threading
import time

STAGE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]


class ActorMetrics:
    """One restyle actor's metrics (created in the actor's process, where Ray records them)."""

    def __init__(self, actor: str, run_id: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.actor, self.tags = actor, {"actor": actor, "run": run_id}
        self.clips = Counter("v2v_clips", "Clips finished, by status", tag_keys=("status", "run"))
        self.stage = Histogram("v2v_clip_stage_seconds", "Seconds per clip in each stage",
                               boundaries=STAGE_BOUNDARIES, tag_keys=("stage", "run"))
        tags = ("actor", "run")
        self.steps = Gauge("v2v_unet_steps_per_second", "Clip-steps a second in the actor's last call", tags)
        self.busy = Gauge("v2v_gpu_busy_fraction", "Share of the actor's time with clips in the model", tags)
        self.queue = Gauge("v2v_restyle_queue_depth", "Clips of the actor's call not yet taken into the model", tags)
        self.ready_at = time.time()
        self.in_model_s = 0.0
        self.waiting = 0
        self._lock = threading.Lock()

    def waiting_for_model(self, delta: int) -> None:
        with self._lock:
            self.waiting += delta
            self.queue.set(self.waiting, tags=self.tags)

    def batch(self, rows: dict, model_s: float, clip_steps: int) -> None:
        """Record a finished call: its rows (status and per-stage seconds), its time in the model and the
        clip-steps it ran."""
        with self._lock:
            self.in_model_s += model_s
            busy = self.in_model_s / max(1e-9, time.time() - self.ready_at)
        for i, status in enumerate(rows["status"]):
            self.clips.inc(1, tags={"status": str(status), "run": self.tags["run"]})
            for stage in ("decode", "restyle", "encode"):
                secs = float(rows[f"{stage}_s"][i])
                if secs > 0:
                    self.stage.observe(secs, tags={"stage": stage, "run": self.tags["run"]})
        if model_s > 0:
            self.steps.set(clip_steps / model_s, tags=self.tags)
        self.busy.set(min(1.0, busy), tags=self.tags)
