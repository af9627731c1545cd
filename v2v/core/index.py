"""The Parquet index: one row per planned clip, what happened to it, and everything needed to redo it.

Layout under the output root:
  index/index.parquet      the index; replaced atomically at the end of each run (one file, so readers
                           never see two generations at once)
  _progress/<run>/*.parquet rows written while a run goes on; merged into the index at its end, and read
                           on resume if the run was killed (pyarrow, pandas and duckdb skip `_` folders)
`output` paths in the index are relative to the output root.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from v2v.core.storage import KEPT_FAILING, join, safe_name, url_to_fs, write_bytes_atomic
from v2v.core.video import CODECS

INDEX_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("clip_index", pa.int64()),  # -1: the video as a whole (it could not be read, so nothing was planned)
    ("video", pa.string()),
    ("start_frame", pa.int64()),
    ("num_frames", pa.int64()),
    # frames before start_frame the model saw with the clip, cut from its output (a last clip restyled whole)
    ("context_frames", pa.int64()),
    ("fps", pa.float64()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("seed", pa.int64()),
    ("strength", pa.float64()),
    ("num_inference_steps", pa.int64()),
    ("guidance_scale", pa.float64()),
    # the clip's adapters as the manifest gave them (JSON lists, "" for none), and as they ran: each file's sha256
    ("lora", pa.string()),
    ("embeddings", pa.string()),
    ("adapters", pa.string()),
    ("scheduler", pa.string()),
    ("model", pa.string()),
    ("model_sha256", pa.string()),  # sha256 over the model folder's files: exactly which weights ran
    # a hash of everything that changes the output's bytes (`work_key`): a rerun re-renders the clip where it differs
    ("work_key", pa.string()),
    ("status", pa.string()),  # ok | failed | skipped (planned but deliberately not rendered; see error)
    ("error", pa.string()),
    ("output", pa.string()),  # relative to the output root
    ("output_sha256", pa.string()),
    ("output_bytes", pa.int64()),
    ("decode_s", pa.float64()),
    ("restyle_s", pa.float64()),
    ("encode_s", pa.float64()),
    # quality signals (v2v.model.quality), null where the clip was not restyled: output motion over the source's,
    # SSIM of luminance against the source, and whether the output is (near-)constant
    ("temporal_flicker", pa.float64()),
    ("source_ssim", pa.float64()),
    ("blank", pa.bool_()),
    ("restyle_started_at", pa.float64()),  # unix times the clip entered and left the model
    ("restyle_finished_at", pa.float64()),
    ("worker", pa.string()),  # the actor that restyled it: host/pid[/gpuN]
    ("run_id", pa.string()),
    ("finished_at", pa.float64()),  # unix time the row was written
])
INDEX_FILE = "index/index.parquet"
PROGRESS_DIR = "_progress"


def clip_seed(row_seed: int | None, job_seed: int, rid: str, clip_index: int) -> int:
    """A row's seed seeds its first clip and clip k uses seed + k; else a stable 63-bit hash."""
    if row_seed is not None:
        return (int(row_seed) + clip_index) % 2**63
    digest = hashlib.sha256(f"v2v/{job_seed}/{rid}/{clip_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# A clip row's settings that change its output's bytes (with the job's in `work_key`).
WORK_FIELDS = ("video", "start_frame", "num_frames", "fps", "width", "height", "prompt", "negative_prompt", "seed",
               "strength", "num_inference_steps", "guidance_scale")


def work_key(clip: dict, job: dict) -> str:
    """A hash of everything that changes a clip's output bytes: the clip row's WORK_FIELDS, its source video's
    version (size and etag or mtime), its adapters and their files' versions, its own scheduler, and the job's `job`
    (model and its version, resolved dtype, scheduler, eta, clip_skip, resize, codec, crf, preset, audio). Speed
    switches and the batch size are not in it: they change nothing beyond float rounding."""
    key = {**{k: clip.get(k) for k in WORK_FIELDS}, "video_version": clip.get("video_version"), **job}
    if clip.get("lora") or clip.get("embeddings"):  # only then: a clip without adapters keeps the key it had
        key.update(lora=clip.get("lora"), embeddings=clip.get("embeddings"),
                   adapter_versions=clip.get("adapter_versions"))
    if clip.get("scheduler"):  # the row's own scheduler (else the job's, in `job`), likewise
        key.update(row_scheduler=clip["scheduler"])
    if clip.get("context_frames"):  # a last clip restyled with the frames before it, likewise
        key.update(context_frames=int(clip["context_frames"]))
    return hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:32]


