"""Video in and out with PyAV over fsspec: probe, decode exactly the planned frames, encode, stitch.

Frames are uint8 RGB (F, H, W, 3) everywhere. Local files are opened by path; anything else (s3://, gs://,
http(s)://, memory://) through an fsspec file object, so seeking reads only what it needs.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from v2v.core.storage import atomic_output, is_transient, local_path, sha256_file, url_to_fs


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file and the problem."""


@dataclass(frozen=True)
class Probe:
    uri: str
    duration_s: float
    num_frames: int
    frame_count: str  # "header" (container says), "counted" (packets counted) or "estimated" (duration x fps)
    fps: float  # average frame rate
    variable_fps: bool
    width: int  # as displayed, after rotation metadata
    height: int
    rotation: int  # degrees counterclockwise applied to decoded frames for display (0, 90, 180, 270)
    pix_fmt: str
    codec: str
    has_audio: bool


# Non-UTF-8 metadata tags: PyAV 18 raises on them unless told to replace; PyAV 19 dropped the argument (it reads
# every tag as UTF-8 with surrogateescape, which cannot raise).
_READ_OPTIONS = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}


@contextlib.contextmanager
def open_video(uri: str):
    """av.open for reading, with every failure of the file turned into one VideoError naming `uri`; a failure of
    the store (a timeout, a reset connection: storage.is_transient) is raised as it is, for the caller to retry.

    Metadata tags that are not UTF-8 (corrupt or legacy files) are read without raising (_READ_OPTIONS): PyAV
    18's strict default raises UnicodeDecodeError on them, which would fail a video whose frames are fine.
    """
    lp = local_path(uri)
    try:
        if lp is not None:
            if not os.path.exists(lp):
                raise VideoError(f"{uri}: file not found")
            if os.path.getsize(lp) == 0:
                raise VideoError(f"{uri}: empty file (0 bytes)")
            container = av.open(lp, "r", **_READ_OPTIONS)
            f = None
        else:
            fs, path = url_to_fs(uri)
            if not fs.exists(path):
                raise VideoError(f"{uri}: file not found")
            if fs.size(path) == 0:
                raise VideoError(f"{uri}: empty file (0 bytes)")
            f = fs.open(path, "rb")
            container = av.open(f, "r", **_READ_OPTIONS)
    except VideoError:
        raise
    except (av.error.FFmpegError, EOFError) as e:
        raise VideoError(f"{uri}: not a readable video ({e})") from e
    except Exception as e:
        if is_transient(e):  # the store failed, not the file: the caller may try again (storage.retrying)
            raise
        if isinstance(e, OSError):
            raise VideoError(f"{uri}: not a readable video ({e})") from e
        raise
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise VideoError(f"{uri}: no video stream (found: {', '.join(kinds)})")
        yield container
    except (av.error.FFmpegError, EOFError) as e:
        raise VideoError(f"{uri}: decoding failed ({e})") from e
    finally:
        container.close()
        if f is not None:
            f.close()


def _rotation(frame) -> int:
    rot = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    return rot if rot in (0, 90, 180, 270) else 0


def probe(uri: str, count_frames: bool = True) -> Probe:
    """Read a video's geometry and timing; decodes one frame (to prove it decodes and to read rotation)."""
    with open_video(uri) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate:
            raise VideoError(f"{uri}: no frame rate")
        fps = float(rate)
        base = float(s.base_rate or rate)
        variable = abs(base - fps) / fps > 0.01
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        else:
            duration = 0.0
        first = next(c.decode(s), None)
        if first is None:
            raise VideoError(f"{uri}: video stream holds no decodable frame")
        rot = _rotation(first)
        w, h = s.codec_context.width, s.codec_context.height
        if rot in (90, 270):
            w, h = h, w
        pix_fmt = s.codec_context.pix_fmt or first.format.name
        has_audio = bool(c.streams.audio)
        codec = s.codec_context.name
        if s.frames:
            n, how = int(s.frames), "header"
        elif count_frames:
            c.seek(0, stream=s)
            pts = sorted(p.pts for p in c.demux(s) if p.size and p.pts is not None)
            n, how = len(pts), "counted"
            if n > 2:  # the container's rate claim may be a default; the timestamps are the truth
                deltas = np.diff(pts)
                measured = float((n - 1) / ((pts[-1] - pts[0]) * s.time_base))
                variable = bool(deltas.max() - deltas.min() > 0.01 * np.median(deltas) + 1)
                if variable or abs(measured - fps) > 0.005 * fps:  # keep the declared rate if it agrees
                    fps = measured
        else:
            n, how = int(round(duration * fps)), "estimated"
        if not duration:
            duration = n / fps
    return Probe(uri, duration, n, how, fps, variable, w, h, rot, pix_fmt, codec, has_audio)


