"""The job's stages as plain callables on batches of rows (dicts of columns). Ray wraps them in pipeline.py.

One clip's path: core.plan.plan_rows (probe + plan) -> decode -> Restyle (holds the model) -> encode, the last
three in one restyle actor (ClipWorker).
Each stage takes the columns it needs and adds its own; a clip that fails carries its `error` onward and
later stages pass it through untouched. Bad inputs become errors on rows; programmer errors raise.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import time
from typing import Iterable, Iterator

import numpy as np

from v2v.config import JobConfig, denoising_steps
from v2v.core.index import clip_path
from v2v.core.plan import frame_times
from v2v.core.storage import StorageError, join, retrying
from v2v.core.video import VideoError, decode_clip, write_video
from v2v.job.resources import Resources, auto_dtype

logger = logging.getLogger(__name__)

def decode(row: dict, resize: str) -> dict:
    """Decode one clip row's planned frames, its context frames first: adds `frames` uint8 (context + F, H, W, 3)
    and `decode_s`; a clip that cannot be decoded gets its `error` (and no frames)."""
    t0 = time.perf_counter()
    n, h, w = int(row["num_frames"]), int(row["height"]), int(row["width"])
    frames = np.zeros((0, h, w, 3), np.uint8)
    error = row["error"] if isinstance(row.get("error"), str) else None
    if error is None:
        times = frame_times(int(row["start_frame"]), n, float(row["fps"]), context(row))
        video = row["video"]
        try:
            frames = retrying(lambda: decode_clip(video, times, w, h, resize), video)
        except (VideoError, StorageError) as e:
            error = f"decode: {e}"
    return {**row, "frames": frames, "decode_s": time.perf_counter() - t0, "error": error}


def context(row: dict) -> int:
    """A clip row's context frames (v2v.core.plan.ClipPlan.context_frames): 0 where the row has none."""
    v = row.get("context_frames")
    return int(v) if v is not None and v == v else 0  # (NaN after pandas: none)


def _text(row: dict, column: str) -> str:
    """A row's string value, "" where the row lacks the column or holds null (NaN after pandas)."""
    v = row.get(column)
    return v if isinstance(v, str) else ""


def _rows(batch: dict) -> list[dict]:
    """A batch (dict of columns) as one dict per row."""
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["id"]))]


def _batch(rows: list[dict], like: dict) -> dict:
    """Rows back into columns (`like`, the batch they came from, where there are none): `frames` as `_column`,
    all-number columns as number arrays, any other as an object array (strings, None, bools)."""
    if not rows:
        return like
    out = {}
    for k in rows[0]:
        values = [r.get(k) for r in rows]
        if k == "frames":
            out[k] = _column(values)
        elif all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
            out[k] = np.array(values)
        else:
            out[k] = np.empty(len(values), object)
            out[k][:] = values
    return out


def _column(arrays: list[np.ndarray]):
    """A batch column of per-row arrays: one stacked array if shapes agree, else an object array."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    out = np.empty(len(arrays), object)
    out[:] = arrays
    return out


QUALITY_COLUMNS = ("temporal_flicker", "source_ssim", "blank")  # v2v.model.quality.signals, per restyled clip
# A restyle actor's exit code after a CUDA error that is not out-of-memory (the pool starts another), and how often
# a clip set may take an actor down before its clips are failed rows instead.
EXIT_DEVICE_FAILURE = 70
DEVICE_FAILURE_TRIES = 3
_DEVICE_FAILURES = ("CUDA error", "CUDA driver error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error",
                    "illegal memory access", "device-side assert", "uncorrectable ECC", "NCCL error")


def device_failed(e: BaseException) -> bool:
    """Whether `e` says the GPU's state is broken (not out of memory, which torch raises as its own type)."""
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError) or not isinstance(e, RuntimeError):
        return False
    return type(e).__name__ == "AcceleratorError" or any(s in str(e) for s in _DEVICE_FAILURES)