def retried_by_a_rerun(row: dict) -> bool:
    """Whether a failed clip is rendered again by a plain rerun (without --retry-failed): where the clip itself was
    not the problem, because the store kept failing past its retries or every actor that held the clip stopped
    (`lost`, once: `lost_error`). Other failures (a video that cannot be decoded, an output that held NaN, a clip
    that broke the GPU three times, one lost twice) wait for --retry-failed, so that nightly reruns do not spend GPU
    time on them every night."""
    error = row.get("error") or ""
    return row.get("status") == "failed" and (error.startswith("lost: ") or f"{KEPT_FAILING} (" in error)


def lost_error(passes: int, before: dict | None) -> str:
    """The error of a clip that no actor returned in any of a run's `passes` passes. `before`: the clip's row from
    the run before, if any. A plain rerun retries a lost clip once; lost again there, the clip itself is the likely
    cause (one that kills its actor, say a decoder crash), and it waits for --retry-failed."""
    if before is not None and before.get("status") == "failed" and (before.get("error") or "").startswith("lost"):
        return (f"lost again: its actor stopped in each of {passes} passes, as in the run before; --retry-failed "
                "retries it")
    return f"lost: its actor stopped in each of {passes} passes; a rerun retries it"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _clean(v):
    """NaN stands for a missing value where batches went through pandas/numpy on the way: make it null."""
    return None if isinstance(v, float) and v != v else v


def to_table(rows: list[dict], extra_columns: list[str] = ()) -> pa.Table:
    """Rows (dicts) -> a table with the index schema, plus pass-through columns (types inferred)."""
    cols = {f.name: pa.array([_clean(r.get(f.name)) for r in rows], type=f.type) for f in INDEX_SCHEMA}
    table = pa.table(cols, schema=INDEX_SCHEMA)
    for name in extra_columns:
        table = table.append_column(name, pa.array([r.get(name) for r in rows]))
    return table


def _write_table(uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(uri, buf.getvalue())


def write_progress(output: str, run_id: str, rows: list[dict], extra_columns: list[str]) -> None:
    if rows:
        _write_table(join(output, PROGRESS_DIR, run_id, f"part-{uuid.uuid4().hex}.parquet"),
                     to_table(rows, extra_columns))


def _read_files(fs, paths: list[str]) -> list[pa.Table]:
    tables = []
    for p in paths:
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    return tables


def read_all(output: str) -> pa.Table | None:
    """The current index plus any progress rows of killed runs, newest row per clip last. None if empty."""
    fs, root = url_to_fs(output)
    root = root.rstrip("/")
    paths = []
    if fs.exists(f"{root}/{INDEX_FILE}"):
        paths.append(f"{root}/{INDEX_FILE}")
    if fs.exists(f"{root}/{PROGRESS_DIR}"):
        paths += sorted(p for p in fs.find(f"{root}/{PROGRESS_DIR}") if p.endswith(".parquet")
                        and not p.rsplit("/", 1)[-1].startswith("."))
    tables = _read_files(fs, paths)
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="permissive")
    return latest_per_clip(table)


def latest_per_clip(table: pa.Table) -> pa.Table:
    """Keep one row per (id, clip_index): an 'ok' row beats others; among equals, the newest wins."""
    import pyarrow.compute as pc

    rank = pc.if_else(pc.equal(table["status"], "ok"), 1, 0)
    table = table.append_column("_rank", rank)
    table = table.sort_by([("id", "ascending"), ("clip_index", "ascending"), ("_rank", "descending"),
                           ("finished_at", "descending")])
    ids, clips = table["id"].to_pylist(), table["clip_index"].to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or (ids[i], clips[i]) != (ids[i - 1], clips[i - 1])]
    return table.take(keep).drop_columns(["_rank"])


def finalize(output: str, table: pa.Table) -> None:
    """Replace index/index.parquet with `table` in one step, then drop the merged progress rows."""
    fs, root = url_to_fs(output)
    _write_table(join(output, INDEX_FILE), table.sort_by([("id", "ascending"), ("clip_index", "ascending")]))
    root = root.rstrip("/")
    if fs.exists(f"{root}/{PROGRESS_DIR}"):
        fs.rm(f"{root}/{PROGRESS_DIR}", recursive=True)


def clip_path(rid: str, clip_index: int, codec: str) -> str:
    """Output path of a clip, relative to the output root. `safe_name` keeps it inside the root."""
    return f"clips/{safe_name(rid, 120)}/{clip_index:05d}.{CODECS[codec].ext}"


def video_path(rid: str, codec: str) -> str:
    return f"videos/{safe_name(rid, 120)}.{CODECS[codec].ext}"
