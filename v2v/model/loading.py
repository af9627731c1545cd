"""Load a video-to-video model's components: a diffusers folder, an fsspec URI of one, a hub id, or `tiny`.

Every source ends as a local folder in the diffusers layout, and one function loads that folder. Weights
are safetensors only unless pickles are explicitly allowed; no remote code is ever run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from v2v import config
from v2v.config import SCHEDULERS

logger = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


# Native clip geometry (width, height, frames) of the zeroscope family; a folder may say otherwise in v2v.json.
_ZEROSCOPE_NATIVE = (576, 320, 24)


class ModelError(ValueError):
    """A model reference that cannot be resolved or loaded; the message says which and why."""


@dataclass
class Components:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object
    reference: str  # what the user asked for: "tiny", a folder, a URI or a hub id
    folder: Path  # the local folder it was loaded from
    width: int  # native clip geometry, the defaults for planning and decoding
    height: int
    frames: int

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    @functools.cached_property
    def sha256(self) -> str:
        """model_fingerprint of the folder: which weights ran (index rows), what compiled packages are for."""
        return model_fingerprint(self.folder)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def default_cache_dir() -> Path:
    return Path(os.environ.get("V2V_CACHE", Path.home() / ".cache" / "v2v"))


def model_source(reference: str) -> tuple[str, str]:
    """What a model reference names, read off the string (and whether a local path exists), nothing fetched:
    ("tiny" | "uri" | "folder" | "hub", the reference without a file:// prefix)."""
    if reference == "tiny":
        return "tiny", reference
    ref = reference[len("file://") :] if reference.startswith("file://") else reference
    if "://" in ref:
        return "uri", ref
    if Path(ref).exists():
        return "folder", ref
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        return "hub", ref
    raise ModelError(f"model {reference!r}: no such folder, and not 'tiny', a URI (s3://...) or a hub id (org/name)")


def resolve_model(reference: str, cache_dir: str | Path | None = None) -> Path:
    """Turn a model reference into a local diffusers folder, fetching it once if it is remote."""
    from v2v.model.tiny import tiny_model_dir

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    kind, ref = model_source(reference)
    if kind == "tiny":
        return tiny_model_dir(cache)
    if kind == "uri":
        return _fetch_fsspec(ref, cache)
    if kind == "folder":
        return Path(ref).resolve()
    return _fetch_hub(ref, cache)


def check_model(reference: str, scheduler: str | None = None) -> None:
    """What the driver can check of a model before anything runs, reading no weights and downloading nothing:
    a folder (local or a URI) holds model_index.json, anything else is `tiny` or a hub id (`model_source`), and
    the scheduler name is known. Without it a mistyped path surfaced as each actor's start failing inside Ray."""
    if scheduler is not None:
        scheduler_class_name(scheduler)
    kind, ref = model_source(reference)
    if kind not in ("uri", "folder"):
        return  # tiny, or a hub id: resolved (or found in the cache, offline) where the actors load it
    import fsspec

    fs, root = fsspec.core.url_to_fs(ref)
    index = f"{root.rstrip('/')}/model_index.json"
    if not fs.exists(index):
        raise ModelError(f"model {reference!r}: no model_index.json there; expected a folder in the diffusers layout")
    with fs.open(index, "r") as f:
        pipeline = json.load(f).get("_class_name", "")
    if pipeline.startswith("Wan"):
        raise ModelError(f"model {reference!r} is a Wan model ({pipeline}): the job runs the zeroscope / ModelScope "
                         f"family (UNet3D) only so far; Wan runs through v2v.model.wan in Python")


def model_version(reference: str) -> str:
    """What tells one version of a model from the next without reading its weights: for a folder or a URI, every
    file's relative path, size and modification time (etag on object stores); `tiny`, its build's version; a hub
    id, the id (its snapshot is whatever the hub cache holds). A model replaced at the same place is another one."""
    from v2v.core.storage import info_version, url_to_fs
    from v2v.model.tiny import TINY_VERSION

    kind, ref = model_source(reference)
    if kind == "tiny":
        return f"tiny-v{TINY_VERSION}"
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
    return publish_folder(final, lambda tmp: fs.get(root.rstrip("/") + "/", str(tmp), recursive=True))


def publish_folder(final: Path, fill) -> Path:
    """A model folder at `final`, written whole by fill(tmp) into a temporary folder beside it, then renamed into
    place: a half-written folder never looks complete, and a process racing to build the same one loses cleanly
    to the first (whose folder then holds model_index.json)."""
    final.parent.mkdir(parents=True, exist_ok=True)
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


def scheduler_class(name: str):
    import diffusers

    return getattr(diffusers, scheduler_class_name(name))


def make_scheduler(base_scheduler, name: str | None):
    """The folder's scheduler, or the named one built from its config (so betas and offsets carry over)."""
    if name is None:
        return base_scheduler
    return scheduler_class(name).from_config(base_scheduler.config)


def _check_folder(folder: Path, allow_pickle: bool) -> None:
    index_file = folder / "model_index.json"
    if not index_file.exists():
        raise ModelError(f"model folder {folder}: model_index.json is missing; is this a diffusers model folder?")
    index = json.loads(index_file.read_text())
    missing = [c for c in COMPONENTS if c not in index or not (folder / c).is_dir()]
    if missing:
        raise ModelError(f"model folder {folder}: missing component(s) {missing}; a video-to-video model needs {list(COMPONENTS)}")
    for name in ("unet", "vae", "text_encoder"):
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


def native_geometry(folder: Path) -> tuple[int, int, int]:
    """(width, height, frames) a model was trained for: v2v.json in the folder, else by family."""
    meta = folder / "v2v.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        return int(m["width"]), int(m["height"]), int(m["frames"])
    return _ZEROSCOPE_NATIVE


def load_components(
    reference: str,
    device: str = "cpu",
    dtype: str = "float32",
    scheduler: str | None = None,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
) -> Components:
    """Resolve `reference` to a local folder and load its five components on `device` in `dtype`."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch_dtype = parse_dtype(dtype)
    folder = resolve_model(reference, cache_dir)
    _check_folder(folder, allow_pickle)
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
    """(width, height, frames) native to a model, read without loading (or fetching) its weights."""
    import fsspec

    from v2v.model.tiny import TINY_FRAMES, TINY_SIZE

    kind, ref = model_source(reference)
    if kind == "tiny":
        return TINY_SIZE, TINY_SIZE, TINY_FRAMES
    if kind == "hub":
        return _ZEROSCOPE_NATIVE  # the family's default
    try:
        with fsspec.open(ref.rstrip("/") + "/v2v.json", "r") as f:
            m = json.load(f)
        return int(m["width"]), int(m["height"]), int(m["frames"])
    except FileNotFoundError:
        return _ZEROSCOPE_NATIVE
