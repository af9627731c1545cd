"""The Ray Data job: manifest -> plan -> skip done -> decode -> restyle (actor pool) -> encode -> index.

This module is the only library code that touches Ray; `ray.init` itself happens in jobs/.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from dataclasses import dataclass, field

import pyarrow as pa

from v2v.core import index as idx
from v2v.core.index import clip_path, video_path
from v2v.config import ConfigError, JobConfig
from v2v.job.resources import Resources, resources
from v2v.core.manifest import NORMALIZED, load_manifest
from v2v.core.plan import CLIP_COLUMNS as _PLAN_COLUMNS
from v2v.core.plan import plan_rows
from v2v.job.stages import Restyle
from v2v.core.storage import join, url_to_fs, write_bytes_atomic

logger = logging.getLogger("v2v")

FLUSH_EVERY_S = 2.0  # finished rows reach _progress/ this often: what a killed run loses at most
LOG_EVERY_S = 10.0


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
    errors: list[str] = field(default_factory=list)  # a few examples

    @property
    def clips_per_minute(self) -> float:
        return 60.0 * self.rendered_now / self.wall_s if self.wall_s else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed > self.allowed_failures else 0

    def text(self) -> str:
        lines = [f"v2v: {self.planned} clips planned: {self.ok} ok, {self.failed} failed, {self.skipped} skipped",
                 f"     {self.rendered_now} rendered in this run ({self.frames} frames) in {self.wall_s:.1f} s"
                 f" = {self.clips_per_minute:.1f} clips/min",
                 f"     index: {self.index}"]
        if self.failed:
            lines.append(f"     failures: {self.failed} (allowed {self.allowed_failures})")
            lines += [f"       {e}" for e in self.errors[:5]]
        return "\n".join(lines)


def versions() -> dict:
    import diffusers
    import ray
    import torch

    import v2v

    return {"v2v": v2v.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "ray": ray.__version__, "python": platform.python_version()}


def _done_outputs(output: str) -> dict[str, int]:
    """Relative path -> size of every clip file present (one listing, not one request per clip)."""
    fs, root = url_to_fs(output)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/clips"):
        return {}
    found = fs.find(f"{root}/clips", detail=True)
    return {p[len(root) + 1 :]: int(info.get("size") or 0) for p, info in found.items()}


# What a clip's result depends on; a previous row counts as this clip's only if all of them match.
_WORK_FIELDS = ("video", "prompt", "negative_prompt", "seed", "strength", "num_inference_steps", "guidance_scale",
                "start_frame", "num_frames", "fps", "width", "height")


def _same_work(prev: dict, planned: dict, cfg: JobConfig) -> bool:
    if any(prev.get(k) != planned.get(k) for k in _WORK_FIELDS) or prev.get("model") != cfg.model:
        return False
    return prev["status"] != "ok" or prev["output"] == clip_path(planned["id"], planned["clip_index"], cfg.codec)


def _remove_partial_files(output: str) -> None:
    """Temporary files of writers killed mid-write (never at final paths). Safe: we hold the output's lease."""
    fs, root = url_to_fs(output)
    root = root.rstrip("/")
    for pattern in ("clips/*/.tmp-*", "videos/.tmp-*", "index/.tmp-*", "_progress/*/.tmp-*", ".tmp-*"):
        for path in fs.glob(f"{root}/{pattern}"):
            fs.rm(path)


def _plan(manifest: pa.Table, cfg: JobConfig, geometry) -> pa.Table:
    """Probe and plan every video in Ray tasks; returns one row per planned clip (and failed/skipped rows)."""
    import ray.data

    def plan_batch(batch: pa.Table) -> pa.Table:
        rows = [r for row in batch.to_pylist() for r in plan_rows(row, cfg, geometry)]
        return idx.to_table(rows).select(_PLAN_COLUMNS) if rows else _EMPTY_PLAN

    rows = manifest.select(list(NORMALIZED)).to_pylist()  # the manifest's own extra columns stay in the driver
    ds = _dataset(rows, 1 if len(rows) <= 2000 else 64).map_batches(plan_batch, batch_format="pyarrow",
                                                                   batch_size=None, num_cpus=cfg.cpus_per_task)
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else _EMPTY_PLAN


_EMPTY_PLAN = idx.to_table([]).select(_PLAN_COLUMNS)


def _dataset(rows: list[dict], rows_per_block: int = 1):
    """A Ray Dataset of `rows`, `rows_per_block` a block, built in the driver. (ray.data.from_arrow runs one
    remote task per block for its metadata: ~5 s for 2,000 one-row blocks on two CPUs, and while they run they hold
    the cluster's CPUs, so Ray Data warned at every job's start that "the Dataset job will hang".)"""
    import ray.data

    return ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // rows_per_block)))


def _write_job_json(cfg: JobConfig, run_id: str, started: float, extra: dict) -> None:
    meta = {"run_id": run_id, "started_at": started, "settings": cfg.to_dict(), "versions": versions(),
            "model": {"reference": cfg.model}, **extra}
    write_bytes_atomic(join(cfg.output, "job.json"), json.dumps(meta, indent=2, default=str).encode())


