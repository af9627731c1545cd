"""Load a video-to-video model's components: a diffusers folder, an fsspec URI of one, a hub id, or `tiny`.

Every source ends as a local folder in the diffusers layout, and one function loads that folder. Weights
are safetensors only unless pickles are explicitly allowed; no remote code is ever run.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from v2v import config
from v2v.config import SCHEDULERS

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Family:
    """What the job knows of a model family before loading any weights: its parts, clip geometry and schedulers."""

    name: str
    denoiser: str  # the component that denoises: its folder in the model and its attribute on the components
    native: tuple[int, int, int]  # (width, height, frames) where the folder has no v2v.json
    frame_step: int  # clip frame counts are frame_step * k + 1 (1: any count)
    side: int  # frame sides are multiples of this
    flow: bool  # flow matching (schedulers: FLOW_SCHEDULERS) or noise prediction (any but FlowMatchEuler)
    text: str  # its text encoder (textual-inversion embeddings are for CLIP only)

    @property
    def parts(self) -> tuple[str, ...]:
        return (self.denoiser, "vae", "text_encoder", "tokenizer", "scheduler")


ZEROSCOPE = Family("zeroscope", "unet", (576, 320, 24), 1, 8, flow=False, text="CLIP")
WAN = Family("wan", "transformer", (832, 480, 81), 4, 16, flow=True, text="UMT5")
# Schedulers that can run a flow-matching model (the first two with flow sigmas, from the folder's config).
FLOW_SCHEDULERS = ("UniPCMultistepScheduler", "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler")
TINY_MODELS = {"tiny": ZEROSCOPE, "tiny-wan": WAN}


def family_of_index(index: dict) -> Family:
    """A model's family from its model_index.json: Wan's pipelines, else the zeroscope / ModelScope UNet3D."""
    return WAN if str(index.get("_class_name", "")).startswith("Wan") else ZEROSCOPE


class ModelError(ValueError):
    """A model reference that cannot be resolved or loaded; the message says which and why."""


@dataclass(kw_only=True)
class Loaded:
    """What a family's loaded components carry besides their modules."""

    family: ClassVar[Family]
    reference: str = ""  # what the user asked for: "tiny", a folder, a URI or a hub id
    folder: Path | None = None  # the local folder it was loaded from
    width: int = 0  # native clip geometry, the defaults for planning and decoding
    height: int = 0
    frames: int = 0

    @property
    def device(self):
        return getattr(self, self.family.denoiser).device

    @property
    def dtype(self):
        return getattr(self, self.family.denoiser).dtype

    @functools.cached_property
    def sha256(self) -> str:
        """model_fingerprint of the folder: which weights ran (index rows), what compiled packages are for."""
        return model_fingerprint(self.folder)


@dataclass
class Components(Loaded):
    """The zeroscope / ModelScope family: UNet3D, the SD VAE, CLIP."""

    family: ClassVar[Family] = ZEROSCOPE
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def default_cache_dir() -> Path:
    return Path(os.environ.get("V2V_CACHE", Path.home() / ".cache" / "v2v"))


def model_source(reference: str) -> tuple[str, str]:
    """What a model reference names, read off the string (and whether a local path exists), nothing fetched:
    ("tiny" | "uri" | "folder" | "hub", the reference without a file:// prefix); "tiny" for tiny and tiny-wan."""
    if reference in TINY_MODELS:
        return "tiny", reference
    ref = reference[len("file://") :] if reference.startswith("file://") else reference
    if "://" in ref:
        return "uri", ref
    if Path(ref).exists():
        return "folder", ref
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        return "hub", ref
    raise ModelError(f"model {reference!r}: no such folder, and not 'tiny', 'tiny-wan', a URI (s3://...) or a hub id "
                     "(org/name)")


def resolve_model(reference: str, cache_dir: str | Path | None = None) -> Path:
    """Turn a model reference into a local diffusers folder, fetching it once if it is remote."""
    from v2v.model.tiny import tiny_model_dir, tiny_wan_dir

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    kind, ref = model_source(reference)
    if kind == "tiny":
        return tiny_wan_dir(cache) if ref == "tiny-wan" else tiny_model_dir(cache)
    if kind == "uri":
        return _fetch_fsspec(ref, cache)
    if kind == "folder":
        return Path(ref).resolve()
    return _fetch_hub(ref, cache)


