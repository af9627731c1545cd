"""The job's one typed config: JobConfig, with the speed layer's switches in its `speed` section (SpeedSettings).

Flags (jobs/restyle.py) and YAML files both fill it; v2v.job.resources turns it into what the Ray stages ask for.
It knows neither Ray nor torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting that cannot work; the message names it."""


# Scheduler names a user may give (--scheduler, a manifest row's `scheduler`; case-insensitive), mapped to
# diffusers classes. Class names work too.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "heun": "HeunDiscreteScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",  # flow-matching models (Wan) only
}


def scheduler_class_name(name: str) -> str | None:
    """The diffusers class a scheduler name stands for, or None for a name that is not one of SCHEDULERS'."""
    cls_name = SCHEDULERS.get(name.lower(), name)
    return cls_name if cls_name in SCHEDULERS.values() else None


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """How many of its `num_inference_steps` a clip at `strength` runs: the reference's
    `min(int(steps * strength), steps)`, the schedule's start step. The manifest check refuses a row where it is 0."""
    return min(int(num_inference_steps * strength), num_inference_steps)


@dataclass
class JobConfig:
    # Where things are.
    manifest: str = ""  # Parquet, CSV, JSON Lines or a JSON array: a file, folder or glob, on any fsspec filesystem
    output: str = ""  # output root URI: clips/, videos/, index/, job.json
    model: str = "tiny"  # "tiny", a diffusers folder, an fsspec URI of one, or a hub id

    # Defaults for manifest rows that leave them empty.
    prompt: str | None = None  # None: every row must have a prompt
    negative_prompt: str = ""
    strength: float = 0.6  # fraction of the schedule to run: higher departs further from the input
    steps: int = 40  # num_inference_steps; strength x steps UNet steps actually run
    guidance_scale: float = 15.0  # zeroscope's recommendation; <= 1 turns classifier-free guidance off
    seed: int = 0  # job seed: rows without a seed get hash(seed, id, clip index)
    eta: float = 0.0
    scheduler: str | None = None  # None: the model folder's own
    clip_skip: int | None = None
    # Adapters for rows that give none: LoRA files [{"uri": ..., "scale": ...}] and textual-inversion embeddings
    # [{"uri": ..., "token": ...}] (safetensors), as a list or its JSON text.
    lora: str | list | None = None
    embeddings: str | list | None = None

    # Planning and decoding (None = the model's native value).
    clip_frames: int | None = None
    clip_stride: int | None = None
    min_frames: int | None = None  # shorter trailing remainders are dropped (recorded as 'skipped')
    # A video's trailing remainder: "overlap" restyles a whole clip ending at the video's end, the frames before the
    # remainder seen as context and cut from the output (the model's own clip shape, no frames cut to fit it);
    # "short" restyles the remainder alone as a shorter clip.
    last_clip: str = "overlap"
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    resize: str = "cover"  # cover (scale + center-crop), pad (letterbox) or stretch
    max_clips: int | None = None

    # Encoding.
    codec: str = "h264"  # h264, h265, av1 or ffv1 (lossless)
    crf: int | None = None
    preset: str | None = None
    audio: bool = False  # copy the matching segment of the source's audio into each clip
    stitch: bool = False  # also write videos/<id>.<ext> from each video's clips
    # previews/<id>.jpg (preview_frames source frames above the same restyled) and previews/index.html
    preview: bool = False
    preview_frames: int = 4

    # Execution. More clips per batch use the GPU better but need more memory.
    # auto: cuda when the cluster has GPUs or its autoscaler can add GPU nodes, else cpu. cuda never falls back to
    # the CPU: without a GPU the job waits for one up to gpu_wait_s, then stops (exit 2).
    device: str = "auto"
    gpu_wait_s: float = 900.0
    batch_size: int = 2
    # Most restyle actors: None: one per GPU the cluster has or can reach (1 on a CPU-only cluster). The pool grows
    # from the GPUs present at the start as nodes join, and shrinks as they leave.
    num_actors: int | None = None
    num_gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU actors)
    cpus_per_task: float = 1.0  # planning (probe) and stitching tasks
    # Host memory Ray reserves for each restyle actor (Ray Data's `memory=`), so that a node is not given more
    # actors than its RAM holds; None: none reserved. A GPU actor of zeroscope_v2_576w uses ~4.1 GiB of host RAM.
    actor_memory_gib: float | None = None
    dtype: str = "auto"  # auto: bfloat16 on GPU (float16 before Ampere), float32 on CPU; see job.resources.auto_dtype
    vae_chunk: int = 8  # frames per VAE call: bounds memory regardless of batch x frames
    allow_pickle: bool = False  # load pickled (.bin) weights; only for checkpoints you trust
    # One UNet forward per clip, and a fixed number of CPU threads per actor, so a clip's bits never depend on its
    # batch neighbours or the actor count (batched kernels, and kernels on more threads, round differently). None: on
    # for CPU actors (little to gain from batching there), off on GPUs (where batching pays and results agree to
    # float rounding instead).
    batch_invariant: bool | None = None
    # A URI every machine of the cluster reaches (s3://, gs://, a shared folder) where actors share their stored
    # compiled parts (v2v.speed.shared_cache): an actor whose machine has not compiled the model fetches them
    # instead of compiling; one that compiled them puts them there. None: each machine compiles its own. Trust it
    # as you trust the model (it holds code).
    shared_compile_cache: str | None = None
    # The speed layer's switches (YAML section `speed:`, command line `--speed name=value`).
    speed: SpeedSettings = field(default_factory=lambda: SpeedSettings())

    # Failure handling.
    max_failures: float = 0  # allowed failed clips: a count, or a fraction of planned clips when < 1
    # Also redo clips whose last attempt failed for their own sake (those the store or a lost actor failed are redone
    # by any rerun: core.index.retried_by_a_rerun).
    retry_failed: bool = False
    dry_run: bool = False  # plan and report the work, load no model
    # Remove the index rows and files of earlier runs' clips that this run does not plan (of videos the manifest does
    # not list: their clips, stitched videos and preview strips): the output then mirrors the run. Off: they are
    # kept as they were.
    drop_unlisted: bool = False
    # A manifest column v2v does not use whose name is close to one it does ('sede', 'promt') is an error, not a
    # warning.
    strict_columns: bool = False
    # A job's lease on its output expires this long after its last heartbeat (every quarter of it): shorter
    # lets a rerun take over sooner after a crash; too short risks taking over from a live but stalled job.
    lease_ttl_s: float = 120.0

    # Free-form extras recorded in job.json (e.g. a run name). Never used for behaviour.
    labels: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not self.manifest:
            raise ConfigError("manifest is required (--manifest)")
        if not self.output:
            raise ConfigError("output is required (--output)")
        checks = [
            ("strength", 0 < self.strength <= 1, "in (0, 1]"),
            ("steps", self.steps >= 1, ">= 1"),
            ("guidance_scale", math.isfinite(self.guidance_scale), "finite"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("clip_skip", self.clip_skip is None or self.clip_skip >= 0, ">= 0"),
            ("num_actors", self.num_actors is None or self.num_actors >= 1, ">= 1"),
            ("num_gpus_per_actor", self.num_gpus_per_actor is None or self.num_gpus_per_actor >= 0, ">= 0"),
            ("actor_memory_gib", self.actor_memory_gib is None or self.actor_memory_gib > 0, "> 0"),
            ("vae_chunk", self.vae_chunk >= 1, ">= 1"),
            ("preview_frames", 1 <= self.preview_frames <= 32, "in [1, 32]"),
            ("max_failures", self.max_failures >= 0, ">= 0"),
            ("lease_ttl_s", self.lease_ttl_s >= 1, ">= 1"),
            ("width", self.width is None or (self.width >= 8 and self.width % 8 == 0), "a multiple of 8"),
            ("height", self.height is None or (self.height >= 8 and self.height % 8 == 0), "a multiple of 8"),
            ("resize", self.resize in ("cover", "pad", "stretch"), "cover, pad or stretch"),
            ("last_clip", self.last_clip in ("overlap", "short"), "overlap or short"),
            ("device", self.device in ("auto", "cuda", "cpu"), "auto, cuda or cpu"),
            ("gpu_wait_s", self.gpu_wait_s >= 0, ">= 0"),
            ("codec", self.codec in ("h264", "h265", "av1", "ffv1"), "h264, h265, av1 or ffv1"),
            ("dtype", self.dtype in ("auto", "float32", "float16", "bfloat16"), "auto, float32, float16 or bfloat16"),
            ("seed", 0 <= self.seed < 2**63, "in [0, 2**63)"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"{name} must be {want}, got {getattr(self, name)!r}")

    def clip_shape(self, native: tuple[int, int, int]) -> tuple[int, int, int]:
        """(width, height, frames) of every clip: these settings where given, else the model's native ones."""
        return self.width or native[0], self.height or native[1], self.clip_frames or native[2]

    def allowed_failures(self, planned: int) -> int:
        return int(self.max_failures * planned) if self.max_failures < 1 else int(self.max_failures)

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        """Settings by name (a config file's), each checked against its field's type: a wrong one is a ConfigError
        naming it, not a TypeError deep in `validate` or the job."""
        import typing

        names = {f.name: f for f in dataclasses.fields(cls)}
        d = {k.replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(d) - set(names))
        if unknown:
            import difflib

            hints = [f"{u!r}: did you mean {close[0]!r}?" for u in unknown
                     if (close := difflib.get_close_matches(u, names, n=1, cutoff=0.75))]
            raise ConfigError(f"unknown setting(s) {unknown}" + (f" ({'; '.join(hints)})" if hints else "")
                              + f"; known: {sorted(names)}")
        if "speed" in d:
            d["speed"] = SpeedSettings.from_dict(d["speed"])
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            if name == "speed":
                continue
            allowed = typing.get_args(hints[name]) or (hints[name],)  # `int | None` -> (int, NoneType)
            if not any(_is_a(value, t) for t in allowed):
                want = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ConfigError(f"{name} must be {want}, got {value!r}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, text: str) -> "JobConfig":
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"the config file is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError("a config file must be a mapping of setting: value")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SpeedSettings:
    """The switches of the optional speed layer (v2v.speed), for experts: none changes what is computed beyond
    floating-point rounding. None means the default for the actor's device: `compile` on for GPU actors, off on
    the CPU, and every other switch follows `compile`. Their measured gains and costs are in
    benchmarks/RESULTS.md (decisions table)."""

    # torch.compile the UNet (and the VAE with compile_vae). Faster per clip on GPUs; the first start on a machine
    # compiles for minutes (beside the running actor: background_compile), later starts load what it stored
    # (precompile).
    compile: bool | None = None
    compile_vae: bool | None = None  # with compile: the VAE's encoder and decoder too (one more minute to compile)
    # With compile: save torch.compile's compiled functions in the compile cache, so that later starts load them
    # instead of tracing the model again (v2v.speed.stored).
    precompile: bool | None = None
    # With precompile: where neither the compile cache nor the shared one holds the stored parts (a machine's first
    # start), the actor starts without them, ready in seconds, while a subprocess compiles and stores them; the
    # actor takes them up between two steps once they are stored (v2v.speed.background). Off: it compiles before
    # it is ready.
    background_compile: bool | None = None
    # The UNet's temporal layers without permuted copies or layout conversions (v2v.speed.temporal).
    temporal_layers: bool | None = None
    # The temporal transformers' attention over the frames as one Triton kernel; SDPA where it does not apply
    # (CPU, float32) (v2v.speed.frame_attention).
    frame_attention: bool | None = None
    # GroupNorms of the UNet and the VAE from per-channel statistics combined per group (v2v.speed.group_norm).
    channel_stats: bool | None = None
    # A guided step's two halves share the UNet's layers before its first cross-attention, computed once
    # (v2v.speed.shared_prefix).
    shared_prefix: bool | None = None
    # The UNet's upsamplers (nearest 2x, then a 3x3 convolution) as four 2x2 convolutions, one per output phase
    # (v2v.speed.upsample).
    upsample_phases: bool | None = None
    # GPU, with compile: the compiled UNet's call recorded once as a CUDA graph and replayed (v2v.speed.cuda_graph).
    cuda_graphs: bool | None = None
    # GPU: cuDNN times each convolution shape's algorithms on first use and keeps the fastest. Off: its heuristics
    # pick, and an actor is ready a few seconds sooner.
    cudnn_benchmark: bool = True

    def resolved(self, device: str) -> "SpeedSettings":
        """Every None replaced by its default for an actor on `device` ("cuda" or "cpu")."""
        compile_ = self.compile if self.compile is not None else device == "cuda"
        follow = {name: compile_ if getattr(self, name) is None else getattr(self, name)
                  for name in COMPILE_SWITCHES}
        return dataclasses.replace(
            self, compile=compile_, **follow,
            compile_vae=compile_ and (self.compile_vae if self.compile_vae is not None else True),
            precompile=compile_ and (self.precompile if self.precompile is not None else True),
            background_compile=compile_ and (self.precompile is not False) and (
                self.background_compile if self.background_compile is not None else True))

    @classmethod
    def from_dict(cls, d) -> "SpeedSettings":
        """A config file's `speed:` mapping; each value a bool or null (the default)."""
        if not isinstance(d, dict):
            raise ConfigError(f"speed must be a mapping of switch: on/off, got {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k.replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown speed switch(es) {unknown}; known: {sorted(names)}")
        for name, value in d.items():
            if not (isinstance(value, bool) or (value is None and name != "cudnn_benchmark")):
                raise ConfigError(f"speed.{name} must be true or false, got {value!r}")
        return cls(**d)

    @classmethod
    def parse(cls, items: list[str], base: "SpeedSettings | None" = None) -> "SpeedSettings":
        """`--speed` values ("temporal_layers=off", "compile=on,cuda_graphs=off") over `base`: on/off, true/false,
        yes/no, 1/0, or auto (the device's default)."""
        words = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False,
                 "0": False, "auto": None}
        d = {}
        for item in (part.strip() for text in items for part in text.split(",") if part.strip()):
            name, sep, value = item.partition("=")
            if not sep or value.strip().lower() not in words:
                raise ConfigError(f"--speed {item!r}: want name=on|off|auto, e.g. --speed temporal_layers=off")
            d[name.strip()] = words[value.strip().lower()]
        if d.get("cudnn_benchmark", False) is None:
            d["cudnn_benchmark"] = True
        return cls.from_dict({**dataclasses.asdict(base or cls()), **d})


def _is_a(value, t: type) -> bool:
    """A config file's value as a setting of type t: YAML's ints serve float settings; bools are ints to Python
    but not to a config file."""
    if t is type(None):
        return value is None
    if isinstance(value, bool):
        return t is bool
    return isinstance(value, (int, float)) if t is float else isinstance(value, t)


# Speed switches that follow `compile` unless set.
COMPILE_SWITCHES = ("temporal_layers", "frame_attention", "channel_stats", "shared_prefix", "upsample_phases",
                    "cuda_graphs")
