"""The job's one typed config. Flags and YAML files both fill it; `resources` turns it into Ray settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting that cannot work; the message names it."""


@dataclass
class JobConfig:
    # Where things are.
    manifest: str = ""  # Parquet, CSV or JSON Lines: a file, folder or glob, on any fsspec filesystem
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

    # Planning and decoding (None = the model's native value).
    clip_frames: int | None = None
    clip_stride: int | None = None
    min_frames: int | None = None  # shorter trailing remainders are dropped (recorded as 'skipped')
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

    # Execution. More clips per batch use the GPU better but need more memory.
    batch_size: int = 2
    num_actors: int | None = None  # None: one per GPU in the cluster (1 on a CPU-only cluster)
    num_gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU actors)
    cpus_per_task: float = 1.0  # decode and encode tasks
    # Host memory Ray reserves for each restyle actor (Ray Data's `memory=`), so that a node is not given more
    # actors than its RAM holds; None: none reserved. A GPU actor of zeroscope_v2_576w used ~4.1 GiB on an H200
    # host (Ray Data's own estimate, printed as a warning at every GPU run without it).
    actor_memory_gib: float | None = None
    dtype: str = "auto"  # auto: bfloat16 on GPU (float16 before Ampere), float32 on CPU; see auto_dtype
    vae_chunk: int = 8  # frames per VAE call: bounds memory regardless of batch x frames
    allow_pickle: bool = False  # load pickled (.bin) weights; only for checkpoints you trust
    # One UNet forward per clip, so a clip's bits never depend on its batch neighbours (batched kernels round
    # differently). None: on for CPU actors (little to gain from batching there), off on GPUs (where
    # batching pays and results agree to float rounding instead).
    batch_invariant: bool | None = None
    # torch.compile the UNet. None: on for GPU actors (1.5x per clip on an H200; the first start on a machine
    # compiles for ~4 min, later starts load what it compiled: see precompile), off for CPU actors.
    compile: bool | None = None
    # With compile, also the VAE's encoder and decoder (None: yes; 5 % per clip on an H100, ~1 min more of
    # first compile).
    compile_vae: bool | None = None
    # With compile, build each compiled part ahead of time (AOTInductor) into a package in the compile cache:
    # later starts load it instead of tracing the model again (v2v.aot). None: off (see benchmarks/RESULTS.md).
    compile_aot: bool | None = None
    # With compile (not compile_aot), save each compiled part as torch.compile's own compiled function (dynamo's
    # precompile, v2v.aot.PrecompiledForward) in the compile cache: later starts load it instead of tracing the
    # model, with no C++ compiler. None: on with compile (an H200's second start 33 s against 58-66 s with the
    # kernel cache alone, the same speed per clip: benchmarks/RESULTS.md fifteenth section).
    precompile: bool | None = None
    # With precompile or compile_aot, a URI every machine of the cluster reaches (s3://, gs://, a shared folder)
    # where actors share their stored compiled parts (v2v.shared_cache): an actor whose machine has not compiled
    # them fetches them from there and starts as on a second start (a new node's first start); one that compiled
    # them puts them there. None: each machine compiles its own. Trust it as you trust the model (it holds code).
    shared_compile_cache: str | None = None
    channels_last: bool = False
    fuse_qkv: bool = False  # fused attention projections (one matrix product for q, k, v)
    # The UNet's temporal layers without permuted copies or layout conversions: GroupNorms from per-frame
    # statistics, Conv3d channels-last (v2v.temporal). None: on with compile (11 % per step on an H100), off
    # without (eager, it runs more kernels; not measured on GPUs).
    temporal_layers: bool | None = None
    # The temporal transformers' attention over the frames as one Triton kernel (v2v.frame_attention); SDPA
    # where the kernel does not apply (CPU, float32). None: on with compile (4.6 % per step on an H200, tenth
    # section of benchmarks/RESULTS.md), off without (eager GPU runs not measured with it).
    frame_attention: bool | None = None
    # The UNet's and the VAE's GroupNorms from per-channel statistics, combined per group (v2v.group_norm):
    # reductions over contiguous channels-last rows. None: on with compile (5 % per UNet step on an H200,
    # thirteenth section of benchmarks/RESULTS.md; the VAE 23 % faster, twenty-first), off without (eager GPU runs
    # not measured with it).
    channel_stats: bool | None = None
    # A guided step's two halves (unconditional, text) share the UNet's layers before its first cross-attention:
    # computed once on the clips' latents (v2v.unet; 7.1 % of a zeroscope step's FLOPs, half of it saved). None: on
    # with compile (a 4-clip step 3.7 % faster on an H200 through the first temporal convolution, 0.7 % more with
    # the first self-attention, benchmarks/RESULTS.md twenty-second and twenty-third sections), off without (eager
    # runs not measured with it).
    shared_prefix: bool | None = None
    # The UNet's upsamplers (nearest 2x, then a 3x3 convolution) as four 2x2 convolutions of their input, one per
    # output phase (v2v.upsample): 16 taps per input pixel instead of 36. None: on with compile (a 4-clip step 1 %
    # faster on an H200, benchmarks/RESULTS.md twenty-fourth section), off without (eager runs not measured with
    # it). The VAE's stay diffusers' (its decoder ran 23 % slower with them).
    upsample_phases: bool | None = None
    # GPU, with compile: the compiled UNet's call recorded once as a CUDA graph and replayed (v2v.cuda_graph): one
    # launch a step instead of ~2,000 from Python, the same kernels and bits. None: on with compile (a 4-clip step
    # 1.5 % faster on an H200, benchmarks/RESULTS.md twenty-fifth section); nothing on CPU actors.
    cuda_graphs: bool | None = None
    # GPU: cuDNN times each convolution shape's algorithms on its first call and keeps the fastest (benchmark
    # mode). Off: its heuristics pick, no search at start: on an H200 the same speed per clip and an actor ready
    # ~3 s sooner (benchmarks/RESULTS.md sixteenth section); on by default, as other cards are not measured.
    cudnn_benchmark: bool = True

    # Failure handling.
    max_failures: float = 0  # allowed failed clips: a count, or a fraction of planned clips when < 1
    retry_failed: bool = False  # also redo clips whose last attempt failed
    dry_run: bool = False  # plan and report the work, load no model
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
            ("max_failures", self.max_failures >= 0, ">= 0"),
            ("lease_ttl_s", self.lease_ttl_s >= 1, ">= 1"),
            ("width", self.width is None or (self.width >= 8 and self.width % 8 == 0), "a multiple of 8"),
            ("height", self.height is None or (self.height >= 8 and self.height % 8 == 0), "a multiple of 8"),
            ("resize", self.resize in ("cover", "pad", "stretch"), "cover, pad or stretch"),
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
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
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