# Decoding ----------------------------------------------------------------------------------------------

RESIZE_POLICIES = ("cover", "pad", "stretch")


def describe_resize(src_w: int, src_h: int, width: int, height: int, policy: str) -> str:
    """What `policy` does to a displayed src_w x src_h frame to make it width x height, in words (as _to_rgb
    does it)."""
    if (src_w, src_h) == (width, height):
        return "kept as it is"
    if policy == "stretch":
        return f"stretched from {src_w}x{src_h}"
    scale = max(width / src_w, height / src_h) if policy == "cover" else min(width / src_w, height / src_h)
    tw, th = max(1, math.ceil(src_w * scale - 1e-6)), max(1, math.ceil(src_h * scale - 1e-6))
    if policy == "cover":
        cut = [f"{n} px of {what}" for n, what in ((tw - width, "width"), (th - height, "height")) if n > 0]
        return f"scaled from {src_w}x{src_h} to {tw}x{th}" + (f", {' and '.join(cut)} cropped" if cut else "")
    tw, th = min(tw, width), min(th, height)
    bars = [f"{n} px of {what}" for n, what in ((width - tw, "width"), (height - th, "height")) if n > 0]
    return f"scaled from {src_w}x{src_h} to {tw}x{th}" + (f", {' and '.join(bars)} padded" if bars else "")


def _to_rgb(frame, width: int, height: int, policy: str, rot: int) -> np.ndarray:
    """One decoded frame -> uint8 (height, width, 3) as displayed. Scales first, so 4K never sits in RGB."""
    sw, sh = frame.width, frame.height  # stored size; displayed size swaps under 90/270 rotation
    dw, dh = (sh, sw) if rot in (90, 270) else (sw, sh)
    if policy == "stretch":
        tw, th = width, height
    else:
        scale = max(width / dw, height / dh) if policy == "cover" else min(width / dw, height / dh)
        tw, th = max(1, math.ceil(dw * scale - 1e-6)), max(1, math.ceil(dh * scale - 1e-6))
        if policy == "pad":
            tw, th = min(tw, width), min(th, height)
    fw, fh = (th, tw) if rot in (90, 270) else (tw, th)  # the size to scale to, in stored orientation
    arr = frame.reformat(width=fw, height=fh, format="rgb24", interpolation="AREA").to_ndarray()
    if rot:
        arr = np.rot90(arr, k=rot // 90)
    if policy == "cover":
        y, x = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
        arr = arr[y : y + height, x : x + width]
    elif policy == "pad":
        canvas = np.zeros((height, width, 3), np.uint8)
        y, x = (height - arr.shape[0]) // 2, (width - arr.shape[1]) // 2
        canvas[y : y + arr.shape[0], x : x + arr.shape[1]] = arr
        arr = canvas
    return np.ascontiguousarray(arr)


def decode_clip(uri: str, times: list[float], width: int, height: int, resize: str = "cover") -> np.ndarray:
    """Decode the frames shown at `times` (seconds from the video's start) -> uint8 (F, height, width, 3).

    Each time takes the frame on screen then (the last one whose timestamp is <= it), so at the source's own
    rate frame k is exactly the k-th frame. Seeks to the keyframe before the first time; never decodes from
    frame 0 for a later clip. Raises VideoError if the file ends before the last time.
    """
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    if width % 8 or height % 8 or width < 8 or height < 8:
        raise ValueError(f"target size {width}x{height} must be positive multiples of 8")
    if not times:
        return np.zeros((0, height, width, 3), np.uint8)
    with open_video(uri) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        tb = s.time_base
        start_pts = s.start_time or 0
        fps = float(s.average_rate or s.guessed_rate or 30)
        eps = max(1.5 * float(tb), 1e-6)  # timestamps are rounded to the time base (1 ms in mkv)
        if times[0] > 0:
            c.seek(start_pts + int((times[0] - 0.5 / fps) / tb), stream=s, backward=True)
        out: list[np.ndarray] = []
        k = 0
        prev, held, rot = None, None, 0  # `held`: prev's RGB, computed on first use
        for frame in c.decode(s):
            if frame.pts is None:
                continue
            if prev is None:
                rot = _rotation(frame)
            t = float((frame.pts - start_pts) * tb)
            while k < len(times) and t > times[k] + eps:
                if prev is None:  # asked for a time before the first frame: show the first
                    prev, held = frame, None
                if held is None:
                    held = _to_rgb(prev, width, height, resize, rot)
                out.append(held)
                k += 1
            if k == len(times):
                break
            if prev is not frame:
                prev, held = frame, None
        if prev is not None:  # times within the last frame's duration take the last frame
            last_t = float((prev.pts - start_pts) * tb)
            while k < len(times) and times[k] < last_t + 1.0 / fps - eps:
                held = held if held is not None else _to_rgb(prev, width, height, resize, rot)
                out.append(held)
                k += 1
    if len(out) < len(times):
        raise VideoError(
            f"{uri}: video ends before {times[len(out)]:.3f} s; decoded {len(out)} of {len(times)} planned "
            f"frames (truncated file, or a frame count the header overstates)"
        )
    return np.stack(out)


# Encoding ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    name: str  # what users say: h264, h265, av1, ffv1
    encoder: str  # the FFmpeg encoder
    ext: str  # container by file extension
    pix_fmt: str
    default_crf: int | None
    default_preset: str | None
    crf_range: tuple[int, int] | None = None  # what the encoder means by crf (x264 clamps others silently)


CODECS = {
    # yuv420p H.264 in mp4 plays everywhere (browsers, phones, QuickTime).
    "h264": Codec("h264", "libx264", "mp4", "yuv420p", 18, "medium", (0, 51)),
    "h265": Codec("h265", "libx265", "mp4", "yuv420p", 23, "medium", (0, 51)),
    "av1": Codec("av1", "libsvtav1", "mp4", "yuv420p", 35, "8", (0, 63)),
    # Lossless: FFV1 with packed RGB (bgr0), so decoded frames equal the written frames bit for bit.
    "ffv1": Codec("ffv1", "ffv1", "mkv", "bgr0", None, None),
}


def codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"codec {name!r} is unknown; choose one of {sorted(CODECS)}")
    return CODECS[name]