class Restyle:
    """The GPU stage: loads the model once per actor, restyles clips `batch_size` at a time.

    res: what `job.resources` decided for this cluster (device, dtype, threads, batch invariance, speed switches).
    """

    def __init__(self, cfg: JobConfig, res: Resources):
        import torch

        from v2v.model.loading import load_components
        from v2v.speed import apply_model_switches

        torch.set_num_threads(res.torch_threads)
        self.cfg = cfg
        self.batch_invariant = res.batch_invariant
        # Seconds per start-up phase (logged; the benchmark's start-up rows show them): an actor's start is
        # mostly host CPU work (loading, tracing, compiling or loading cached kernels).
        self.start_s: dict[str, float] = {}
        with self._phase("imports"):  # diffusers and transformers: seconds on their own, apart from the load
            from diffusers import AutoencoderKL  # noqa: F401
            from transformers import PreTrainedModel  # noqa: F401
        dtype = res.dtype
        if cfg.dtype == "auto" and res.device == "cuda":  # the driver assumed native bf16; this card may lack it
            dtype = auto_dtype("cuda", bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
        with self._phase("load"):
            self.components = c = load_components(cfg.model, device=res.device, dtype=dtype,
                                                  scheduler=cfg.scheduler, allow_pickle=cfg.allow_pickle)
        from v2v.model.adapters import Adapters
        from v2v.model.backbone import PromptCache

        self.adapters = Adapters(c)  # per-clip LoRAs and embeddings, merged in and out of these weights
        self.prompts = PromptCache()  # the prompts' embeddings, kept across calls: a night's styles are few
        # Latents per denoiser forward: cond + uncond for each clip of a batch (one clip when batch-invariant).
        self.unet_batch = 2 * (1 if res.batch_invariant else cfg.batch_size)
        self.speed = res.speed
        self.shape = cfg.clip_shape((c.width, c.height, c.frames))  # (width, height, frames) of the compiled parts
        self.stored: dict = {}
        self.background = None  # a v2v.speed.background.BackgroundCompile while the parts compile beside the actor
        with self._phase("switches"):
            apply_model_switches(c, res.speed)
        if res.speed.compile and not self._compiled(build=not res.speed.background_compile):
            from v2v.speed.background import BackgroundCompile

            width, height, frames = self.shape
            self.background = BackgroundCompile(dict(
                model=cfg.model, device=res.device, dtype=str(c.dtype).removeprefix("torch."), scheduler=cfg.scheduler,
                allow_pickle=cfg.allow_pickle, speed=dataclasses.asdict(res.speed), unet_batch=self.unet_batch,
                vae_chunk=cfg.vae_chunk, shared_cache=cfg.shared_compile_cache, frames=frames, height=height,
                width=width))
        with self._phase("fingerprint"):  # cached on disk; already taken where stored compiled parts are keyed by it
            self.model_sha256 = c.sha256
        logger.info("restyle actor ready: %s", self.start_report())
        self.scheduler_name = type(self.components.scheduler).__name__
        self.schedulers: dict[str, object] = {}  # rows' own, by class name
        # Which actor restyled a clip (host/pid[/gpu]): with the restyle timestamps, per-actor busy time.
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if res.device == "cuda" else None
        self.worker = f"{socket.gethostname()}/{os.getpid()}" + (f"/gpu{gpu}" if gpu else "")

    def _compiled(self, build: bool) -> bool:
        """The model's parts compiled (or their stored forms loaded) and warmed up now, not inside the first batch.
        build=False: where a stored part is in neither cache, the model is left eager and this returns False."""
        from v2v.speed import compile_parts, eager_again, warm_up
        from v2v.speed.stored import NotStored

        c, cfg = self.components, self.cfg
        width, height, frames = self.shape
        try:
            with self._phase("compile_parts"):
                self.stored = compile_parts(c, self.speed, unet_batch=self.unet_batch, vae_chunk=cfg.vae_chunk,
                                            shared_cache=cfg.shared_compile_cache, build=build)
            for part, secs in warm_up(c, self.unet_batch, frames, height, width).items():
                self.start_s[f"warm_up_{part}"] = secs
        except NotStored as e:
            eager_again(c)
            self.stored = {}
            logger.info("restyle actor: %s; the model runs eager", e)
            return False
        return True

    def take_up_compiled(self, wait: bool = False) -> bool:
        """Where the parts were compiling in the background and that has ended: load them (between two steps of the
        clips in flight; seconds). wait: block until the background compile ends first. Whether the model runs
        compiled now."""
        bg = self.background
        if bg is None:
            return self.speed.compile
        if not (bg.wait() if wait else bg.done()):
            return False
        self.background = None
        if not bg.ok:
            logger.warning("restyle actor: compiling in the background failed after %.0f s; the model stays eager "
                           "(slower per clip). Its output ends:\n%s", bg.seconds, bg.tail())
            return False
        t0 = time.perf_counter()
        if not self._compiled(build=False):  # another key than the subprocess's: nothing to do but stay eager
            logger.warning("restyle actor: the background compile stored no parts this actor can load; the model "
                           "stays eager (slower per clip)")
            return False
        self.start_s["background_compile"] = bg.seconds
        self.start_s["take_up_compiled"] = time.perf_counter() - t0
        logger.info("restyle actor compiled: the parts compiled in the background in %.0f s, taken up in %.1f s (%s)",
                    bg.seconds, self.start_s["take_up_compiled"], self.start_report())
        return True

    @contextlib.contextmanager
    def _phase(self, name: str):
        t0 = time.perf_counter()
        yield
        self.start_s[name] = time.perf_counter() - t0

    def _restart_or_give_up(self, clips: list[str], e: Exception) -> None:
        """A CUDA error that is not out-of-memory (an illegal address, an ECC error, a lost device) leaves the
        process's GPU state unusable: exit, so that the pool starts a fresh actor and the job redoes the batch in its
        next pass (pipeline.RENDER_PASSES). Each exit is counted on the node per clip set; one that failed
        DEVICE_FAILURE_TRIES times returns instead, and its clips become failed rows (a clip that breaks every GPU
        must not restart actors forever)."""
        from v2v.model.loading import default_cache_dir

        key = hashlib.sha256("\n".join(sorted(clips)).encode()).hexdigest()[:24]
        path = default_cache_dir() / "device-failures" / key
        tries = int(path.read_text()) if path.exists() else 0
        if tries + 1 >= DEVICE_FAILURE_TRIES:
            logger.error("restyle: the GPU failed on clips %s %d times; failing them: %s", clips, tries + 1, e)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(tries + 1))
        logger.error("restyle: the GPU failed (%s: %s); exiting so that a fresh actor takes over; clips %s are "
                     "redone", type(e).__name__, e, clips)
        logging.shutdown()
        os._exit(EXIT_DEVICE_FAILURE)

    def _scheduler(self, name: str):
        """The scheduler a row names (a diffusers class name, built from the model's scheduler config so that
        betas and offsets carry over), or the job's for ""."""
        from v2v.model.loading import make_scheduler

        if not name:
            return self.components.scheduler
        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(self.components.scheduler, name)
        return self.schedulers[name]

    def start_report(self) -> str:
        """Where the start went, and what each stored compiled part did (built, fetched, loaded or failed over)."""
        from v2v.speed import stored_status

        report = ", ".join(f"{k} {v:.1f} s" for k, v in self.start_s.items())
        if self.stored:
            report += "; stored parts: " + ", ".join(f"{k} {v}" for k, v in stored_status(self.stored).items())
        shared = next((p.shared for p in self.stored.values() if p.shared), None)
        if shared and shared.summary():
            report += f"; shared compile cache: {shared.summary()}"
        if self.background is not None:
            report += "; eager while the parts compile in the background"
        return report

    def __call__(self, batch: dict) -> dict:
        """Restyle a batch's clips (rows in, rows out in the same order): `stream` over its rows."""
        rows = _rows(batch)
        for i, row in enumerate(rows):
            row["_at"] = i
        out = sorted(self.stream(rows), key=lambda r: r.pop("_at"))
        return _batch(out, batch)

    def stream(self, rows: Iterable[dict]) -> Iterator[dict]:
        """Restyle clip rows as they come, up to `batch_size` clips in flight in a StepBatcher: each row (its
        columns, its decoded `frames`, its `error`) comes back once its clip is restyled or has failed, with the
        restyled frames and the restyle columns. Clips of any settings share forwards; clips with another set of
        LoRAs wait until the ones in flight are done (the LoRAs are merged into the weights)."""
        import torch

        from v2v.model.adapters import AdapterError
        from v2v.model.continuous import StepBatcher
        from v2v.model.loading import ModelError
        from v2v.model.quality import signal_tensors, signal_values
        from v2v.model.sampler import (
            ClipSettings,
            Readback,
            SamplerInputError,
            clip_sums,
            nonfinite,
            to_device,
            uint8_frames,
        )
        from v2v.speed.fixed_shapes import unpadded

        batcher = StepBatcher(self.components, self.cfg.batch_size, clip_skip=self.cfg.clip_skip,
                              vae_chunk=self.cfg.vae_chunk, batch_invariant=self.batch_invariant, fatal=device_failed,
                              own_size=unpadded, prompts=self.prompts)
        feed, waiting, exhausted, lora_now = iter(rows), [], False, None
        ready = getattr(rows, "ready", None)  # whether the next row is decoded already (ClipWorker's rows say)
        streams: dict[int, tuple] = {}  # id(row) -> the stream its clip would join, while it waits

        def done(row: dict, error: str | None = None, **restyled) -> dict:
            row.update(error=error if error is not None else row.get("error"), worker=self.worker,
                       scheduler=_text(row, "scheduler") or self.scheduler_name, model_sha256=self.model_sha256,
                       **restyled)
            for k, v in (("restyle_s", 0.0), ("restyle_started_at", np.nan), ("restyle_finished_at", np.nan),
                         ("adapters", "")):
                row.setdefault(k, v)
            for k in QUALITY_COLUMNS:
                row.setdefault(k, None)
            return row

        def name(row: dict) -> str:
            return f"{row['id']}/{int(row['clip_index']):05d}"

        def lora(row: dict) -> str:
            return _text(row, "lora")

        def read_out(c) -> tuple:
            """A finished clip's decode, NaN check and quality signals queued on the GPU, with their copies to the
            host: (clip, Readback), or (clip, the error)."""
            row = c.key
            try:
                frames = batcher.finish(c)[context(row):]  # its own frames: its context frames (seen by the model) cut
                # beside them on their device: the source once more (13 MB for 576x320x24), no decode
                source = to_device(torch.from_numpy(np.asarray(row["frames"])[context(row):]), frames.device)
                return c, Readback(frames=uint8_frames(frames), sums=clip_sums(frames[None]),
                                   **signal_tensors(frames, source))
            except RuntimeError as e:  # out of memory too
                return c, e

        def collect(pending: list[tuple]) -> Iterator[dict]:
            """The rows of clips `read_out` queued: their frames and signals once on the host."""
            for c, out in pending:
                row = c.key
                try:
                    if isinstance(out, BaseException):
                        raise out
                    got = out.wait()
                except RuntimeError as e:
                    why = f"{type(e).__name__}: {e}"
                    if device_failed(e):
                        self._restart_or_give_up([name(row)], e)
                        why = f"the GPU failed on this clip {DEVICE_FAILURE_TRIES} times: {e}"
                    yield done(row, f"restyle: {why}")
                    continue
                if nonfinite(got["sums"]):  # written, it would be black frames that pass as ok
                    yield done(row, f"restyle: the output holds NaN or infinite values ({self.components.dtype}); "
                                    "float16 can overflow where bfloat16 and float32 do not, else the model's "
                                    "weights or this clip's prompt embedding hold them")
                    continue
                yield done(row, frames=got["frames"].numpy(), restyle_s=c.model_s, restyle_started_at=c.admitted_at,
                           restyle_finished_at=time.time(), **signal_values({k: got[k] for k in QUALITY_COLUMNS}))

        # Finished clips are read out a round late: their decodes are queued before the next round's forward, and
        # the host waits for them (and writes their rows) while that forward runs. Nothing else in a round waits
        # for the GPU, so its queue stays full (v2v.model.sampler.Readback).
        pending: list[tuple] = []

        while True:
            # rows in until two batches' worth wait in the main stream, or two in others (StepBatcher.wants)
            while not exhausted and batcher.wants([streams[id(r)] for r in waiting]):
                if ready is not None and len(waiting) >= batcher.free and not ready():
                    break  # enough wait to fill the free slots: the rest join as decoding finishes them
                row = next(feed, None)
                if row is None:
                    exhausted = True
                elif isinstance(row.get("error"), str):
                    yield done(row)
                else:
                    waiting.append(row)
                    streams[id(row)] = batcher.stream_of(torch.from_numpy(np.asarray(row["frames"])))
            # Into free slots: clips of the LoRAs merged now (with none in flight, the oldest waiting clip's), of
            # the stream in flight or, for shorter last clips, of their own streams beside it (StepBatcher.admissible).
            # No more clips will join these once the rows run out or the next LoRA set's rows have come.
            merged = lora_now if batcher.active else (lora(waiting[0]) if waiting else None)
            candidates = [r for r in waiting if lora(r) == merged]
            last = exhausted or len(candidates) < len(waiting)
            for row in [candidates[i] for i in batcher.admissible([streams[id(r)] for r in candidates], last=last)]:
                waiting = [r for r in waiting if r is not row]
                del streams[id(row)]
                embeddings = _text(row, "embeddings")
                try:
                    if lora(row) != lora_now:
                        lora_now = None  # until merged
                        if self.adapters.use(self.adapters.refs(lora(row), "")[0]):
                            self.prompts.clear()  # embedded by the text encoder's weights before
                        lora_now = lora(row)
                    prompt = self.adapters.prompt(row["prompt"], self.adapters.refs("", embeddings)[1])
                    row["adapters"] = self.adapters.describe(lora(row), embeddings)
                except AdapterError as e:
                    yield done(row, f"adapter: {e}")
                    continue
                settings = ClipSettings(prompt=prompt, seed=int(row["seed"]),
                                        negative_prompt=_text(row, "negative_prompt"), strength=float(row["strength"]),
                                        num_inference_steps=int(row["num_inference_steps"]),
                                        guidance_scale=float(row["guidance_scale"]), eta=self.cfg.eta, name=name(row))
                try:
                    batcher.admit(row, torch.from_numpy(np.asarray(row["frames"])), settings,
                                  scheduler=self._scheduler(_text(row, "scheduler")))
                except torch.cuda.OutOfMemoryError as e:
                    torch.cuda.empty_cache()
                    yield done(row, f"restyle: out of GPU memory even alone ({e})")
                except (SamplerInputError, ModelError, RuntimeError) as e:
                    if device_failed(e):
                        self._restart_or_give_up([name(row)], e)
                        yield done(row, f"restyle: the GPU failed on this clip {DEVICE_FAILURE_TRIES} times: {e}")
                    else:
                        yield done(row, f"restyle: {type(e).__name__}: {e}")
            if not batcher.active:
                batcher.settle()
                yield from collect(pending)
                pending = []
                if exhausted and not waiting:
                    return
                continue
            if self.background is not None:
                self.take_up_compiled()
            try:
                finished, failed = batcher.step()
            except RuntimeError as e:  # a broken GPU (StepBatcher's `fatal`): the clips in flight are redone elsewhere
                if not device_failed(e):
                    raise
                self._restart_or_give_up([name(c.key) for c in batcher.active], e)
                for c in batcher.active:
                    yield done(c.key, f"restyle: the GPU failed on this clip {DEVICE_FAILURE_TRIES} times: {e}")
                batcher.active = []
                continue
            for c, e in failed:
                oom = isinstance(e, torch.cuda.OutOfMemoryError)
                yield done(c.key, f"restyle: out of GPU memory even alone ({e})" if oom
                           else f"restyle: {type(e).__name__}: {e}")
            yield from collect(pending)
            pending = [read_out(c) for c in finished]


