"""The Ray Data job: manifest -> plan -> skip done -> decode -> restyle (actor pool) -> encode -> index.

This module is the only library code that touches Ray; `ray.init` itself happens in jobs/.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import platform
import time
import traceback
import warnings

import pyarrow as pa

from v2v.config import ConfigError, JobConfig
from v2v.core import index as idx
from v2v.core.index import video_path
from v2v.core.manifest import MAX_ERRORS_SHOWN, NORMALIZED, ManifestError, load_manifest
from v2v.core.plan import CLIP_COLUMNS as _PLAN_COLUMNS
from v2v.core.plan import plan_rows
from v2v.core.storage import check_writable, join, safe_name, url_to_fs, write_bytes_atomic
from v2v.job.report import Progress, Summary, dry_run_report, failure_causes, outliers, plural
from v2v.job.resources import Resources, reachable_resources, resources, wait_for_a_gpu
from v2v.job.stages import ClipWorker

logger = logging.getLogger("v2v")

FLUSH_EVERY_S = 2.0  # finished rows reach _progress/ this often: what a killed run loses at most
# Clips in flight on an actor that stopped (its node left, its process died) come back from no actor; the job
# restyles them again with the actors it has, up to this many passes in all, before recording them as lost.
RENDER_PASSES = 3
# A pass in which no clip comes back for this long is ended, and what it had not returned goes to the next pass
# with new actors: seen (rarely) on Ray 2.60, an actor running calls on several threads kept its finished calls'
# results, spinning, and the job waited for them forever. Longer than an actor's slowest start (a first compile
# of the zeroscope-size UNet: ~6 min on an H100).
STALL_S = 900.0


def versions() -> dict:
    import diffusers
    import ray
    import torch

    import v2v

    return {"v2v": v2v.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "ray": ray.__version__, "python": platform.python_version()}


def _present(output: str, folder: str) -> dict[str, int]:
    """Relative path -> size of every file under output/folder (one listing, not one request per file)."""
    fs, root = url_to_fs(output)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{folder}"):
        return {}
    found = fs.find(f"{root}/{folder}", detail=True)
    return {p[len(root) + 1 :]: int(info.get("size") or 0) for p, info in found.items()}


def job_key(cfg: JobConfig, res: Resources, model_version: str) -> dict:
    """The job's settings that change a clip's output bytes (core.index.work_key adds the clip's own)."""
    return {"model": cfg.model, "model_version": model_version, "dtype": res.dtype, "scheduler": cfg.scheduler,
            "eta": cfg.eta, "clip_skip": cfg.clip_skip, "resize": cfg.resize, "codec": cfg.codec, "crf": cfg.crf,
            "preset": cfg.preset, "audio": cfg.audio}


def _remove_replaced_outputs(output: str, prev_rows: dict, finished: list[dict]) -> None:
    """Files of earlier runs that a clip rendered now replaced at another path (another codec's extension): the
    index no longer names them."""
    fs, root = url_to_fs(output)
    for r in finished:
        old = (prev_rows.get((r["id"], r["clip_index"])) or {}).get("output")
        if r["status"] == "ok" and old and old != r["output"]:
            try:
                fs.rm(f"{root.rstrip('/')}/{old}")
            except FileNotFoundError:
                pass


def _remove_unlisted(output: str, rows: list[dict], listed: set[str]) -> None:
    """--drop-unlisted, after the index without them is written: the files of the rows the run did not plan. Of an id
    the manifest does not list: its clips, stitched video and preview strip (a name this run's ids also map to,
    safe_name, is left alone); of a listed id: each such clip's file."""
    from v2v.core.preview import preview_path

    fs, root = url_to_fs(output)
    root = root.rstrip("/")
    ours = {safe_name(i, 120) for i in listed}
    for r in rows:
        if r["id"] in listed and r.get("output"):
            try:
                fs.rm(f"{root}/{r['output']}")
            except FileNotFoundError:
                pass
    for rid in {r["id"] for r in rows if r["id"] not in listed}:
        name = safe_name(rid, 120)
        if name in ours:
            continue
        paths = [f"{root}/clips/{name}"] + fs.glob(f"{root}/videos/{name}.*") + [f"{root}/{preview_path(rid)}"]
        for path in paths:
            if fs.exists(path):
                fs.rm(path, recursive=True)


def _remove_partial_files(output: str) -> None:
    """Temporary files of writers killed mid-write (never at final paths). Safe: we hold the output's lease."""
    fs, root = url_to_fs(output)
    root = root.rstrip("/")
    for pattern in ("clips/*/.tmp-*", "videos/.tmp-*", "index/.tmp-*", "_progress/*/.tmp-*", ".tmp-*"):
        for path in fs.glob(f"{root}/{pattern}"):
            fs.rm(path)


def _plan(manifest: pa.Table, cfg: JobConfig, geometry, key: dict, frame_step: int) -> pa.Table:
    """Probe and plan every video in Ray tasks; returns one row per planned clip (and failed/skipped rows), each
    with its work key."""
    import ray.data

    def plan_batch(batch: pa.Table) -> pa.Table:
        rows = [r for row in batch.to_pylist() for r in plan_rows(row, cfg, geometry, key, frame_step)]
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
    """job.json: this run's settings, versions and model, and `runs`: every run's start, end and counts, oldest
    first (a resume appends; an interrupted run has no end)."""
    path = join(cfg.output, "job.json")
    fs, local = url_to_fs(path)
    runs = []
    try:
        runs = json.loads(fs.cat_file(local)).get("runs", [])
    except (FileNotFoundError, ValueError, AttributeError):  # a first run, or a file that is not ours: start over
        pass
    this = {"run_id": run_id, "started_at": started, "finished_at": extra.get("finished_at"),
            **{k: extra.get("summary", {}).get(k) for k in ("rendered_now", "ok", "failed", "skipped", "wall_s",
                                                             "unlisted", "dropped")}}
    runs = [r for r in runs if isinstance(r, dict) and r.get("run_id") != run_id] + [this]
    meta = {"run_id": run_id, "started_at": started, "settings": cfg.to_dict(), "versions": versions(),
            "model": {"reference": cfg.model}, **extra, "runs": runs}
    write_bytes_atomic(path, json.dumps(meta, indent=2, default=str).encode())


def preflight(cfg: JobConfig) -> pa.Table:
    """Everything that can be refused before Ray starts: the settings, the encoder's options, the model's folder,
    the output (a folder, not a file) and the manifest. Returns the checked manifest.

    Raises ConfigError / ModelError / ManifestError naming what to fix."""
    from v2v.core.video import VideoError, check_encoder
    from v2v.model.loading import check_model

    cfg.validate()
    try:  # the encoder opens only after a clip is restyled: refuse its settings now, not on every clip then
        check_encoder(cfg.codec, cfg.crf, cfg.preset)
    except VideoError as e:
        raise ConfigError(f"--crf/--preset: {e}") from None
    fs, path = url_to_fs(cfg.output)
    if fs.isfile(path):
        raise ConfigError(f"--output {cfg.output} is a file; give a folder (it holds clips/, videos/, index/)")
    family = check_model(cfg.model, cfg.scheduler)  # ModelError: a mistyped path fails here, not in every actor
    check_family_settings(cfg, family)
    manifest = load_manifest(cfg.manifest, cfg)
    check_family_rows(cfg.manifest, manifest, family)
    if not cfg.dry_run:  # last, once the rest holds (it makes a local output's folder); a dry run writes nothing
        try:
            check_writable(cfg.output)
        except OSError as e:
            raise ConfigError(f"--output {cfg.output}: cannot be written ({type(e).__name__}: {e})") from None
    return manifest


def check_family_settings(cfg: JobConfig, family) -> None:
    """The job's settings against what the model's family can run (v2v.model.loading.Family): clip geometry and
    the text encoder's options. Raises ConfigError naming the setting."""
    from v2v.core.plan import PlanError, PlanSettings
    from v2v.model.loading import model_geometry

    width, height, frames = cfg.clip_shape(model_geometry(cfg.model))
    for name, side in (("width", width), ("height", height)):
        if side % family.side:
            fix = max(family.side, round(side / family.side) * family.side)
            raise ConfigError(f"{name} {side}: a {family.name} model takes sides that are multiples of "
                              f"{family.side} (e.g. {fix})")
    try:
        PlanSettings(clip_frames=frames, frame_step=family.frame_step).validate()
    except PlanError as e:
        raise ConfigError(str(e)) from None  # (each message names clip_frames)
    if cfg.clip_skip is not None and family.text != "CLIP":
        raise ConfigError(f"clip_skip applies to CLIP text encoders; a {family.name} model's is {family.text}")


def check_family_rows(uri: str, manifest: pa.Table, family) -> None:
    """The manifest's rows against the model's family: their schedulers, and textual-inversion embeddings (for
    CLIP text encoders only). Raises ManifestError naming each row by id."""
    from v2v.model.loading import ModelError, check_scheduler

    errors = []
    for rid, scheduler, embeddings in zip(*(manifest[c].to_pylist() for c in ("id", "scheduler", "embeddings"))):
        try:
            if scheduler:
                check_scheduler(scheduler, family)
        except ModelError as e:
            errors.append(f"id {rid!r}: {e}")
        if embeddings and family.text != "CLIP":
            errors.append(f"id {rid!r}: embeddings: textual inversion applies to CLIP text encoders; a "
                          f"{family.name} model's is {family.text}")
    if errors:
        n = MAX_ERRORS_SHOWN
        shown = "\n  ".join(errors[:n]) + (f"\n  ... and {len(errors) - n} more" if len(errors) > n else "")
        raise ManifestError(f"manifest {uri}: {len(errors)} problem(s) with this model; nothing was run:\n  {shown}")


def run_job(cfg: JobConfig, log=print, live: bool = False, manifest: pa.Table | None = None) -> Summary:
    """Run the whole job on the connected Ray cluster. Bad inputs become failed rows; the summary says all.
    `manifest`: preflight(cfg)'s result where the caller checked before starting Ray; `live`: progress as one line
    rewritten in place (a terminal).

    Raises ManifestError / ConfigError / ModelError for unusable input (before anything runs) and LeaseError
    when another live job is writing the same output.
    """
    from v2v.core.lease import Lease

    if manifest is None:
        manifest = preflight(cfg)
    t_start = time.time()
    run_id = idx.new_run_id()
    if cfg.dry_run:
        return _run(cfg, manifest, run_id, t_start, log, live=live)
    with Lease(cfg.output, run_id, ttl_s=cfg.lease_ttl_s, heartbeat_s=cfg.lease_ttl_s / 4, log=log) as lease:
        if lease.took_over:
            log(f"v2v: took over the lease of run {lease.took_over.get('run_id')}, whose job had stopped")
        return _run(cfg, manifest, run_id, t_start, log, lease, live=live)


class RestyleActor(ClipWorker):
    """The restyle stage as a Ray actor, its log lines kept. Where its start went, what each stored compiled part
    did and what it recovered from are INFO records of the `v2v` loggers, which a worker process (no handler on
    its root logger) would drop: they go to the worker's stderr, which Ray keeps in the worker's log file and shows
    in the driver's output. A job that configures logging itself (`ray.LoggingConfig`) keeps its own."""

    def __init__(self, cfg: JobConfig, res: Resources, run_id: str = ""):
        # The loaders' progress bars, one per actor start, interleaved in the driver's output, say nothing here.
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        if not logging.getLogger().handlers and not logger.handlers:  # logger: the `v2v` loggers' parent
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        super().__init__(cfg, res)
        import ray

        self.restyle.worker += f"/node-{ray.get_runtime_context().get_node_id()[:12]}"  # which node of a cluster
        from v2v.job.metrics import ActorMetrics

        self.metrics = ActorMetrics(self.restyle.worker, run_id)

    def __call__(self, batch: dict):
        # Ray Data ignores a failed block here (its max_errored_blocks is unlimited in _render, so that the clips of
        # an actor that stopped are restyled again): an exception the stages did not turn into failed rows is a
        # programmer error, which must stop the job. It travels as a block of one `fatal` column that the driver
        # raises.
        try:
            yield from super().__call__(batch)
        except Exception:  # noqa: BLE001 - raised again in the driver
            yield {"fatal": [traceback.format_exc()]}


def _run(cfg: JobConfig, manifest: pa.Table, run_id: str, t_start: float, log, lease=None,
         live: bool = False) -> Summary:
    import ray

    from v2v.model.loading import model_family, model_geometry, model_version

    extra_cols = [c for c in manifest.column_names if c not in NORMALIZED]
    geometry = model_geometry(cfg.model)
    res = resources(cfg, ray.cluster_resources(), reachable_resources())

    # 1. Plan every video (Ray tasks: probing reads the files), each clip with the key of its work.
    plan = _plan(manifest, cfg, geometry, job_key(cfg, res, model_version(cfg.model)),
                 model_family(cfg.model).frame_step)
    planned_keys = list(zip(plan["id"].to_pylist(), plan["clip_index"].to_pylist()))

    if not cfg.dry_run:
        _remove_partial_files(cfg.output)

    # 2. Skip clips already done: an 'ok' row of the same work key whose output is present at its size. A clip
    # whose key changed (settings, source video, model) is rendered again, in place.
    previous = idx.read_all(cfg.output)
    prev_rows = {}
    if previous is not None:
        for r in previous.to_pylist():
            prev_rows[(r["id"], r["clip_index"])] = r
    present = _present(cfg.output, "clips") if prev_rows else {}
    plan_rows_list = plan.to_pylist()
    todo, carried, new_rows = [], [], []
    for key, r in zip(planned_keys, plan_rows_list):
        prev = prev_rows.get(key)
        if r["status"] != "planned":
            new_rows.append(r)  # failed probe / skipped remainder: recorded now
        elif prev is None or prev.get("work_key") != r["work_key"]:
            todo.append(r)  # new, or what its output depends on (settings, video, model) changed since
        elif prev["status"] == "ok" and present.get(prev["output"]) == prev["output_bytes"]:
            carried.append(prev)
        elif prev["status"] == "failed" and not cfg.retry_failed and not idx.retried_by_a_rerun(prev):
            carried.append(prev)
        else:
            todo.append(r)
    total_frames = sum(r["num_frames"] for r in todo)
    log(f"v2v: {plural(len(manifest), 'video')} -> {plural(len(planned_keys), 'clip')} planned; {len(carried)} done or "
        f"failed before, {len(todo)} to render ({total_frames} frames)")
    # Rows of earlier runs that this run does not plan stay in the index as they were: their files are still there,
    # and a later run that plans them again skips them. They are every row of a video the manifest does not list
    # (another night's videos, or a run of a few rows into a shared output), and a listed video's restyled clips that
    # its plan no longer holds (a smaller --max-clips or end_s; the video unreadable this time: a store that timed
    # out). Failed and skipped rows of a listed video's earlier plan go. The run's counts, exit code, stitching and
    # previews are its plan's alone.
    listed = set(manifest["id"].to_pylist())
    planned = set(planned_keys)
    unlisted = [r for k, r in prev_rows.items() if k not in planned
                and (r["id"] not in listed or r["status"] == "ok" and r["clip_index"] >= 0)]
    if unlisted:
        what = (("would remove" if cfg.dry_run else "removes") + " the rows and files of") if cfg.drop_unlisted \
            else "keeps"
        log(f"v2v: the index {what} {plural(len(unlisted), 'clip')} of "
            f"{plural(len({r['id'] for r in unlisted}), 'video')} that this run does not plan (earlier runs')"
            + ("" if cfg.drop_unlisted else "; --drop-unlisted removes them"))
    if cfg.dry_run:
        dry_run_report(cfg, plan_rows_list, todo, log)
        return Summary(planned=len(planned_keys), ok=sum(r["status"] == "ok" for r in carried),
                       skipped=sum(r["status"] == "skipped" for r in new_rows),
                       failed=sum(r["status"] == "failed" for r in new_rows + carried), index="(dry run)",
                       dry_run=True)

    _write_job_json(cfg, run_id, t_start, {"resources": dataclasses.asdict(res), "planned_clips": len(planned_keys)})
    stamp = {"scheduler": None, "model": cfg.model, "run_id": run_id}
    for r in new_rows:
        r.update(stamp, finished_at=time.time())
    idx.write_progress(cfg.output, run_id, new_rows, [])

    # 3. Decode -> restyle -> encode, streaming, a batch at a time in the restyle actors (stages.ClipWorker), whose
    # pool grows as GPU nodes join. The clips in flight on a node that leaves come back from no actor: they are
    # restyled again in a further pass, by the actors still up.
    finished, model_sha = [], None
    progress = Progress(len(todo), log, live)
    for attempt in range(1, RENDER_PASSES + 1):
        done = {(r["id"], r["clip_index"]) for r in finished}
        again = [r for r in todo if (r["id"], r["clip_index"]) not in done]
        if not again:
            break
        if attempt > 1:
            log(f"v2v: {len(again)} clip(s) came back from no actor (an actor stopped or its node left); restyling "
                f"them again (pass {attempt} of {RENDER_PASSES})")
        wait_for_a_gpu(cfg, res, log)
        rows, sha = _render(cfg, res, again, run_id, progress)
        finished += rows
        model_sha = model_sha or sha

    # 4. The index: one row per planned clip, newest attempt wins; pass-through columns joined back.
    rows_by_key = {(r["id"], r["clip_index"]): r for r in carried + new_rows + finished}
    lost = [r for r in todo if (r["id"], r["clip_index"]) not in rows_by_key]
    for r in lost:  # every planned clip ends with a row: one that no stage returned is a failure, named so
        rows_by_key[(r["id"], r["clip_index"])] = {
            **r, "status": "failed", "run_id": run_id, "finished_at": time.time(), "model": cfg.model,
            "error": idx.lost_error(RENDER_PASSES, prev_rows.get((r["id"], r["clip_index"])))}
    final_rows = [rows_by_key[k] for k in planned_keys]
    extras = {name: dict(zip(manifest["id"].to_pylist(), manifest[name].to_pylist())) for name in extra_cols}
    for r in final_rows:
        for name in extra_cols:
            r[name] = extras[name].get(r["id"])
    kept = [] if cfg.drop_unlisted else unlisted
    # the kept rows keep their own pass-through columns, null in this manifest's rows
    old_cols = [c for c in (previous.column_names if previous is not None else []) if c not in idx.INDEX_SCHEMA.names
                and c not in extra_cols and any(r.get(c) is not None for r in kept)]
    table = idx.to_table(final_rows + kept, extra_cols + old_cols)
    if lease is not None:
        lease.check()  # fencing: a job that lost its lease to a newer one leaves that one's index alone
    idx.finalize(cfg.output, table)
    _remove_replaced_outputs(cfg.output, prev_rows, finished)
    if cfg.drop_unlisted:
        _remove_unlisted(cfg.output, unlisted, listed)

    summary = Summary(planned=len(final_rows), index=join(cfg.output, idx.INDEX_FILE),
                      allowed_failures=cfg.allowed_failures(len(final_rows)), unlisted=len(unlisted),
                      dropped=cfg.drop_unlisted)
    for r in final_rows:
        setattr(summary, r["status"], getattr(summary, r["status"]) + 1)
    summary.causes = failure_causes(final_rows)
    # whole videos that could not be read are read again by every run; clips the store or the cluster failed, too
    summary.retried = sum(r["status"] == "failed" and (r["clip_index"] < 0 or idx.retried_by_a_rerun(r))
                          for r in final_rows)
    rendered = [r for r in finished if r["status"] == "ok"]
    summary.outliers = outliers(final_rows)
    summary.rendered_now = len(rendered)
    summary.frames = sum(r["num_frames"] for r in rendered)

    # 5. Stitched videos, for ids whose clips are all ok. A video that cannot be stitched is reported, not raised:
    # the index is written by now.
    if cfg.stitch:
        summary.stitch_failed = _stitch(cfg, final_rows, {r["id"] for r in rendered}, log)

    # 6. Previews: a strip per video and a page of them all.
    if cfg.preview:
        summary.preview = join(cfg.output, _previews(cfg, final_rows, {r["id"] for r in rendered}, log))

    summary.wall_s = time.time() - t_start
    _write_job_json(cfg, run_id, t_start, {"resources": dataclasses.asdict(res), "planned_clips": len(planned_keys),
                                           "model": {"reference": cfg.model, "sha256": model_sha},
                                           "finished_at": time.time(),
                                           "summary": {k: getattr(summary, k) for k in
                                                       ("planned", "ok", "failed", "skipped", "rendered_now",
                                                        "frames", "wall_s", "stitch_failed", "unlisted",
                                                        "dropped")},
                                           "failures": [{"count": n, "cause": cause, "example": example}
                                                        for n, cause, example in summary.causes]})
    return summary



class Interrupted(BaseException):
    """The job was stopped (Ctrl-C, SIGTERM): `saved` clips of this run are in _progress/, a rerun resumes."""

    def __init__(self, signum: int, saved: int = 0):
        super().__init__(signum, saved)
        self.signum, self.saved = signum, saved


class _StoppedActorLine(logging.Filter):
    """Ray Data logs each block of an actor that stopped as an error with its traceback, then goes on without it
    (max_errored_blocks): the job restyles those clips again, so one warning line per actor says so instead."""

    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        from ray.exceptions import RayActorError

        if record.exc_info and isinstance(record.exc_info[1], RayActorError):
            e = record.exc_info[1]
            if e.actor_id is not None and e.actor_id in self.seen:
                return False
            self.seen.add(e.actor_id)
            record.msg = (f"v2v: a restyle actor stopped ({type(e).__name__}); the clips it had in flight or "
                          "queued are restyled again after this pass")
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _render(cfg: JobConfig, res: Resources, todo: list[dict], run_id: str, progress: Progress):
    """Decode -> restyle -> encode the `todo` clip rows in the restyle actors; every written clip's row reaches
    _progress/ within FLUSH_EVERY_S, and the rows finished before an interrupt or an error are flushed before it
    propagates. A clip in flight on an actor that stops (its node preempted, its process killed) is not waited for:
    its block fails, Ray Data goes on without it, and it is missing from the rows returned. (With Ray Data's
    defaults the block would be retried on that actor only, once it restarts: on a cluster that gets no node back
    the job would wait forever.)
    Returns (finished rows, the model's sha256 as the actors saw it)."""
    import ray.data
    from ray.data.exceptions import ExecutionTimeoutError

    # One block per actor call (its rows come back one by one, as each clip is written)
    call = ClipWorker.call_size(cfg.batch_size, len(todo), res.max_actors)
    # Clips of one LoRA set next to each other (the manifest's order kept within a set): an actor merges a set into
    # its weights once per run of such clips, and lets its clips in flight drain at each change of set (Restyle).
    # In the manifest's order, a night of 30 interleaved styles would drain the batch at nearly every clip.
    todo = sorted(todo, key=lambda r: r.get("lora") or "")
    ds = _dataset(todo, rows_per_block=call)
    memory = {"memory": int(cfg.actor_memory_gib * 2**30)} if cfg.actor_memory_gib else {}
    pool = ray.data.ActorPoolStrategy(min_size=1, initial_size=res.initial_actors, max_size=res.max_actors,
                                      max_concurrent_calls_per_actor=ClipWorker.CALLS_AT_ONCE,
                                      # one call at a time (CALLS_AT_ONCE is 1): with calls on several threads,
                                      # actors on Ray 2.60 were seen holding finished calls' results forever
                                      enable_true_multi_threading=False)
    # An actor that stops is not restarted (Ray would keep what it had in flight for it): the pool starts a new one
    # where one fits, and its clips are redone in the next pass. A GPU failure exits an actor on purpose (stages).
    with warnings.catch_warnings():  # Ray 2.60 deprecates these as `ray_remote_args` but names no replacement yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(RestyleActor, fn_constructor_args=(cfg, res, run_id), batch_size=call,
                            compute=pool,
                            num_gpus=res.gpus_per_actor, num_cpus=res.cpus_per_actor, max_restarts=0,
                            max_task_retries=0, **memory)
    ds.context.max_errored_blocks = -1  # a failed block is a stopped actor's: RestyleActor returns any other error
    # Each row an actor yields (a clip written) is its own block, sent to the driver at once (a block of this op
    # otherwise collects a whole call's rows): small rows, and a run killed loses only the clips in flight.
    ds.context.target_max_block_size = 1
    ds.context.execution_no_progress_timeout_s = STALL_S
    ray_data_log = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    if not any(isinstance(f, _StoppedActorLine) for f in ray_data_log.filters):
        ray_data_log.addFilter(_StoppedActorLine())
    finished: list[dict] = []
    pending: list[dict] = []
    model_sha = None

    def flush() -> None:
        nonlocal pending
        if pending:
            idx.write_progress(cfg.output, run_id, pending, [])
            finished.extend(pending)
            pending = []

    last_flush = time.time()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if "fatal" in batch.column_names:
                raise RuntimeError(f"a restyle actor failed:\n{batch.column('fatal')[0].as_py()}")
            rows = batch.to_pylist()
            now = time.time()
            for r in rows:
                r.update(model=cfg.model, run_id=run_id, finished_at=now)
                model_sha = model_sha or r.get("model_sha256")
            pending += rows
            if now - last_flush >= FLUSH_EVERY_S:
                flush()
                last_flush = now
            progress.add(rows)
    except ExecutionTimeoutError:  # a stalled pass: what it did not return is restyled in the next one
        progress.log(f"v2v: no clip came back for {STALL_S:.0f} s; ending this pass and its actors")
    except BaseException as e:  # interrupted, or a stage failed the dataset: keep what is finished
        flush()
        if isinstance(e, (Interrupted, KeyboardInterrupt)):
            saved = sum(r["status"] == "ok" for r in finished)
            raise Interrupted(getattr(e, "signum", 2), saved) from None
        raise
    flush()
    # This pass's actors stop once nothing refers to them, and the executor's references sit in cycles: collect
    # them now, or one still waiting for a place would hold on to it until Python's collector ran on its own.
    del ds
    gc.collect()
    return finished, model_sha