def run_job(cfg: JobConfig, log=print) -> Summary:
    """Run the whole job on the connected Ray cluster. Bad inputs become failed rows; the summary says all.

    Raises ManifestError / ConfigError / ModelError for unusable input (before anything runs) and LeaseError
    when another live job is writing the same output.
    """
    from v2v.core.lease import Lease
    from v2v.model.loading import check_model
    from v2v.core.video import VideoError, check_encoder

    cfg.validate()
    try:  # the encoder opens only after a clip is restyled: refuse its settings now, not on every clip then
        check_encoder(cfg.codec, cfg.crf, cfg.preset)
    except VideoError as e:
        raise ConfigError(f"--crf/--preset: {e}") from None
    check_model(cfg.model, cfg.scheduler)  # raises ModelError: a mistyped path fails here, not in every actor
    t_start = time.time()
    run_id = idx.new_run_id()
    manifest = load_manifest(cfg.manifest, cfg)  # raises ManifestError before anything else happens
    if cfg.dry_run:
        return _run(cfg, manifest, run_id, t_start, log)
    with Lease(cfg.output, run_id, ttl_s=cfg.lease_ttl_s, heartbeat_s=cfg.lease_ttl_s / 4) as lease:
        if lease.took_over:
            log(f"v2v: took over the lease of run {lease.took_over.get('run_id')}, whose heartbeat had stopped")
        return _run(cfg, manifest, run_id, t_start, log)


class RestyleActor(Restyle):
    """The restyle stage as a Ray actor, its log lines kept. Where its start went, what each stored compiled part
    did and what it recovered from are INFO records of the `v2v` loggers, which a worker process (no handler on
    its root logger) would drop: they go to the worker's stderr, which Ray keeps in the worker's log file and shows
    in the driver's output. A job that configures logging itself (`ray.LoggingConfig`) keeps its own."""

    def __init__(self, cfg: JobConfig, res: Resources):
        if not logging.getLogger().handlers and not logger.handlers:  # logger: the `v2v` loggers' parent
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        super().__init__(cfg, res)