def _sane_dts(packet, last_dts: int | None) -> int | None:
    """Keep a video packet's decode timestamp in (last packet's, its pts] and returns it. libx265 through FFmpeg
    sometimes leaves a one- or two-frame stream's dts unset (values such as -5.8e17 or above the pts): mp4's muxer
    then refuses the packet ("pts/dts pair unsupported") or writes a broken timeline. Encoders here delay
    decoding by at most a few frames (x265's B-frames: dts from -2), so a dts below -16 is taken as unset too."""
    if packet.pts is None:
        return last_dts
    dts = packet.dts
    if dts is None or dts > packet.pts or dts < -16 or (last_dts is not None and dts <= last_dts):
        packet.dts = dts = packet.pts if last_dts is None or packet.pts > last_dts else last_dts + 1
    return dts


def check_encoder(codec_name: str, crf: int | None = None, preset: str | None = None) -> None:
    """Raise VideoError naming the setting when the encoder would refuse `crf` or `preset`: the job checks
    this before it runs, since the encoder only opens after a clip has been restyled. Encodes eight small frames
    to a temporary folder through `write_video` itself (not fewer: libx265 in mp4 sometimes gives one or two
    frames a pts/dts pair the muxer refuses)."""
    import tempfile

    spec = codec(codec_name)
    low, high = spec.crf_range or (None, None)
    if crf is not None and spec.crf_range and not (isinstance(crf, int) and low <= crf <= high):
        raise VideoError(f"crf must be an integer in {low}..{high} for {codec_name}, got {crf!r}")
    if spec.default_crf is None:
        return  # lossless: it takes no crf or preset
    # 8 frames of a moving gradient: enough picture for every encoder to use its settings
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    frames = np.stack([np.stack([np.roll(ramp, 4 * i, axis=1)] * 3, -1) for i in range(8)])
    with tempfile.TemporaryDirectory() as d:
        try:
            write_video(frames, os.path.join(d, "check." + spec.ext), 12.0, codec_name, crf, preset)
        except VideoError as e:
            opts = _encoder_options(spec, crf, preset)
            why = e.__cause__ or e  # FFmpeg's error where the writer has one, else the writer's own message
            raise VideoError(f"the {codec_name} encoder ({spec.encoder}) refuses crf {opts['crf']} with preset "
                             f"{opts['preset']!r}: {why}") from why


def _encoder_options(spec: Codec, crf: int | None, preset: str | None) -> dict[str, str]:
    """The encoder's options: crf and preset (the codec's defaults where None), and quiet logs."""
    opts = {}
    if spec.default_crf is not None:
        opts["crf"] = str(crf if crf is not None else spec.default_crf)
    if spec.default_preset is not None:
        opts["preset"] = str(preset if preset is not None else spec.default_preset)
    if spec.encoder == "libx265":
        opts["x265-params"] = "log-level=error:info=0"  # info=0: no SEI with encode time
    return opts


