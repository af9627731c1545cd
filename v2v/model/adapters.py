"""Styles as adapters: LoRA weights for the denoiser and the text encoder, and textual-inversion embeddings, per clip.

LoRA files are diffusers' safetensors format: `unet.<module>.lora_A.weight` (rank, in), `unet.<module>.lora_B.weight`
(out, rank), optionally `unet.<module>.alpha` (a scalar; default: the rank), and the same under `text_encoder.`
(and `transformer.` for Wan's transformer).
A LoRA at `scale` changes a Linear's weight W to W + scale * alpha / rank * B @ A; several add up.

Adapters are merged into the loaded model's weights in place, for the clips that use them, and the untouched
weights are copied back before clips that use others (from a copy kept beside them, so no drift accumulates):
the compiled UNet sees the same tensors, only their values change, and the base model is never loaded again.
Embedding files hold one tensor, (vectors, hidden) or (hidden,), under any single name (or `emb_params`), as
diffusers' `load_textual_inversion` reads them; each is added to the tokenizer under a name of its own (two files
may claim the same token), and the row's token in its prompt is rewritten to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

from v2v.core.storage import sha256_file

logger = logging.getLogger(__name__)

COMPONENTS = ("unet", "transformer", "text_encoder")  # the UNet3D's, Wan's transformer's, the text encoder's
LOADED_KEPT = 16  # adapter files kept loaded per actor, least recently used dropped first


class AdapterError(ValueError):
    """An adapter that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class LoraRef:
    path: str  # a local file (the job fetched it)
    scale: float = 1.0


@dataclass(frozen=True)
class EmbeddingRef:
    path: str
    token: str  # as the prompt writes it, e.g. "<ink>"


@dataclass
class Lora:
    path: str
    sha256: str
    # (component, module path) -> (A (rank, in), B (out, rank), alpha)
    layers: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]]


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.endswith(".safetensors"):
        raise AdapterError(f"{path}: adapters are read from .safetensors files only (pickled files can run code)")
    try:
        return load_file(path)
    except FileNotFoundError:
        raise AdapterError(f"{path}: not found") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise AdapterError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_lora(path: str, components) -> Lora:
    """Read a LoRA file and check it against the model: every key names a Linear the model has, and the shapes fit.
    Raises AdapterError naming the file and the key."""
    tensors = _read_safetensors(path)
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS:
            raise AdapterError(f"{path}: key {key!r} is for none of {list(COMPONENTS)}")
        for suffix, part in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".alpha", "alpha")):
            if rest.endswith(suffix):
                parts.setdefault((component, rest[: -len(suffix)]), {})[part] = t
                break
        else:
            raise AdapterError(f"{path}: key {key!r} is not a LoRA weight (lora_A.weight, lora_B.weight or alpha)")
    if not parts:
        raise AdapterError(f"{path}: holds no LoRA weights")
    layers = {}
    for (component, name), p in parts.items():
        where = f"{path}: {component}.{name}"
        if "A" not in p or "B" not in p:
            raise AdapterError(f"{where}: needs both lora_A and lora_B")
        if not hasattr(components, component):
            raise AdapterError(f"{where}: a LoRA for a {component}, and this {components.family.name} model has none "
                               f"(its denoiser is its {components.family.denoiser})")
        try:
            module = getattr(components, component).get_submodule(name)
        except AttributeError:
            raise AdapterError(f"{where}: the model has no such module") from None
        if not isinstance(module, torch.nn.Linear):
            raise AdapterError(f"{where}: is a {type(module).__name__}; LoRA applies to Linear layers here")
        a, b = p["A"].float(), p["B"].float()
        out_f, in_f = module.weight.shape
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit its weight "
                               f"{tuple(module.weight.shape)}")
        rank = a.shape[0]
        alpha = float(p["alpha"]) if "alpha" in p else float(rank)
        layers[(component, name)] = (a, b, alpha)
    return Lora(path, sha256_file(path), layers)