class ClipWorker:
    """What a restyle actor does with a call's clip rows: decode (CPU, one thread, ahead) -> restyle (the model, up
    to `batch_size` clips in flight) -> encode and write (CPU, up to ENCODE_THREADS threads, behind). Decoding and
    encoding overlap the model. A call is a generator: each clip's row is yielded once its clip is written, so that
    rows reach the driver (and its durable progress) clip by clip, however many clips a call holds. Calls of one
    actor run one at a time (Ray 2.60's actors were seen to stall with calls on several threads at once), so a
    call's clips in flight drain at its end: a call holds `batch_size` x CALL_BATCHES rows, admitted longest first
    (`fill_order`), so that slots freed by clips that finish early are taken by the call's next clips and its last
    clips end together."""

    CALLS_AT_ONCE = 1
    CALL_BATCHES = 8  # rows per call, in batches
    DECODE_AHEAD = 1  # clips decoded ahead of what the stream has read, in batches
    # Clips encoded at once, at most a batch: the clips that finish in one round (a call's last round's above all:
    # the call, and the GPU with it, waits for their encodes before the next call can start) are written side by
    # side, not one after another. One keeps up with the model between.
    ENCODE_THREADS = 4

    def __init__(self, cfg: JobConfig, res: Resources):
        self.cfg = cfg
        self.restyle = Restyle(cfg, res)
        self.metrics = None  # a job.metrics.ActorMetrics where the worker runs as a Ray actor

    @classmethod
    def call_size(cls, batch_size: int, clips: int, actors: int) -> int:
        """Rows per call (one Ray block each): CALL_BATCHES batches, fewer where the run is too short to give each
        actor two calls (so that no actor ends the run far behind the others); whole batches, at least one (a call's
        clips drain at its end: a part of a batch would run part-filled in every call)."""
        fair = clips // (2 * actors) // batch_size * batch_size
        return max(batch_size, min(batch_size * cls.CALL_BATCHES, fair))

    def __call__(self, batch: dict) -> Iterator[dict]:
        from concurrent.futures import ThreadPoolExecutor

        from v2v.model.continuous import fill_order

        rows, done = _rows(batch), []
        # longest first within each LoRA set's run, so that the call's last clips finish close together
        rows = [rows[i] for i in fill_order([row_steps(r) for r in rows], [_text(r, "lora") for r in rows])]
        m = self.metrics
        encoders = max(1, min(self.ENCODE_THREADS, self.cfg.batch_size))
        with ThreadPoolExecutor(1, "v2v-decode") as dec, ThreadPoolExecutor(encoders, "v2v-encode") as enc:
            decoded = Decoded(rows, lambda row: decode(row, self.cfg.resize), dec,
                              ahead=self.DECODE_AHEAD * self.cfg.batch_size, metrics=m)
            if m:
                m.waiting_for_model(len(rows))
            t0 = time.perf_counter()
            written = collections.deque()
            for row in self.restyle.stream(decoded):
                written.append(enc.submit(encode, row, self.cfg))
                while written and written[0].done():
                    done.append(written.popleft().result())
                    yield _batch(done[-1:], batch)
            model_s = time.perf_counter() - t0  # the stream's time: the model's, less any wait for decoding
            while written:
                done.append(written.popleft().result())
                yield _batch(done[-1:], batch)
        if m:
            m.batch(_batch(done, batch), model_s, sum(row_steps(r) for r in done if r["status"] == "ok"))