def _previews(cfg: JobConfig, rows: list[dict], rendered_ids: set[str], log) -> str:
    """previews/<id>.jpg for every video with an ok clip (again where a clip was rendered in this run), in Ray
    tasks; then previews/index.html. A strip that cannot be made is left out of the page (and said so), not
    raised. Returns the page's path relative to the output."""
    import ray
    from av import FFmpegError

    from v2v.core.preview import preview_path, write_page, write_strip
    from v2v.core.video import VideoError

    by_id: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            by_id.setdefault(r["id"], []).append(r)
    present = _present(cfg.output, "previews")

    @ray.remote(num_cpus=cfg.cpus_per_task)
    def strip_one(rid: str, clips: list[dict]) -> tuple[str, str | None, str | None]:
        try:
            return rid, write_strip(cfg.output, rid, clips, cfg.preview_frames, cfg.resize), None
        except (OSError, VideoError, ValueError, FFmpegError) as e:
            return rid, None, f"{type(e).__name__}: {e}"

    todo = [rid for rid in by_id if rid in rendered_ids or preview_path(rid) not in present]
    strips = {rid: preview_path(rid) for rid in by_id if rid not in todo}
    failed = {}
    for rid, rel, why in ray.get([strip_one.remote(rid, by_id[rid]) for rid in todo]):
        if rel:
            strips[rid] = rel
        else:
            failed[rid] = why
    page = write_page(cfg.output, rows, strips, f"v2v: {cfg.manifest}")
    log(f"v2v: previews of {plural(len(strips), 'video')} in {join(cfg.output, page)}"
        + (f"; {len(failed)} could not be made ({next(iter(failed.items()))})" if failed else ""))
    return page