def lora_delta(a: torch.Tensor, b: torch.Tensor, alpha: float, scale: float) -> torch.Tensor:
    """The change a LoRA at `scale` makes to a Linear's weight: scale * alpha / rank * B @ A, float32. The product is
    taken in float64: a float32 one on a GPU runs as TF32 once the speed layer allows it (10-bit mantissas), and
    the merged weights would then depend on which process-wide flags were set when a style was switched."""
    return ((scale * alpha / a.shape[0]) * (b.double() @ a.double())).float()


def merged_weight(weight: torch.Tensor, loras: list[tuple[Lora, float]], component: str, name: str) -> torch.Tensor:
    """`weight` with every LoRA of `loras` that targets component.name added, in float32, cast back."""
    w = weight.float()
    for lora, scale in loras:
        if (component, name) in lora.layers:
            a, b, alpha = lora.layers[(component, name)]
            w = w + lora_delta(a.to(w.device), b.to(w.device), alpha, scale)
    return w.to(weight.dtype)


def load_embedding(path: str, hidden: int) -> torch.Tensor:
    """(vectors, hidden) float32 from a textual-inversion file. Raises AdapterError."""
    tensors = _read_safetensors(path)
    if "emb_params" in tensors:
        t = tensors["emb_params"]
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
    else:
        raise AdapterError(f"{path}: holds {len(tensors)} tensors; a textual-inversion file holds one")
    t = t.float()
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] != hidden:
        raise AdapterError(f"{path}: embedding of shape {tuple(t.shape)}; this text encoder's vectors have {hidden}")
    return t