def _fps_fraction(fps: float) -> Fraction:
    f = Fraction(fps).limit_denominator(1001)
    return f if abs(float(f) - fps) < 1e-6 * fps else Fraction(fps).limit_denominator(1_000_000)


def write_video(frames: np.ndarray, uri: str, fps: float, codec_name: str = "h264", crf: int | None = None,
                preset: str | None = None, audio_from: str | None = None,
                audio_span: tuple[float, float] | None = None) -> tuple[str, int]:
    """Encode uint8 (F, H, W, 3) frames to `uri` atomically: no reader ever sees a partial file there.

    With `audio_from`, the source's audio packets between audio_span (seconds) are copied in unchanged.
    Returns (sha256, size in bytes) of the file written; raises VideoError naming `uri` where FFmpeg fails (an
    encoder refusing its settings, a muxer refusing a packet, the audio source unreadable).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    spec = codec(codec_name)
    with atomic_output(uri, suffix="." + spec.ext) as tmp:
        try:
            _encode(frames, tmp, fps, spec, _encoder_options(spec, crf, preset), audio_from, audio_span)
        except av.FFmpegError as e:
            raise VideoError(f"{uri}: writing {codec_name} failed ({e})") from e
        return sha256_file(tmp), os.path.getsize(tmp)


def _encode(frames: np.ndarray, path: str, fps: float, spec: Codec, opts: dict, audio_from, audio_span):
    """write_video's encoding into `path` (FFmpeg's errors raised as they come)."""
    if spec.encoder == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config otherwise
    # bitexact: no creation date or random ids in the file, so equal frames give equal bytes (retry-safe).
    with av.open(path, "w", format="matroska" if spec.ext == "mkv" else "mp4",
                 container_options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream(spec.encoder, rate=_fps_fraction(fps))
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], spec.pix_fmt
        vs.options = opts
        if spec.ext == "mp4" and spec.encoder == "libx265":
            vs.codec_tag = "hvc1"  # so Apple players accept it
        audio = _open_audio(audio_from, out) if audio_from else None
        last_dts = None
        for i in range(len(frames) + 1):  # the last round flushes the encoder
            frame = None
            if i < len(frames):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24").reformat(format=spec.pix_fmt)
                frame.pts = i
            for packet in vs.encode(frame):
                last_dts = _sane_dts(packet, last_dts)
                out.mux(packet)
        if audio is not None:
            _copy_audio(audio, out, audio_span or (0.0, len(frames) / fps))


def _open_audio(src_uri: str, out):
    with contextlib.ExitStack() as stack:
        c = stack.enter_context(open_video(src_uri))
        if not c.streams.audio:
            return None
        a = c.streams.audio[0]
        oa = out.add_stream_from_template(a)
        return stack.pop_all(), c, a, oa


def _copy_audio(audio, out, span: tuple[float, float]) -> None:
    stack, c, a, oa = audio
    with stack:
        start, end = span
        tb = a.time_base
        c.seek(int(start / tb) + (a.start_time or 0), stream=a, backward=True)
        offset = None
        for packet in c.demux(a):
            if packet.pts is None or packet.size == 0:
                continue
            t = float((packet.pts - (a.start_time or 0)) * tb)
            if t + float((packet.duration or 0) * tb) <= start:
                continue
            if t >= end:
                break
            offset = packet.pts if offset is None else offset
            packet.pts -= offset
            packet.dts = packet.pts
            packet.stream = oa
            out.mux(packet)


def read_frames(uri: str) -> np.ndarray:
    """Every frame of a video as uint8 (F, H, W, 3), as stored (no resize): for tests and stitching."""
    with open_video(uri) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


# Stitching ---------------------------------------------------------------------------------------------


def stitch_frames(parts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Join clips placed at their start frames into one sequence; overlapping frames are cross-faded.

    parts: (start_frame, uint8 (F, H, W, 3)) in order of start. In an overlap of n frames, frame j of it is
    (1 - a) * earlier + a * later with a = (j + 1) / (n + 1), so the hand-over is gradual and never repeats
    a frame. Gaps between clips are not filled: the clips are simply concatenated.
    """
    if not parts:
        raise ValueError("nothing to stitch")
    parts = sorted(parts, key=lambda p: p[0])
    start0, first = parts[0]
    out = first.astype(np.float32)
    cursor = start0 + len(first)  # the frame number just past the end of `out`
    for start, clip in parts[1:]:
        clip = clip.astype(np.float32)
        n = min(max(0, cursor - start), len(clip))
        cursor = max(cursor, start + len(clip))
        if n:
            a = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))[:, None, None, None]
            out[len(out) - n :] = (1 - a) * out[len(out) - n :] + a * clip[:n]
        out = np.concatenate([out, clip[n:]])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