def _is_a(value, t: type) -> bool:
    """A config file's value as a setting of type t: YAML's ints serve float settings; bools are ints to Python
    but not to a config file."""
    if t is type(None):
        return value is None
    if isinstance(value, bool):
        return t is bool
    return isinstance(value, (int, float)) if t is float else isinstance(value, t)


# The switches measured with compile only: on with it unless set. JobConfig and Resources fields, and
# v2v.perf.apply_perf_settings arguments, of these names.
COMPILE_SWITCHES = ("temporal_layers", "frame_attention", "channel_stats", "shared_prefix", "upsample_phases",
                    "cuda_graphs")


@dataclass(frozen=True)
class Resources:
    """What the Ray stages ask for; computed in one place from the config and the cluster."""

    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    cpus_per_task: float
    device: str
    dtype: str
    torch_threads: int  # per CPU actor, so actors do not fight over cores
    batch_invariant: bool
    compile: bool
    compile_vae: bool
    compile_aot: bool
    precompile: bool
    temporal_layers: bool
    frame_attention: bool
    channel_stats: bool
    shared_prefix: bool
    upsample_phases: bool
    cuda_graphs: bool


def auto_dtype(device: str, bf16_native: bool = True) -> str:
    """What `dtype="auto"` runs in. GPUs: bfloat16 where the card has it natively (Ampere and later), which on an
    H200 ran 2 % (eager) to 4 % (compiled) faster than float16 in the same run (RESULTS.md, eleventh section) and
    has float32's exponent range (no overflow to inf); its rounding is coarser (one compiled UNet step 0.011
    relative error against float32, float16 0.0013). Older GPUs: float16. CPU: float32."""
    if device != "cuda":
        return "float32"
    return "bfloat16" if bf16_native else "float16"


def resources(cfg: JobConfig, cluster: dict) -> Resources:
    """cluster: ray.cluster_resources() (e.g. {"CPU": 16, "GPU": 2})."""
    gpus = int(cluster.get("GPU", 0))
    cpus = max(1, int(cluster.get("CPU", 1)))
    gpus_per_actor = cfg.num_gpus_per_actor if cfg.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if gpus_per_actor > 0:
        num_actors = cfg.num_actors or max(1, int(gpus // gpus_per_actor))
        device = "cuda"
    else:
        num_actors = cfg.num_actors or 1
        device = "cpu"
    # The driver may have no GPU to ask: it assumes native bf16, and an actor on an older card falls back
    # (stages.Restyle).
    dtype = cfg.dtype if cfg.dtype != "auto" else auto_dtype(device)
    # CPU actors share the machine with decode/encode tasks: half the cores go to actors.
    cpus_per_actor = 1.0 if device == "cuda" else max(0.5, min(2.0, cpus / (2 * num_actors)))
    threads = max(1, int(cpus // max(1, num_actors))) if device == "cpu" else 4
    invariant = cfg.batch_invariant if cfg.batch_invariant is not None else device == "cpu"
    compile_ = cfg.compile if cfg.compile is not None else device == "cuda"
    compile_vae = compile_ and (cfg.compile_vae if cfg.compile_vae is not None else True)
    compile_aot = compile_ and bool(cfg.compile_aot)
    precompile = compile_ and not compile_aot and (cfg.precompile if cfg.precompile is not None else True)
    switches = {name: compile_ if getattr(cfg, name) is None else getattr(cfg, name) for name in COMPILE_SWITCHES}
    return Resources(num_actors, gpus_per_actor, cpus_per_actor, cfg.cpus_per_task, device, dtype, threads,
                     invariant, compile_, compile_vae, compile_aot, precompile, **switches)