def _stitch(cfg: JobConfig, rows: list[dict], rendered_ids: set[str], log) -> dict[str, str]:
    """Write videos/<id> for every id whose clips are all ok (skipped remainders aside) and that has a clip
    rendered in this run or no video yet: a resume that changed nothing stitches nothing. Returns {id: why} of the
    videos that could not be stitched (a clip file unreadable, the store refusing the write)."""
    import ray
    from av import FFmpegError

    from v2v.core.video import VideoError, read_frames, stitch_frames, write_video

    by_id: dict[str, list[dict]] = {}
    for r in rows:
        if r["clip_index"] >= 0:
            by_id.setdefault(r["id"], []).append(r)

    @ray.remote(num_cpus=cfg.cpus_per_task)
    def stitch_one(rid: str, clips: list[dict]) -> tuple[str, str | None]:
        try:
            parts = [(c["start_frame"], read_frames(join(cfg.output, c["output"]))) for c in clips]
            frames = stitch_frames(parts)
            first = min(clips, key=lambda c: c["start_frame"])
            # With --audio, the source's audio from the first clip's start, for as long as the stitched video runs
            # (clips that leave gaps between them, --clip-stride > --clip-frames, play shorter than their span).
            span = (float(first["start_s"]), float(first["start_s"]) + len(frames) / float(first["fps"]))
            write_video(frames, join(cfg.output, video_path(rid, cfg.codec)), first["fps"], cfg.codec, cfg.crf,
                        cfg.preset, audio_from=first["video"] if cfg.audio else None, audio_span=span)
        except (OSError, VideoError, ValueError, FFmpegError) as e:
            return rid, f"{type(e).__name__}: {e}"
        return rid, None

    complete = [rid for rid, clips in by_id.items() if all(c["status"] in ("ok", "skipped") for c in clips)
                and any(c["status"] == "ok" for c in clips)]
    present = _present(cfg.output, "videos")
    todo = [rid for rid in complete if rid in rendered_ids or video_path(rid, cfg.codec) not in present]
    refs = [stitch_one.remote(rid, [c for c in by_id[rid] if c["status"] == "ok"]) for rid in todo]
    done = ray.get(refs)
    failed = {rid: why for rid, why in done if why is not None}
    unchanged = len(complete) - len(todo)
    log(f"v2v: stitched {plural(len(done) - len(failed), 'video')} into {join(cfg.output, 'videos')}"
        + (f"; {unchanged} unchanged" if unchanged else "")
        + (f"; {len(failed)} could not be stitched" if failed else ""))
    return failed
