"""Read and check a manifest (Parquet, CSV, JSON Lines; file, folder or glob; any fsspec filesystem).

Every problem is found before any model loads and reported at once, row by row. The result is one Arrow
table with normalized columns (see NORMALIZED) plus the user's pass-through columns.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import numbers
import posixpath

import pyarrow as pa

from v2v.config import SCHEDULERS, denoising_steps, scheduler_class_name
from v2v.core.storage import safe_name, url_to_fs

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json",
           ".json": "json"}

# Column -> (Arrow type, description). `video` and `prompt` are required (prompt unless a default is given).
NORMALIZED = {
    "id": pa.string(),
    "video": pa.string(),
    "prompt": pa.string(),
    "negative_prompt": pa.string(),
    "seed": pa.int64(),  # null: derived from (job seed, id, clip index)
    "strength": pa.float64(),
    "num_inference_steps": pa.int64(),
    "guidance_scale": pa.float64(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    # JSON lists ("" for none): [{"uri": ..., "scale": ...}] LoRA files, [{"uri": ..., "token": ...}] embeddings
    "lora": pa.string(),
    "embeddings": pa.string(),
    "scheduler": pa.string(),  # a diffusers class name (from any of config.SCHEDULERS' names); null: the job's
}
ADAPTER_FIELDS = {"lora": ("scale", float, 1.0), "embeddings": ("token", str, None)}
MAX_PROMPT_CHARS = 10_000  # far past the text encoder's 77 tokens; longer is surely not a prompt
MAX_ERRORS_SHOWN = 20

logger = logging.getLogger(__name__)


class ManifestError(ValueError):
    """The manifest cannot be used; the message lists the offending rows and fields."""


def _files(uri: str) -> tuple[object, list[str], str | None]:
    """(filesystem, the manifest's files as URIs, the folder they were found under where `uri` is one)."""
    fs, path = url_to_fs(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    folder = None
    if any(ch in path for ch in "*?["):
        files = sorted(fs.glob(path))
    elif fs.isdir(path):
        folder = path.rstrip("/")
        files = sorted(p for p in fs.find(path) if posixpath.splitext(p)[1].lower() in FORMATS
                       and not posixpath.basename(p).startswith((".", "_")))
    elif fs.exists(path):
        files = [path]
    else:
        raise ManifestError(f"manifest {uri}: not found")
    if not files:
        raise ManifestError(f"manifest {uri}: no .parquet, .csv or .jsonl files there")
    unknown = [f for f in files if posixpath.splitext(f)[1].lower() not in FORMATS]
    if unknown:
        raise ManifestError(f"manifest {unknown[0]}: unknown format; use .parquet, .csv or .jsonl")
    return fs, [f if protocol in ("file", "local") else f"{protocol}://{f}" for f in files], folder


def _partitions(file: str, folder: str | None) -> dict[str, str | None]:
    """The `key=value` folders between a manifest folder and one of its files (a Hive-style partitioned dataset, as
    Spark or pyarrow write one: `style=ink/part-0.parquet`), as {key: value}; values unescaped, Hive's
    placeholder for null as None."""
    from urllib.parse import unquote

    if folder is None:
        return {}
    _, path = url_to_fs(file)
    parts = posixpath.relpath(posixpath.dirname(path), folder).split("/")
    found = (p.split("=", 1) for p in parts if "=" in p and not p.startswith("="))
    return {unquote(k): None if v == "__HIVE_DEFAULT_PARTITION__" else unquote(v) for k, v in found}


def _read_one(fs, uri: str) -> tuple[pa.Table, list[str]]:
    """The file's rows, and where each is as its user sees it: "m.csv line 5" (the header is line 1),
    "m.jsonl line 3", "m.parquet row 2" (counted from 0, as pandas does)."""
    import io

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    _, path = url_to_fs(uri)
    name = posixpath.basename(path)
    kind = FORMATS[posixpath.splitext(path)[1].lower()]
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
        if kind == "parquet":
            table = pq.read_table(io.BytesIO(data))
            return table, [f"{name} row {i}" for i in range(table.num_rows)]
        if kind == "csv":
            # Types are inferred; values are checked below with row numbers either way.
            table = pcsv.read_csv(io.BytesIO(data), convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
            return table, [f"{name} line {n}" for n in _csv_record_lines(data)[:table.num_rows]]
        if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):  # one JSON array of row objects, not JSON Lines
            return _json_array(data, name)
        return _json_lines(data, name)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"manifest {uri}: cannot be read as {kind} ({e})") from e


def _json_array(data: bytes, name: str) -> tuple[pa.Table, list[str]]:
    """A .json file holding one array of row objects; its rows are named by their place in it ("m.json [0]")."""
    rows = json.loads(data.decode("utf-8-sig"))
    if not isinstance(rows, list):
        raise ValueError("not an array of row objects")
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
    if bad:
        raise ValueError(f"item(s) {bad[:MAX_ERRORS_SHOWN]} are not objects; each row is one {{\"video\": ..., ...}}")
    return _rows_table(rows), [f"{name} [{i}]" for i in range(len(rows))]


def _json_lines(data: bytes, name: str) -> tuple[pa.Table, list[str]]:
    """A JSON Lines file, one row object a line (blank lines skipped), each line parsed on its own: a line that is
    not a JSON object is named by its number, and integers stay exact (pyarrow's reader would make a column that
    mixes 2**63 - 1 and 3.0 floats, and refuses a column whose type changes between lines)."""
    rows, places, bad = [], [], []
    for n, line in enumerate(data.decode("utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            bad.append(f"line {n}: a {type(row).__name__}, not an object; each line is one {{\"video\": ..., ...}}")
            continue
        rows.append(row)
        places.append(f"{name} line {n}")
    if bad:
        more = f"; and {len(bad) - MAX_ERRORS_SHOWN} more" if len(bad) > MAX_ERRORS_SHOWN else ""
        raise ValueError("; ".join(bad[:MAX_ERRORS_SHOWN]) + more)
    return _rows_table(rows), places


def _rows_table(rows: list[dict]) -> pa.Table:
    """Row objects (from JSON) as a table: every row's keys are columns; a column's values keep their JSON types,
    integers exact; a column of mixed types is JSON text, checked row by row."""
    columns = list(dict.fromkeys(k for r in rows for k in r))  # every row's keys (from_pylist takes the first's)
    for col in columns:
        values = [r[col] for r in rows if r.get(col) is not None]
        kinds = {type(v) for v in values}
        if kinds == {int, float} and all(v.is_integer() for v in values if isinstance(v, float)):
            for r in rows:  # 3.0 beside 2**63 - 1: integers, not floats that would round the large one
                if isinstance(r.get(col), float):
                    r[col] = int(r[col])
        elif len(kinds) > 1 and not (kinds == {int, float} and all(abs(v) <= 2**53 for v in values)):
            for r in rows:  # mixed types (or ints past a float's 53 bits beside fractions): text, checked per row
                if r.get(col) is not None and not isinstance(r[col], str):
                    r[col] = json.dumps(r[col])
    return pa.table({col: _column([r.get(col) for r in rows]) for col in columns})


def _column(values: list) -> pa.Array:
    """JSON values as one column; where Arrow cannot hold them as they are (an integer past int64, lists of mixed
    items), as JSON text, which the row checks then refuse or pass through."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def _csv_record_lines(data: bytes) -> list[int]:
    """The line each CSV record after the header starts on (a quoted value may span lines)."""
    import csv

    reader = csv.reader(_text(data))
    starts, line = [], 1
    for k, _ in enumerate(reader):
        if k:
            starts.append(line)
        line = reader.line_num + 1
    return starts


def _text(data: bytes):
    import io

    return io.StringIO(data.decode("utf-8", errors="replace"), newline="")


def read_manifest(uri: str) -> tuple[pa.Table, list[str], list[str]]:
    """All rows of all manifest files; for each row the folder its relative video paths resolve against, and
    where it is (file and line or row) for messages."""
    fs, files, folder = _files(uri)
    tables, bases, places = [], [], []
    for f in files:
        t, where = _read_one(fs, f)
        for key, value in _partitions(f, folder).items():  # a column of every row, unless the file has its own
            if key not in t.column_names:
                t = t.append_column(key, pa.array([value] * t.num_rows, pa.string()))
        tables.append(t)
        bases += [posixpath.dirname(f)] * t.num_rows
        places += where
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ManifestError(f"manifest {uri}: its files disagree on column types ({e})") from e
    return table, bases, places


def _resolve_video(video: str, base: str) -> str:
    if "://" in video or posixpath.isabs(video):
        return video
    return posixpath.normpath(posixpath.join(base, video)) if "://" not in base else base + "/" + video


def _as_float(v):
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return None
    if isinstance(v, bool):
        raise ValueError("a boolean")
    return float(v)


def _as_int(v):
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return None
    if isinstance(v, bool):
        raise ValueError("a boolean")
    if isinstance(v, numbers.Integral):  # exact: seeds run up to 2**63, past a float's 53 bits
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass  # "3.0", "1e3"
    f = float(v)
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"not an integer ({v!r})")
    return int(f)


def adapter_list(value, kind: str, base: str) -> str:
    """A row's `lora` or `embeddings` (a list, or its JSON text as CSV holds it) -> canonical JSON ("" for none),
    relative URIs resolved against the manifest's folder. Raises ValueError saying what is wrong."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON ({e})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("not a list of {\"uri\": ...} objects")
    field_name, kind_type, default = ADAPTER_FIELDS[kind]
    items = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("uri"), str) or not item["uri"].strip():
            raise ValueError(f"each item needs a \"uri\" string, got {item!r}")
        unknown = set(item) - {"uri", field_name}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; an item has \"uri\" and \"{field_name}\"")
        v = item.get(field_name, default)
        if kind_type is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"\"scale\" must be a finite number, got {v!r}")
            v = float(v)
        elif not isinstance(v, str) or not v.strip() or " " in v:
            raise ValueError(f"\"token\" must be one word, such as \"<ink>\", got {v!r}")
        items.append({"uri": _resolve_video(item["uri"].strip(), base), field_name: v})
    return json.dumps(items, sort_keys=True) if items else ""


def _default_id(video: str, content: tuple) -> str:
    stem = safe_name(posixpath.splitext(posixpath.basename(video))[0], 40)
    return f"{stem}-{hashlib.sha256(repr(content).encode()).hexdigest()[:8]}"


def load_manifest(uri: str, cfg) -> pa.Table:
    """Read, check and normalize the manifest against the job's defaults. Raises ManifestError."""
    from v2v.core.index import INDEX_SCHEMA

    raw, bases, places = read_manifest(uri)
    cols = {name: raw.column(name).to_pylist() for name in raw.column_names}
    n = raw.num_rows
    errors: list[str] = []
    if n == 0:
        raise ManifestError(f"manifest {uri}: no rows")
    if "video" not in cols:
        raise ManifestError(f"manifest {uri}: required column 'video' is missing (columns: {raw.column_names})")
    if "prompt" not in cols and cfg.prompt is None:
        raise ManifestError(f"manifest {uri}: column 'prompt' is missing and no default prompt (--prompt) is set")
    reserved = sorted(set(cols) & set(INDEX_SCHEMA.names) - set(NORMALIZED))
    if reserved:
        raise ManifestError(f"manifest {uri}: column(s) {reserved} are written by v2v into the index; rename them")

    for name in raw.column_names:
        close = [] if name in NORMALIZED else difflib.get_close_matches(name.lower(), list(NORMALIZED), n=1,
                                                                          cutoff=0.75)
        if close:
            message = (f"manifest {uri}: column {name!r} is not used; did you mean {close[0]!r}? (it is passed "
                       "through to the index as it is)")
            if cfg.strict_columns:
                raise ManifestError(message.replace(" (it is passed through to the index as it is)",
                                                    " (--strict-columns)"))
            logger.warning("v2v: %s", message)

    out: dict[str, list] = {k: [] for k in NORMALIZED}
    defaults = {"negative_prompt": cfg.negative_prompt, "strength": cfg.strength,
                "num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    seen_content: dict[tuple, int] = {}
    row_ids: list[tuple[int, str]] = []  # (row number, id) of every row whose id is known
    for i in range(n):
        row = {k: cols[k][i] for k in cols}
        where = places[i] + (f" (id {row['id']!r})" if row.get("id") not in (None, "") else "")
        bad = []
        video = row.get("video")
        if not isinstance(video, str) or not video.strip():
            bad.append("video: missing or not a string")
            video = ""
        prompt = row.get("prompt")
        if prompt is None or (isinstance(prompt, float) and math.isnan(prompt)):
            prompt = cfg.prompt
        if prompt is None:
            bad.append("prompt: missing and no default prompt")
        elif not isinstance(prompt, str):
            bad.append(f"prompt: not a string ({type(prompt).__name__})")
        elif len(prompt) > MAX_PROMPT_CHARS:
            bad.append(f"prompt: {len(prompt)} characters (at most {MAX_PROMPT_CHARS})")
        neg = row.get("negative_prompt")
        neg = defaults["negative_prompt"] if neg is None else neg
        if not isinstance(neg, str) or len(neg) > MAX_PROMPT_CHARS:
            bad.append("negative_prompt: not a string of at most 10000 characters")
        vals, own = {}, {}  # the values the row runs with; those it gave itself (None where it left them empty)
        for name, conv, ok, want in [
            ("seed", _as_int, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
            ("strength", _as_float, lambda v: 0 < v <= 1, "in (0, 1]"),
            ("num_inference_steps", _as_int, lambda v: 1 <= v <= 10_000, "in [1, 10000]"),
            ("guidance_scale", _as_float, lambda v: math.isfinite(v) and -1e4 < v < 1e4, "finite, in (-1e4, 1e4)"),
            ("start_s", _as_float, lambda v: 0 <= v < 1e9, ">= 0"),
            ("end_s", _as_float, lambda v: 0 < v < 1e9, "> 0"),
        ]:
            try:
                v = conv(row.get(name))
            except (TypeError, ValueError) as e:
                kind = "an integer" if conv is _as_int else "a number"
                bad.append(f"{name}: {row.get(name)!r} is not {kind} ({e})")
                continue
            if v is not None and (isinstance(v, float) and math.isnan(v) or not ok(v)):
                bad.append(f"{name}: {row.get(name)!r} is out of range: {name} must be {want}")
                continue
            own[name] = v
            vals[name] = defaults.get(name) if v is None else v
        if vals.get("start_s") is not None and vals.get("end_s") is not None and vals["end_s"] <= vals["start_s"]:
            bad.append(f"end_s: {vals['end_s']} is not after start_s {vals['start_s']}")
        if "strength" in vals and "num_inference_steps" in vals \
                and denoising_steps(vals["num_inference_steps"], vals["strength"]) < 1:
            bad.append("strength x num_inference_steps < 1 leaves no denoising step")
        adapters = {}
        for kind in ADAPTER_FIELDS:
            try:  # the row's own list, else the job's (--lora / --embeddings)
                own_list = row.get(kind)
                given = own_list if own_list not in (None, "") else getattr(cfg, kind, None)
                adapters[kind] = adapter_list(given, kind, bases[i])
            except ValueError as e:
                bad.append(f"{kind}: {e}")
        for item in json.loads(adapters.get("embeddings") or "[]"):
            if isinstance(prompt, str) and item["token"] not in prompt:
                bad.append(f"embeddings: token {item['token']!r} is not in the prompt")
        scheduler = row.get("scheduler")
        if scheduler in ("", None) or isinstance(scheduler, float) and math.isnan(scheduler):
            scheduler = None
        elif not isinstance(scheduler, str) or scheduler_class_name(scheduler) is None:
            bad.append(f"scheduler: {scheduler!r} is unknown; choose one of {sorted(SCHEDULERS)} (empty: the job's)")
        else:
            scheduler = scheduler_class_name(scheduler)
        rid = row.get("id")
        if rid is not None and not isinstance(rid, str):
            rid = str(rid)
        if rid is not None and (not rid.strip() or len(rid) > 200):
            bad.append("id: empty or longer than 200 characters")
        if bad:
            errors += [f"{where}: {b}" for b in bad]
            if rid is not None:
                row_ids.append((i, rid))
            continue
        resolved = _resolve_video(video, bases[i])
        if rid is None:  # from the row as written, not the job's defaults: a changed flag keeps every id
            content = (video, row.get("prompt"), row.get("negative_prompt"),
                       *(own[name] for name in ("seed", "strength", "num_inference_steps", "guidance_scale",
                                                "start_s", "end_s")))
            k = seen_content.get(content, 0) + 1
            seen_content[content] = k
            rid = _default_id(video, content) + (f"-{k}" if k > 1 else "")
        row_ids.append((i, rid))
        out["id"].append(rid)
        out["video"].append(resolved)
        out["prompt"].append(prompt)
        out["negative_prompt"].append(neg)
        for name in ("seed", "strength", "num_inference_steps", "guidance_scale", "start_s", "end_s"):
            out[name].append(vals.get(name))
        for kind in ADAPTER_FIELDS:
            out[kind].append(adapters[kind])
        out["scheduler"].append(scheduler)
    by_folder: dict[str, list[tuple[int, str]]] = {}
    for i, rid in row_ids:
        by_folder.setdefault(safe_name(rid, 120), []).append((i, rid))
    for folder, hits in by_folder.items():
        if len(hits) > 1:
            same = len({rid for _, rid in hits}) == 1
            errors.append(f"{', '.join(places[i] for i, _ in hits)}: duplicate id {hits[0][1]!r}"
                          + ("" if same else f" (ids {[rid for _, rid in hits]} map to the same folder {folder!r})"))
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ManifestError(f"manifest {uri}: {len(errors)} problem(s); nothing was run:\n  {shown}{more}")
    table = pa.table({k: pa.array(v, type=NORMALIZED[k]) for k, v in out.items()})
    for name in raw.column_names:
        if name not in NORMALIZED:
            table = table.append_column(name, raw.column(name).combine_chunks())
    return table
