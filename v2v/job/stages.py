"""The job's stages as plain callables on batches of rows (dicts of columns). Ray wraps them in pipeline.py.

One clip's path: core.plan.plan_rows (probe + plan) -> decode -> Restyle (holds the model) -> encode, the last
three in one restyle actor (ClipWorker).
Each stage takes the columns it needs and adds its own; a clip that fails carries its `error` onward and
later stages pass it through untouched. Bad inputs become errors on rows; programmer errors raise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time

import numpy as np

from v2v.config import JobConfig
from v2v.core.index import clip_path
from v2v.core.storage import StorageError, join, retrying
from v2v.core.video import VideoError, decode_clip, write_video
from v2v.job.resources import Resources, auto_dtype

logger = logging.getLogger(__name__)

def decode(batch: dict, resize: str) -> dict:
    """Decode each clip's planned frames: adds `frames` uint8 (F, H, W, 3) and `decode_s`."""
    frames, secs, errors = [], [], _errors(batch)
    for i in range(len(batch["id"])):
        t0 = time.perf_counter()
        n, h, w = int(batch["num_frames"][i]), int(batch["height"][i]), int(batch["width"][i])
        arr = np.zeros((0, h, w, 3), np.uint8)
        if errors[i] is None:
            times = [(int(batch["start_frame"][i]) + k) / float(batch["fps"][i]) for k in range(n)]
            video = batch["video"][i]
            try:
                arr = retrying(lambda: decode_clip(video, times, w, h, resize), video)
            except (VideoError, StorageError) as e:
                errors[i] = f"decode: {e}"
        frames.append(arr)
        secs.append(time.perf_counter() - t0)
    return {**batch, "frames": _column(frames), "decode_s": np.array(secs), "error": np.array(errors, object)}


def _text(batch: dict, column: str, i: int) -> str:
    """A string column's value, "" where the batch lacks the column or holds null (NaN after pandas)."""
    v = batch[column][i] if column in batch else None
    return v if isinstance(v, str) else ""