def row_steps(row: dict) -> int:
    """A clip row's denoising steps (as sampler.schedule leaves them); 0 for a row whose settings are not numbers
    (it fails as a row when it comes to be admitted)."""
    try:
        return denoising_steps(int(row["num_inference_steps"]), float(row["strength"]))
    except (KeyError, TypeError, ValueError):
        return 0


class Decoded:
    """A call's rows, in order, decoded on `pool` (one thread) at most `ahead` clips ahead of what the restyle
    stream has read: a clip's frames are 13 MB at 576x320x24, and the stream itself holds the clips it waits to
    admit. `ready()`: whether the next one is decoded, so that the stream starts its first forward once its free
    slots can be filled rather than after decoding every clip it may read ahead."""

    def __init__(self, rows: list[dict], decode_row, pool, ahead: int, metrics=None):
        if ahead < 1:
            raise ValueError(f"Decoded: ahead must be >= 1, got {ahead}")
        self.rows, self.decode_row, self.pool, self.ahead = collections.deque(rows), decode_row, pool, ahead
        self.futures: collections.deque = collections.deque()
        self.metrics = metrics
        self._submit()

    def _submit(self) -> None:
        while self.rows and len(self.futures) < self.ahead:
            self.futures.append(self.pool.submit(self.decode_row, self.rows.popleft()))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if not self.futures:
            raise StopIteration
        row = self.futures.popleft().result()
        self._submit()
        if self.metrics:
            self.metrics.waiting_for_model(-1)
        return row

    def ready(self) -> bool:
        return not self.futures or self.futures[0].done()


def encode(row: dict, cfg: JobConfig) -> dict:
    """Write one restyled clip to clips/<id>/<clip>.<ext> atomically; drops its frames."""
    out = {k: v for k, v in row.items() if k != "frames"}
    out.update(output=None, output_sha256=None, output_bytes=None, encode_s=0.0, status="failed")
    if isinstance(row.get("error"), str):
        return out
    rel = clip_path(row["id"], int(row["clip_index"]), cfg.codec)
    t0 = time.perf_counter()
    try:
        span = (float(row["start_s"]), float(row["end_s"]))
        target = join(cfg.output, rel)
        sha, size = retrying(lambda: write_video(row["frames"], target, float(row["fps"]), cfg.codec, cfg.crf,
                                                 cfg.preset, audio_span=span,
                                                 audio_from=row["video"] if cfg.audio else None), target)
    except (OSError, VideoError, ValueError) as e:  # full disk, read-only target, unwritable store, encoder
        out["error"] = f"encode: {type(e).__name__}: {e}"
        return out
    out.update(output=rel, output_sha256=sha, output_bytes=size, encode_s=time.perf_counter() - t0, status="ok")
    return out