class Adapters:
    """An actor's adapters: loads files (kept LOADED_KEPT at most), merges the LoRAs a group of clips needs into
    the model and restores the base weights, and registers embeddings with the tokenizer and text encoder."""

    def __init__(self, components):
        self.components = components
        self.loaded: OrderedDict[str, Lora] = OrderedDict()
        self.base: dict[tuple[str, str], torch.Tensor] = {}  # untouched weights of every module ever merged into
        self.active: tuple = ()
        self._touched: set[tuple[str, str]] = set()  # (component, module) the active LoRAs merged into
        self.tokens: dict[str, list[str]] = {}  # embedding sha256 -> the tokenizer's names of its vectors
        self.paths: dict[str, str] = {}  # adapter URI -> local file
        self.shas: dict[str, str] = {}  # local file -> sha256

    def refs(self, lora_json: str, embeddings_json: str) -> tuple[list[LoraRef], list[EmbeddingRef]]:
        """A clip row's adapter columns (the manifest's JSON) -> references to local files (fetched where remote,
        once per actor)."""
        return ([LoraRef(self._local(a["uri"]), float(a["scale"])) for a in _items(lora_json)],
                [EmbeddingRef(self._local(a["uri"]), a["token"]) for a in _items(embeddings_json)])

    def describe(self, lora_json: str, embeddings_json: str) -> str:
        """The index's `adapters` column: the clip's adapters as they ran, each with its file's sha256 ("" for
        none)."""
        loras, embeddings = _items(lora_json), _items(embeddings_json)
        if not loras and not embeddings:
            return ""
        return json.dumps({"lora": [{**a, "sha256": self._sha(a["uri"])} for a in loras],
                           "embeddings": [{**a, "sha256": self._sha(a["uri"])} for a in embeddings]},
                          sort_keys=True)

    def _local(self, uri: str) -> str:
        if uri not in self.paths:
            self.paths[uri] = fetch(uri)
        return self.paths[uri]

    def _sha(self, uri: str) -> str:
        return self._file_sha(self._local(uri))

    def _file_sha(self, path: str) -> str:
        if path not in self.shas:
            self.shas[path] = sha256_file(path)
        return self.shas[path]

    def lora(self, path: str) -> Lora:
        if path in self.loaded:
            self.loaded.move_to_end(path)
            return self.loaded[path]
        lora = load_lora(path, self.components)
        self.loaded[path] = lora
        while len(self.loaded) > LOADED_KEPT:
            self.loaded.popitem(last=False)
        return lora

    @torch.no_grad()
    def use(self, loras: list[LoraRef]) -> bool:
        """Make the model's weights the base plus exactly these LoRAs (nothing: the base). Whether the text
        encoder's weights changed (prompt embeddings kept from before no longer hold)."""
        key = tuple((r.path, r.scale) for r in loras)
        if key == self.active:
            return False
        resolved = [(self.lora(r.path), r.scale) for r in loras]
        for (component, name), w0 in self.base.items():  # back to the base where the last set touched it
            getattr(self.components, component).get_submodule(name).weight.copy_(w0)
        for lora, _ in resolved:
            for component, name in lora.layers:
                weight = getattr(self.components, component).get_submodule(name).weight
                if (component, name) not in self.base:
                    self.base[(component, name)] = weight.detach().clone()
        touched = {k for lora, _ in resolved for k in lora.layers}
        for component, name in touched:
            module = getattr(self.components, component).get_submodule(name)
            module.weight.copy_(merged_weight(self.base[(component, name)], resolved, component, name))
        text_before = any(component == "text_encoder" for component, _ in self._touched)
        self._touched, self.active = touched, key
        return text_before or any(component == "text_encoder" for component, _ in touched)

    @torch.no_grad()
    def prompt(self, text: str, embeddings: list[EmbeddingRef]) -> str:
        """`text` with each embedding's token rewritten to its vectors' names in the tokenizer (registered on first
        use)."""
        tokenizer, encoder = self.components.tokenizer, self.components.text_encoder
        for ref in embeddings:
            sha = self._file_sha(ref.path)
            if sha not in self.tokens:
                table = encoder.get_input_embeddings()
                vectors = load_embedding(ref.path, table.weight.shape[1])
                names = [f"<v2v-{sha[:12]}>"] + [f"<v2v-{sha[:12]}>_{i}" for i in range(1, len(vectors))]
                tokenizer.add_tokens(names)
                encoder.resize_token_embeddings(len(tokenizer))
                table = encoder.get_input_embeddings()
                ids = tokenizer.convert_tokens_to_ids(names)
                table.weight[ids] = vectors.to(table.weight.device, table.weight.dtype)
                self.tokens[sha] = names
            if ref.token not in text:
                raise AdapterError(f"{ref.path}: its token {ref.token!r} is not in the prompt {text[:80]!r}")
            text = text.replace(ref.token, " ".join(self.tokens[sha]))
        return text


def fetch(uri: str) -> str:
    """A local path for `uri`: the file itself where it is local, else a copy in the cache made once per version of
    the file on this node (later actors and runs find it there)."""
    import os
    import posixpath

    from v2v.core.storage import StorageError, file_version, local_path, machine_lock, retrying, url_to_fs
    from v2v.model.loading import default_cache_dir

    path = local_path(uri)
    if path is not None:
        return path
    version = file_version(uri)
    if version is None:
        raise AdapterError(f"{uri}: not found or not readable")
    key = hashlib.sha256(f"{uri}\n{version}".encode()).hexdigest()[:24]
    target = default_cache_dir() / "adapters" / key / posixpath.basename(uri)
    if target.exists():
        return str(target)
    with machine_lock(target.with_name(f".{target.name}.lock")):  # the node's actors fetch it once
        if not target.exists():
            logger.info("adapter %s: fetching it into %s", uri, target)
            part = target.with_name(f".{target.name}.{os.getpid()}.part")
            fs, remote = url_to_fs(uri)
            try:
                retrying(lambda: fs.get_file(remote, str(part)), uri)
            except StorageError as e:
                raise AdapterError(f"{uri}: {e}") from None
            os.replace(part, target)
    return str(target)


def _items(text: str) -> list[dict]:
    return json.loads(text or "[]")
