"""Previews of a run: previews/<id>.jpg per video (N source frames above the same frames restyled) and
previews/index.html, one row per video with its strip, status, prompt, settings, errors and quality signals,
sortable by any column. Plain files with relative links: they open from a local folder or an object store alike.
"""

from __future__ import annotations

import html
import io
import math

import numpy as np

from v2v.core.storage import join, safe_name, write_bytes_atomic
from v2v.core.video import decode_clip, read_frames

PREVIEW_DIR = "previews"
JPEG_QUALITY = 85


def preview_path(rid: str) -> str:
    return f"{PREVIEW_DIR}/{safe_name(rid, 120)}.jpg"


def strip_frames(clips: list[dict], n: int) -> list[tuple[dict, int]]:
    """(clip row, frame index in it) of `n` frames spread evenly over a video's ok clips, in order."""
    frames = [(c, k) for c in sorted(clips, key=lambda c: c["start_frame"]) for k in range(c["num_frames"])]
    if not frames:
        return []
    n = min(n, len(frames))
    return [frames[round(i * (len(frames) - 1) / max(1, n - 1))] for i in range(n)]


def strip_image(sources: list[np.ndarray], outputs: list[np.ndarray]) -> np.ndarray:
    """uint8 (2H, N*W, 3): the source frames side by side above the restyled ones."""
    return np.concatenate([np.concatenate(sources, axis=1), np.concatenate(outputs, axis=1)], axis=0)


def write_strip(output: str, rid: str, clips: list[dict], n: int, resize: str) -> str:
    """Decode the chosen source frames as the job did (same size and resize policy), read the restyled ones from
    the clip files, and write previews/<id>.jpg. Returns its path relative to `output`."""
    from PIL import Image

    sources, outputs = [], []
    for clip, k in strip_frames(clips, n):
        t = (clip["start_frame"] + k) / clip["fps"]
        sources.append(decode_clip(clip["video"], [t], clip["width"], clip["height"], resize)[0])
        outputs.append(read_frames(join(output, clip["output"]))[k])
    buf = io.BytesIO()
    Image.fromarray(strip_image(sources, outputs)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    rel = preview_path(rid)
    write_bytes_atomic(join(output, rel), buf.getvalue())
    return rel


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def video_rows(rows: list[dict], strips: dict[str, str]) -> list[dict]:
    """One summary per video id from its clip rows: counts, its first error, the signals' means."""
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    videos = []
    for rid, clips in by_id.items():
        first = clips[0]
        count = {s: sum(c["status"] == s for c in clips) for s in ("ok", "failed", "skipped")}
        errors = [f"{'clip ' + str(c['clip_index']) if c['clip_index'] >= 0 else 'video'}: {c['error']}"
                  for c in clips if c["status"] == "failed"]
        videos.append({
            "id": rid, "strip": strips.get(rid), "status": "failed" if count["failed"] else "ok",
            "clips": f"{count['ok']} ok" + "".join(f", {v} {k}" for k, v in count.items() if k != "ok" and v),
            "prompt": first.get("prompt") or "", "strength": first.get("strength"),
            "steps": first.get("num_inference_steps"), "guidance": first.get("guidance_scale"),
            "seed": first.get("seed"), "errors": errors,
            "flicker": _mean([c.get("temporal_flicker") for c in clips]),
            "ssim": _mean([c.get("source_ssim") for c in clips]),
            "blank": sum(bool(c.get("blank")) for c in clips)})
    return videos


COLUMNS = [("id", "video"), ("status", "status"), ("clips", "clips"), ("flicker", "flicker"),
           ("ssim", "SSIM to source"), ("blank", "blank clips"), ("strength", "strength"), ("steps", "steps"),
           ("guidance", "guidance"), ("seed", "seed"), ("prompt", "prompt")]

# Sorting on a header click, or from the address (#sort=ssim, #sort=-flicker: descending); an image that does not
# load is replaced by a note, and the page counts them in <body data-broken-images>.
SCRIPT = """
const body = document.querySelector('tbody');
function sortBy(key, desc) {
  const rows = [...body.rows];
  const val = r => { const v = r.dataset[key]; const f = parseFloat(v); return isNaN(f) ? v : f; };
  rows.sort((a, b) => { const x = val(a), y = val(b); return (x > y ? 1 : x < y ? -1 : 0) * (desc ? -1 : 1); });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll('th[data-key]').forEach(th => th.addEventListener('click', () => {
  const desc = th.dataset.dir !== 'desc'; th.dataset.dir = desc ? 'desc' : 'asc'; sortBy(th.dataset.key, desc);
}));
const m = location.hash.match(/sort=(-?)(\\w+)/);
if (m) sortBy(m[2], m[1] === '-');
let broken = 0;
function markBroken(img) {
  broken += 1; document.body.dataset.brokenImages = broken;
  const note = document.createElement('span'); note.className = 'missing'; note.textContent = 'preview missing';
  img.replaceWith(note);
}
document.querySelectorAll('img').forEach(img => {
  if (img.complete && img.naturalWidth === 0) markBroken(img);
  else img.addEventListener('error', () => markBroken(img));
});
document.body.dataset.brokenImages = broken;
"""

STYLE = """
body { font: 14px sans-serif; margin: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px; vertical-align: top; }
th[data-key] { cursor: pointer; background: #eee; }
tr.failed { background: #fee; }
.errors { color: #a00; white-space: pre-wrap; max-width: 40em; }
.missing { color: #a00; }
img { max-width: 640px; display: block; }
"""


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


def page(videos: list[dict], title: str) -> str:
    """index.html for `videos` (video_rows' dicts); strips are linked relative to the previews folder."""
    head = "".join(f'<th data-key="{k}">{html.escape(label)}</th>' for k, label in COLUMNS) + "<th>preview</th>"
    body = []
    for v in videos:
        data = " ".join(f'data-{k}="{html.escape("" if v[k] is None else str(v[k]), quote=True)}"'
                        for k, _ in COLUMNS)
        # loading="lazy": a night's page holds thousands of strips; the browser fetches those near the view only
        strip = (f'<img src="{html.escape(v["strip"].split("/", 1)[1], quote=True)}" alt="{html.escape(v["id"])}" '
                 'loading="lazy" decoding="async">' if v["strip"] else "")
        errors = f'<div class="errors">{html.escape(chr(10).join(v["errors"]))}</div>' if v["errors"] else ""
        cells = "".join(f"<td>{_cell(v[k])}</td>" for k, _ in COLUMNS)
        body.append(f'<tr class="{v["status"]}" {data}>{cells}<td>{strip}{errors}</td></tr>')
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>{len(videos)} videos. Click a header to sort; the top row of each strip is the source.</p>\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
            f"<script>{SCRIPT}</script></body></html>\n")


def write_page(output: str, rows: list[dict], strips: dict[str, str], title: str) -> str:
    """Write previews/index.html; returns its path relative to `output`."""
    rel = f"{PREVIEW_DIR}/index.html"
    write_bytes_atomic(join(output, rel), page(video_rows(rows, strips), title).encode())
    return rel