def _run(cfg: JobConfig, manifest: pa.Table, run_id: str, t_start: float, log) -> Summary:
    import ray
    import ray.data

    from v2v.model.loading import model_geometry
    from v2v.job.stages import decode, encode

    extra_cols = [c for c in manifest.column_names if c not in NORMALIZED]
    geometry = model_geometry(cfg.model)

    # 1. Plan every video (Ray tasks: probing reads the files).
    plan = _plan(manifest, cfg, geometry)
    planned_keys = list(zip(plan["id"].to_pylist(), plan["clip_index"].to_pylist()))

    if not cfg.dry_run:
        _remove_partial_files(cfg.output)

    # 2. Skip clips already done: an 'ok' row for the same settings whose output is present at its size.
    previous = idx.read_all(cfg.output)
    prev_rows = {}
    if previous is not None:
        for r in previous.to_pylist():
            prev_rows[(r["id"], r["clip_index"])] = r
    present = _done_outputs(cfg.output) if prev_rows else {}
    plan_rows_list = plan.to_pylist()
    todo, carried, new_rows = [], [], []
    for key, r in zip(planned_keys, plan_rows_list):
        prev = prev_rows.get(key)
        if r["status"] != "planned":
            new_rows.append(r)  # failed probe / skipped remainder: recorded now
        elif prev is None or not _same_work(prev, r, cfg):
            todo.append(r)  # new, or its settings (prompt, seed, model, codec, ...) changed since
        elif prev["status"] == "ok" and present.get(prev["output"]) == prev["output_bytes"]:
            carried.append(prev)
        elif prev["status"] == "failed" and not cfg.retry_failed:
            carried.append(prev)
        else:
            todo.append(r)
    total_frames = sum(r["num_frames"] for r in todo)
    log(f"v2v: {len(manifest)} videos -> {len(planned_keys)} clips planned; {len(carried)} done or failed before, "
        f"{len(todo)} to render ({total_frames} frames)")
    if cfg.dry_run:
        return Summary(planned=len(planned_keys), ok=sum(r["status"] == "ok" for r in carried),
                       skipped=sum(r["status"] == "skipped" for r in new_rows),
                       failed=sum(r["status"] == "failed" for r in new_rows + carried), index="(dry run)")

    res = resources(cfg, ray.cluster_resources())
    _write_job_json(cfg, run_id, t_start, {"resources": res.__dict__, "planned_clips": len(planned_keys)})
    stamp = {"scheduler": None, "model": cfg.model, "run_id": run_id}
    for r in new_rows:
        r.update(stamp, finished_at=time.time())
    idx.write_progress(cfg.output, run_id, new_rows, [])

    # 3. Decode -> restyle -> encode, streaming. One clip per decode/encode task; batches in the actors.
    finished: list[dict] = []
    model_sha = None
    if todo:
        ds = _dataset(todo)
        # A ray_remote_args_fn keeps Ray Data from fusing decode into the restyle actors: fused, the GPU
        # would sit idle while its own actor decodes. Decode and encode stay CPU tasks that overlap it.
        # (Ray 2.60 marks ray_remote_args_fn deprecated for 2.64; the project pins 2.60.)
        cpu_task = {"num_cpus": res.cpus_per_task}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
            ds = ds.map_batches(decode, fn_kwargs={"resize": cfg.resize}, batch_size=1,
                                ray_remote_args_fn=lambda: cpu_task)
        memory = {"memory": int(cfg.actor_memory_gib * 2**30)} if cfg.actor_memory_gib else {}
        ds = ds.map_batches(RestyleActor, fn_constructor_args=(cfg, res),
                            batch_size=cfg.batch_size, compute=ray.data.ActorPoolStrategy(size=res.num_actors),
                            num_gpus=res.gpus_per_actor, num_cpus=res.cpus_per_actor, **memory)
        ds = ds.map_batches(encode, fn_kwargs={"cfg": cfg}, batch_size=1, num_cpus=res.cpus_per_task)
        pending: list[dict] = []
        last_flush = last_log = time.time()
        done_n = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            now = time.time()
            for r in rows:
                r.update(model=cfg.model, run_id=run_id, finished_at=now)
                model_sha = model_sha or r.get("model_sha256")
            pending += rows
            done_n += len(rows)
            if now - last_flush >= FLUSH_EVERY_S:
                idx.write_progress(cfg.output, run_id, pending, [])
                finished += pending
                pending = []
                last_flush = now
            if now - last_log >= LOG_EVERY_S or done_n == len(todo):
                last_log = now
                rate = 60 * done_n / max(1e-9, now - t_start)
                log(f"v2v: {done_n}/{len(todo)} clips rendered ({rate:.1f} clips/min)")
        if pending:
            idx.write_progress(cfg.output, run_id, pending, [])
            finished += pending

    # 4. The index: one row per planned clip, newest attempt wins; pass-through columns joined back.
    rows_by_key = {(r["id"], r["clip_index"]): r for r in carried + new_rows + finished}
    final_rows = [rows_by_key[k] for k in planned_keys if k in rows_by_key]
    extras = {name: dict(zip(manifest["id"].to_pylist(), manifest[name].to_pylist())) for name in extra_cols}
    for r in final_rows:
        for name in extra_cols:
            r[name] = extras[name].get(r["id"])
    table = idx.to_table(final_rows, extra_cols)
    idx.finalize(cfg.output, table)

    summary = Summary(planned=len(final_rows), index=join(cfg.output, idx.INDEX_FILE),
                      allowed_failures=cfg.allowed_failures(len(final_rows)))
    for r in final_rows:
        setattr(summary, r["status"], getattr(summary, r["status"]) + 1)
        if r["status"] == "failed" and len(summary.errors) < 20:
            summary.errors.append(f"{r['id']}/{r['clip_index']}: {r['error']}")
    rendered = [r for r in finished if r["status"] == "ok"]
    summary.rendered_now = len(rendered)
    summary.frames = sum(r["num_frames"] for r in rendered)

    # 5. Stitched videos, for ids whose clips are all ok.
    if cfg.stitch:
        _stitch(cfg, final_rows, log)

    summary.wall_s = time.time() - t_start
    _write_job_json(cfg, run_id, t_start, {"resources": res.__dict__, "planned_clips": len(planned_keys),
                                           "model": {"reference": cfg.model, "sha256": model_sha},
                                           "finished_at": time.time(),
                                           "summary": {k: getattr(summary, k) for k in
                                                       ("planned", "ok", "failed", "skipped", "rendered_now",
                                                        "frames", "wall_s")}})
    return summary


def _stitch(cfg: JobConfig, rows: list[dict], log) -> None:
    import ray

    from v2v.core.video import read_frames, stitch_frames, write_video

    by_id: dict[str, list[dict]] = {}
    for r in rows:
        if r["clip_index"] >= 0:
            by_id.setdefault(r["id"], []).append(r)

    @ray.remote(num_cpus=cfg.cpus_per_task)
    def stitch_one(rid: str, clips: list[dict]) -> str:
        parts = [(c["start_frame"], read_frames(join(cfg.output, c["output"]))) for c in clips]
        write_video(stitch_frames(parts), join(cfg.output, video_path(rid, cfg.codec)), clips[0]["fps"],
                    cfg.codec, cfg.crf, cfg.preset)
        return rid

    refs = [stitch_one.remote(rid, [c for c in clips if c["status"] == "ok"])
            for rid, clips in by_id.items() if all(c["status"] in ("ok", "skipped") for c in clips)
            and any(c["status"] == "ok" for c in clips)]
    done = ray.get(refs)
    log(f"v2v: stitched {len(done)} video(s) into {join(cfg.output, 'videos')}")