def check_model(reference: str, scheduler: str | None = None) -> Family:
    """What the driver can check of a model before anything runs, reading no weights and downloading nothing:
    a folder (local or a URI) holds model_index.json, anything else is a tiny model or a hub id (`model_source`),
    and the scheduler fits the model's family. Returns the family. Without it a mistyped path surfaced as each
    actor's start failing inside Ray."""
    family = model_family(reference)
    if scheduler is not None:
        check_scheduler(scheduler, family)
    return family


def model_family(reference: str, cache_dir: str | Path | None = None) -> Family:
    """The family of the model a reference names, from its model_index.json (fetched alone where remote); for a
    hub id not in the cache, from its name (Wan's repositories are named Wan...)."""
    kind, ref = model_source(reference)
    if kind == "tiny":
        return TINY_MODELS[ref]
    if kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        index = try_to_load_from_cache(ref, "model_index.json", cache_dir=str(cache / "hub"))
        if isinstance(index, str):
            return family_of_index(json.loads(Path(index).read_text()))
        return WAN if re.search(r"(^|/)wan", ref, re.IGNORECASE) else ZEROSCOPE
    import fsspec

    fs, root = fsspec.core.url_to_fs(ref)
    index = f"{root.rstrip('/')}/model_index.json"
    if not fs.exists(index):
        raise ModelError(f"model {reference!r}: no model_index.json there; expected a folder in the diffusers layout")
    with fs.open(index, "r") as f:
        return family_of_index(json.load(f))


def model_version(reference: str) -> str:
    """What tells one version of a model from the next without reading its weights: for a folder or a URI, every
    file's relative path, size and modification time (etag on object stores); `tiny`, its build's version; a hub
    id, the id (its snapshot is whatever the hub cache holds). A model replaced at the same place is another one."""
    from v2v.core.storage import info_version, url_to_fs
    from v2v.model.tiny import TINY_VERSION, TINY_WAN_VERSION

    kind, ref = model_source(reference)
    if kind == "tiny":
        return f"tiny-wan-v{TINY_WAN_VERSION}" if ref == "tiny-wan" else f"tiny-v{TINY_VERSION}"
    if kind == "hub":
        return ref
    fs, root = url_to_fs(ref)
    root = root.rstrip("/")
    listing = sorted((p[len(root) + 1:], info_version(info)) for p, info in fs.find(root, detail=True).items()
                     if not p.rsplit("/", 1)[-1].startswith("."))
    return hashlib.sha256(repr(listing).encode()).hexdigest()[:16]


def _fetch_fsspec(uri: str, cache: Path) -> Path:
    """The model at `uri` as a local folder: one cache folder per version of it (`model_version`), so a model
    replaced at the same URI is fetched again. Where the store cannot be listed now, the copy fetched last."""
    import fsspec

    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    fs, root = fsspec.core.url_to_fs(uri)
    try:
        found = fs.exists(f"{root.rstrip('/')}/model_index.json")
        version = model_version(uri) if found else None
    except OSError as e:  # unreachable: the last copy, if any
        found, version = False, None
        logger.warning("model %s: cannot list it (%s)", uri, e)
    if not found:
        kept = sorted((p for p in (cache / "models").glob(f"{name}-*") if (p / "model_index.json").exists()),
                      key=lambda p: p.stat().st_mtime)
        if kept:
            logger.warning("model %s: not readable there now; using the copy fetched last, %s", uri, kept[-1])
            return kept[-1]
        raise ModelError(f"model {uri!r}: no model_index.json there; expected a folder in the diffusers layout")
    final = cache / "models" / f"{name}-{version}"
    if (final / "model_index.json").exists():
        return final

    def fetch(tmp: Path) -> None:
        logger.info("model %s: fetching it into %s", uri, final)
        fs.get(root.rstrip("/") + "/", str(tmp), recursive=True)

    return publish_folder(final, fetch)