def _errors(batch: dict) -> list:
    """The batch's error column as str-or-None (Ray hands an all-null string column over as NaN floats)."""
    return [e if isinstance(e, str) else None for e in batch["error"]]


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
        from v2v.speed import apply_speed_settings, warm_up

        torch.set_num_threads(res.torch_threads)
        self.cfg = cfg
        self.batch_invariant = res.batch_invariant
        # Seconds per start-up phase (logged; the benchmark's start-up rows show them): an actor's start is
        # mostly host CPU work (loading, tracing, compiling or loading cached kernels).
        self.start_s: dict[str, float] = {}
        with self._phase("imports"):  # diffusers and transformers: seconds on their own, apart from the load
            from diffusers import AutoencoderKL, UNet3DConditionModel  # noqa: F401
            from transformers import CLIPTextModel  # noqa: F401
        dtype = res.dtype
        if cfg.dtype == "auto" and res.device == "cuda":  # the driver assumed native bf16; this card may lack it
            dtype = auto_dtype("cuda", bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
        with self._phase("load"):
            self.components = c = load_components(cfg.model, device=res.device, dtype=dtype,
                                                  scheduler=cfg.scheduler, allow_pickle=cfg.allow_pickle)
        from v2v.model.adapters import Adapters

        self.adapters = Adapters(c)  # per-clip LoRAs and embeddings, merged in and out of these weights
        # Latents per UNet forward: cond + uncond for each clip of a batch (one clip when batch-invariant).
        unet_batch = 2 * (1 if res.batch_invariant else cfg.batch_size)
        with self._phase("switches"):
            self.stored = apply_speed_settings(c, res.speed, unet_batch=unet_batch, vae_chunk=cfg.vae_chunk,
                                               shared_cache=cfg.shared_compile_cache)
        if res.speed.compile:  # compile (or load the stored parts) now, not inside the first batch
            width, height, frames = cfg.clip_shape((c.width, c.height, c.frames))
            for part, secs in warm_up(c, unet_batch, frames, height, width).items():
                self.start_s[f"warm_up_{part}"] = secs
        with self._phase("fingerprint"):  # cached on disk; already taken where stored compiled parts are keyed by it
            self.model_sha256 = c.sha256
        logger.info("restyle actor ready: %s", self.start_report())
        self.scheduler_name = type(self.components.scheduler).__name__
        # Which actor restyled a clip (host/pid[/gpu]): with the restyle timestamps, per-actor busy time.
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if res.device == "cuda" else None
        self.worker = f"{socket.gethostname()}/{os.getpid()}" + (f"/gpu{gpu}" if gpu else "")

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

    def start_report(self) -> str:
        """Where the start went, and what each stored compiled part did (built, fetched, loaded or failed over)."""
        from v2v.speed import stored_status

        report = ", ".join(f"{k} {v:.1f} s" for k, v in self.start_s.items())
        if self.stored:
            report += "; stored parts: " + ", ".join(f"{k} {v}" for k, v in stored_status(self.stored).items())
        shared = next((p.shared for p in self.stored.values() if p.shared), None)
        if shared and shared.summary():
            report += f"; shared compile cache: {shared.summary()}"
        return report

    def __call__(self, batch: dict) -> dict:
        import torch

        from v2v.model.adapters import AdapterError
        from v2v.model.quality import signals
        from v2v.model.sampler import ClipSettings, SamplerInputError, restyle, to_uint8_checked
        from v2v.speed.fixed_shapes import unpadded

        n = len(batch["id"])
        errors = _errors(batch)
        frames_in = list(batch["frames"])
        frames_out: list[np.ndarray] = list(frames_in)
        secs = np.zeros(n)
        started, ended = np.full(n, np.nan), np.full(n, np.nan)  # unix times of the clip's batch
        quality = [{} for _ in range(n)]
        lora = [_text(batch, "lora", i) for i in range(n)]
        embeddings = [_text(batch, "embeddings", i) for i in range(n)]
        adapters = [""] * n
        todo = [i for i in range(n) if errors[i] is None]
        by_shape: dict[tuple, list[int]] = {}  # clips of one shape and one set of LoRAs share forwards
        for i in todo:
            by_shape.setdefault((frames_in[i].shape, lora[i]), []).append(i)
        alone: list[list[int]] = []  # groups of one clip split off a batch that ran out of memory
        for idx in by_shape.values():
            prompts = {}
            try:  # the group's LoRAs merged into the model; embeddings' tokens rewritten in its prompts
                self.adapters.use(self.adapters.refs(lora[idx[0]], "")[0])
                for i in idx:
                    prompts[i] = self.adapters.prompt(batch["prompt"][i], self.adapters.refs("", embeddings[i])[1])
                    adapters[i] = self.adapters.describe(lora[i], embeddings[i])
            except AdapterError as e:
                for i in idx:
                    errors[i] = f"adapter: {e}"
                continue
            groups = [idx]
            while groups:
                g = groups.pop()
                clips = [ClipSettings(prompt=prompts[i], seed=int(batch["seed"][i]),
                                      negative_prompt=batch["negative_prompt"][i] or "",
                                      strength=float(batch["strength"][i]),
                                      num_inference_steps=int(batch["num_inference_steps"][i]),
                                      guidance_scale=float(batch["guidance_scale"][i]), eta=self.cfg.eta,
                                      name=f"{batch['id'][i]}/{int(batch['clip_index'][i]):05d}") for i in g]
                video = torch.from_numpy(np.stack([frames_in[i] for i in g]))
                t0, wall0 = time.perf_counter(), time.time()
                try:
                    # a clip retried alone after its batch ran out of memory runs at its own size, unpadded
                    with unpadded() if g in alone else contextlib.nullcontext():
                        frames = restyle(self.components, video, clips, clip_skip=self.cfg.clip_skip,
                                         vae_chunk=self.cfg.vae_chunk, batch_invariant=self.batch_invariant,
                                         output="device_frames")
                    out, bad = to_uint8_checked(frames)
                except torch.cuda.OutOfMemoryError as e:
                    torch.cuda.empty_cache()
                    if len(g) > 1:  # the batch did not fit: each clip alone, at its own size
                        alone += [[i] for i in g]
                        groups += [[i] for i in g]
                        continue
                    errors[g[0]] = f"restyle: out of GPU memory even alone ({e})"
                    continue
                except (SamplerInputError, RuntimeError) as e:
                    if device_failed(e):  # the GPU is broken, not this clip: leave it to a fresh process
                        self._restart_or_give_up([batch["id"][i] + f"/{int(batch['clip_index'][i])}" for i in g], e)
                        for i in g:
                            errors[i] = f"restyle: the GPU failed on this clip {DEVICE_FAILURE_TRIES} times: {e}"
                        continue
                    if len(g) > 1:  # isolate the clip that fails; the others still get restyled
                        groups += [[i] for i in g]
                        continue
                    errors[g[0]] = f"restyle: {type(e).__name__}: {e}"
                    continue
                elapsed = time.perf_counter() - t0
                # A clip whose output holds NaN would be written as black frames and pass as ok: its row fails
                # instead. Clips of one forward do not mix, so its batch-mates stand.
                for j, i in enumerate(g):
                    if j in bad:
                        errors[i] = (f"restyle: the output holds NaN or infinite values ({self.components.dtype}); "
                                     "float16 can overflow where bfloat16 and float32 do not, else the model's "
                                     "weights or this clip's prompt embedding hold them")
                        continue
                    frames_out[i] = out[j]
                    # on the frames' device, beside them: the source once more (13 MB for 576x320x24), no decode
                    quality[i] = signals(frames[j], video[j].to(frames.device))
                    secs[i] = elapsed / len(g)
                    started[i], ended[i] = wall0, wall0 + elapsed
        return {**batch, "frames": _column(frames_out), "restyle_s": secs, "restyle_started_at": started,
                "restyle_finished_at": ended, "worker": np.array([self.worker] * n, object),
                **{k: np.array([q.get(k) for q in quality], object) for k in QUALITY_COLUMNS},
                "adapters": np.array(adapters, object),
                "error": np.array(errors, object),
                "scheduler": np.array([self.scheduler_name] * n, object),
                "model_sha256": np.array([self.model_sha256] * n, object)}


class ClipWorker:
    """What a restyle actor does with a batch of clip rows: decode (CPU) -> restyle (the model) -> encode and write
    (CPU). Ray Data takes `CALLS_AT_ONCE` calls of one actor at once (their rows in and out move on threads) and
    runs this one call at a time (calls on several threads at once were seen to stall Ray 2.60's actors): a clip is
    written seconds after it is restyled, and no clip is decoded more than a batch ahead of the model (frames never
    wait in Ray's object store). The lock keeps one batch in the model should calls run on several threads."""

    CALLS_AT_ONCE = 2

    def __init__(self, cfg: JobConfig, res: Resources):
        self.cfg = cfg
        self.restyle = Restyle(cfg, res)
        self._model = threading.Lock()  # one batch in the model at a time
        self.metrics = None  # a job.metrics.ActorMetrics where the worker runs as a Ray actor

    def __call__(self, batch: dict) -> dict:
        batch = decode(batch, self.cfg.resize)
        m = self.metrics
        if m:
            m.waiting_for_model(+1)
        with self._model:
            if m:
                m.waiting_for_model(-1)
            t0 = time.perf_counter()
            batch = self.restyle(batch)
            model_s = time.perf_counter() - t0
        out = encode(batch, self.cfg)
        if m:
            steps = sum(int(float(out["strength"][i]) * int(out["num_inference_steps"][i]))
                        for i in range(len(out["id"])) if out["status"][i] == "ok")
            m.batch(out, model_s, steps)
        return out


def encode(batch: dict, cfg: JobConfig) -> dict:
    """Write each restyled clip to clips/<id>/<clip>.<ext> atomically; drops the frames."""
    n = len(batch["id"])
    errors = _errors(batch)
    outputs, shas, sizes, secs, status = [None] * n, [None] * n, [None] * n, np.zeros(n), ["failed"] * n
    for i in range(n):
        if errors[i] is not None:
            continue
        rel = clip_path(batch["id"][i], int(batch["clip_index"][i]), cfg.codec)
        t0 = time.perf_counter()
        try:
            span = (float(batch["start_s"][i]), float(batch["end_s"][i]))
            target = join(cfg.output, rel)
            sha, size = retrying(lambda: write_video(batch["frames"][i], target, float(batch["fps"][i]), cfg.codec,
                                                     cfg.crf, cfg.preset, audio_span=span,
                                                     audio_from=batch["video"][i] if cfg.audio else None), target)
        except (OSError, VideoError, ValueError) as e:  # full disk, read-only target, unwritable store, encoder
            errors[i] = f"encode: {type(e).__name__}: {e}"
            continue
        outputs[i], shas[i], sizes[i], status[i] = rel, sha, size, "ok"
        secs[i] = time.perf_counter() - t0
    out = {k: v for k, v in batch.items() if k != "frames"}
    out.update(output=np.array(outputs, object), output_sha256=np.array(shas, object),
               output_bytes=np.array(sizes, object), encode_s=secs, error=np.array(errors, object),
               status=np.array(status, object))
    return out