def publish_folder(final: Path, fill) -> Path:
    """A model folder at `final`, written whole by fill(tmp) into a temporary folder beside it, then renamed into
    place: a half-written folder never looks complete. One process of a machine fills it: the restyle actors of a
    many-GPU node start together, and each fetching its own copy of a 30 GB model would multiply the download and
    the disk it takes; the others wait on a lock beside it, then find it whole. (Across machines on a shared disk,
    where a lock may not hold, a process racing to build the same folder loses cleanly to the first.)"""
    from v2v.core.storage import machine_lock

    with machine_lock(final.parent / f".{final.name}.lock"):
        if (final / "model_index.json").exists():  # built by another process while this one waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        try:
            fill(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "model_index.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fetch_hub(repo_id: str, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    try:  # honours HF_HUB_OFFLINE: then only an already-cached snapshot is returned
        return Path(
            snapshot_download(
                repo_id,
                cache_dir=cache / "hub",
                allow_patterns=["*.json", "*.txt", "*.safetensors", "tokenizer/*", "scheduler/*"],
            )
        )
    except Exception as e:  # the hub client raises many types; all mean "not available here"
        raise ModelError(f"model {repo_id!r}: not a local folder and not fetchable from the hub ({e})") from e


def scheduler_class_name(name: str) -> str:
    cls_name = config.scheduler_class_name(name)
    if cls_name is None:
        raise ModelError(f"scheduler {name!r} is unknown; choose one of {sorted(SCHEDULERS)}")
    return cls_name


def check_scheduler(name: str, family: Family) -> str:
    """The diffusers class a scheduler name stands for, if it can run `family`'s models. Raises ModelError."""
    cls_name = scheduler_class_name(name)
    if not _runs(cls_name, family):
        fits = sorted(k for k, v in SCHEDULERS.items() if _runs(v, family))
        raise ModelError(f"scheduler {name!r} ({cls_name}) cannot run a {family.name} model "
                         f"({'flow matching' if family.flow else 'noise prediction'}); choose one of {fits}")
    return cls_name


def _runs(cls_name: str, family: Family) -> bool:
    return cls_name in FLOW_SCHEDULERS if family.flow else cls_name != "FlowMatchEulerDiscreteScheduler"


def scheduler_class(name: str):
    import diffusers

    return getattr(diffusers, scheduler_class_name(name))


def make_scheduler(base_scheduler, name: str | None):
    """The folder's scheduler, or the named one built from its config (so betas, offsets and a flow model's shift
    carry over). Raises ModelError for a scheduler that cannot run the folder's kind of model."""
    if name is None:
        return base_scheduler
    cfg = dict(base_scheduler.config)
    flow = type(base_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" or bool(cfg.get("use_flow_sigmas"))
    cls = scheduler_class(check_scheduler(name, WAN if flow else ZEROSCOPE))
    if flow:  # FlowMatchEuler calls the shift `shift`; the multistep solvers `flow_shift`, with flow sigmas on
        shift = cfg.get("flow_shift", cfg.get("shift", 1.0))
        cfg.update(shift=shift, flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction")
        takes = inspect.signature(cls.__init__).parameters
        cfg = {k: v for k, v in cfg.items() if k in takes}
    return cls.from_config(cfg)


def _check_folder(folder: Path, allow_pickle: bool) -> Family:
    """The folder's family, once it holds every part of it with weights (safetensors unless pickles are allowed)."""
    index_file = folder / "model_index.json"
    if not index_file.exists():
        raise ModelError(f"model folder {folder}: model_index.json is missing; is this a diffusers model folder?")
    index = json.loads(index_file.read_text())
    family = family_of_index(index)
    missing = [c for c in family.parts if c not in index or not (folder / c).is_dir()]
    if missing:
        raise ModelError(f"model folder {folder}: missing component(s) {missing}; a {family.name} model needs "
                         f"{list(family.parts)}")
    if family is WAN and allow_pickle:
        raise ModelError(f"model folder {folder}: Wan models load from safetensors only (--allow-pickle is for the "
                         "zeroscope family)")
    for name in family.parts[:3]:
        sub = folder / name
        if any(sub.glob("*.safetensors")):
            continue
        pickled = [p.name for p in sub.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if not pickled:
            raise ModelError(f"model folder {folder}: {name}/ holds no weights")
        if not allow_pickle:
            raise ModelError(
                f"model folder {folder}: {name}/ has only pickled weights ({pickled[0]}); pickles can run code "
                "when loaded. Convert them to safetensors, or pass allow_pickle=True (--allow-pickle) if you trust them"
            )
    return family


def native_geometry(folder: Path) -> tuple[int, int, int]:
    """(width, height, frames) a model was trained for: v2v.json in the folder, else its family's."""
    meta = folder / "v2v.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        return int(m["width"]), int(m["height"]), int(m["frames"])
    return family_of_index(json.loads((folder / "model_index.json").read_text())).native


def load_components(
    reference: str,
    device: str = "cpu",
    dtype: str = "float32",
    scheduler: str | None = None,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
) -> Loaded:
    """Resolve `reference` to a local folder and load its five components on `device` in `dtype`: Components for
    the zeroscope family, v2v.model.wan.WanComponents for Wan."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch_dtype = parse_dtype(dtype)
    folder = resolve_model(reference, cache_dir)
    if _check_folder(folder, allow_pickle) is WAN:
        from v2v.model.wan import load_wan_components

        return load_wan_components(folder, device, dtype, scheduler, reference=reference)
    safe = not allow_pickle or None  # None: prefer safetensors, fall back to a pickle
    kw = dict(torch_dtype=torch_dtype, use_safetensors=safe)
    unet = UNet3DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch_dtype, use_safetensors=safe)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    sched_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    folder_sched = scheduler_class(sched_config["_class_name"]).from_pretrained(folder, subfolder="scheduler")
    for m in (unet, vae, text_encoder):
        m.to(device).eval().requires_grad_(False)
    width, height, frames = native_geometry(folder)
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=make_scheduler(folder_sched, scheduler),
        reference=reference,
        folder=folder,
        width=width,
        height=height,
        frames=frames,
    )


def parse_dtype(dtype: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ModelError(f"dtype {dtype!r} is unknown; choose float32, float16 or bfloat16")
    return table[dtype]


def model_fingerprint(folder: Path, cache_dir: str | Path | None = None) -> str:
    """sha256 over every file's relative path and content: identifies exactly which weights ran.

    Hashing GBs of weights takes seconds, so the result is cached (under the cache dir, keyed by the folder)
    with each file's size and mtime; an actor's later starts reuse it while the files are unchanged.
    """
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    stat = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) / "fingerprints"
    entry = cache / (hashlib.sha256(str(folder).encode()).hexdigest()[:16] + ".json")
    try:
        known = json.loads(entry.read_text())
        if known["stat"] == stat:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stat": stat, "sha256": digest}))
        os.replace(tmp, entry)
    except OSError:  # a read-only cache only costs the next start the hashing again
        pass
    return digest


def model_geometry(reference: str) -> tuple[int, int, int]:
    """(width, height, frames) native to a model, read without loading (or fetching) its weights: its v2v.json,
    else its family's."""
    import fsspec

    from v2v.model.tiny import TINY_FRAMES, TINY_SIZE, TINY_WAN_FRAMES, TINY_WAN_SIZE

    kind, ref = model_source(reference)
    if kind == "tiny":
        return (TINY_WAN_SIZE, TINY_WAN_SIZE, TINY_WAN_FRAMES) if ref == "tiny-wan" else (TINY_SIZE, TINY_SIZE,
                                                                                         TINY_FRAMES)
    if kind == "hub":
        return model_family(reference).native
    try:
        with fsspec.open(ref.rstrip("/") + "/v2v.json", "r") as f:
            m = json.load(f)
        return int(m["width"]), int(m["height"]), int(m["frames"])
    except FileNotFoundError:
        return model_family(reference).native
