"""Stored compiled parts: an actor's later starts load what was compiled instead of tracing the model again.

`torch.compile` caches its kernels on disk, but every start still traces the model with dynamo and replays
inductor's graph passes before it finds them in the cache: tens of seconds for the 1.4 B-parameter UNet3D, more on
a slow host CPU. Here a part is traced once, whole, and torch.compile's own saved form of it (dynamo's precompile:
the traced bytecode, its guards and inductor's compiled graph) is stored under the compile cache beside inductor's
kernels; a later start loads that file and is ready after one call.

The stored part holds no weights: the running module's parameters are read at each call. Only the guards on the
input tensors are kept, so what else it depends on is in its key (`part_key`): the model's fingerprint, dtype,
device, the switches that change the traced model, the input shapes, torch's version, diffusers' version and the
source of the v2v modules it runs (`code_digest`).

With a `v2v.speed.shared_cache.SharedCache`, a part the local cache lacks is fetched from the machines' shared
cache, and a part built here is put there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from v2v.core.storage import atomic_output, machine_lock
from v2v.speed.shared_cache import SharedCache

logger = logging.getLogger(__name__)

# The v2v modules whose code a stored part runs (its traced functions and the layers they swap in) or whose code
# decides what it traces (how inputs are passed, which switch swaps what): their source is part of every key, so a
# v2v release that changes any of them makes each machine compile its parts once more instead of running stale ones
# (a stored part keeps only its input guards, `PrecompiledForward`). tests/test_perf.py checks that every v2v module
# apply_perf_settings imports is here or named there as not traced.
TRACED_MODULES = ("v2v.speed.stored", "v2v.speed", "v2v.speed.fixed_shapes", "v2v.speed.shared_prefix",
                  "v2v.speed.temporal", "v2v.speed.group_norm", "v2v.speed.upsample", "v2v.speed.frame_attention")


@functools.cache
def code_digest(modules: tuple[str, ...] = TRACED_MODULES) -> str:
    """sha256 of the modules' code and of diffusers' version (whose forwards the parts trace). The code as Python
    parses it, docstrings left out: an edit to comments or docs alone (frequent) compiles nothing again."""
    import ast
    import importlib.util

    import diffusers

    h = hashlib.sha256(f"diffusers {diffusers.__version__}".encode())
    for name in modules:
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(f"\0{name}\0{ast.dump(tree)}".encode())
    return h.hexdigest()[:24]


def device_id(device) -> str:
    """What compiled kernels are specific to: the GPU's name and compute capability, or the CPU's ISA."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} sm_{major}{minor} cuda {torch.version.cuda}"
    return f"cpu {torch.backends.cpu.get_cpu_capability()}"


def signature(tensors) -> tuple:
    """((shape, dtype, device type, contiguous), ...) of a call's inputs: a stored part (or a CUDA graph) serves exactly these."""
    return tuple((tuple(t.shape), str(t.dtype), t.device.type, t.is_contiguous()) for t in tensors)


def inductor_env() -> dict[str, str]:
    """The TORCHINDUCTOR_* variables that change what inductor compiles (e.g. TORCHINDUCTOR_COORDINATE_DESCENT_TUNING
    =1): a part compiled under others is another part. Left out: where caches live and whether they are used, and
    compile threads (per machine, and v2v sets the cache ones itself). Variables, not inductor's config as it
    stands: compiling changes some of that config in place, which would give a process's later parts other keys than a fresh process computes for them."""
    return {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")
            and "CACHE" not in k and k not in ("TORCHINDUCTOR_COMPILE_THREADS", "TORCHINDUCTOR_WORKER_START")}


def part_key(base: dict, tensors) -> str:
    key = {**base, "code": code_digest(), "torch": torch.__version__,
           "inductor_env": inductor_env(), "inputs": signature(tensors)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def denoiser_tensors(model, sample, timestep, encoder_hidden_states):
    """The denoiser's class forward (the UNet's, or Wan's transformer's: both take (sample, timestep,
    encoder_hidden_states)) as a function of the module and its three tensors: what a stored denoiser computes (the
    module an argument: a saved function reads its parameters at each call and its guards name no global)."""
    return type(model).forward(model, sample, timestep, encoder_hidden_states=encoder_hidden_states,
                               return_dict=False)[0]


def part_tensors(part, x):
    """A VAE encoder's or decoder's class forward as a function of the module and its input."""
    return type(part).forward(part, x)


class NotStored(Exception):
    """A stored part's first call where neither cache holds it and the part may not compile here (build=False)."""

    def __init__(self, path: Path):
        super().__init__(f"no stored compiled part at {path}")
        self.path = path


class StoredPart:
    """Calls fn(owner, *tensors) through torch.compile's saved form of it, built for exactly these input shapes.

    On a first start, dynamo traces fn whole (`aot_compile`, fullgraph) and inductor compiles it as torch.compile
    does; the result is saved under the compile cache, next to inductor's kernels. A later start loads that file
    instead of tracing the model again: the part of a cached torch.compile start that its kernel cache cannot skip.

    fn: `denoiser_tensors`, `part_tensors` or another function of the module and its input tensors, defined at a
    module's top level (the saved form refers to its code). owner: the nn.Module whose parameters fn uses, read off
    it at each call. base: what else the part depends on (model fingerprint, dtype, switches, device), see
    `part_key`. torch's API is experimental: a part it cannot trace whole, save or load runs through `fallback`
    (torch.compile) instead, with a warning: the job still runs, only its starts stay slow.
    shared: a compile cache shared by machines (v2v.speed.shared_cache): where the local cache lacks the part, it
    is fetched from there; where this process built it (or completed a fetched one), it is put there.
    build=False: where neither cache holds the part, its first call raises NotStored instead of compiling it.
    """

    suffix = ".dynamo"

    def __init__(self, owner, fn, name: str, base: dict, cache_dir: str | Path, fallback,
                 shared: SharedCache | None = None, build: bool = True):
        self.owner, self.fn, self.name, self.base = owner, fn, name, base
        self.build = build
        self.cache_dir = Path(cache_dir)
        self.fallback = fallback
        self.shared = shared
        self.runners: dict[tuple, object] = {}  # input signature -> loaded part
        self.failed: str | None = None  # why this part runs through the fallback, once it does
        self.built: list[Path] = []  # stored parts this process compiled (found in neither cache)
        self.fetched: list[Path] = []  # those the local cache lacked and the shared cache had

    def __call__(self, *tensors):
        if self.failed is not None:
            return self.fallback(*tensors)
        sig = signature(tensors)  # per UNet step: the key (a hash) only once per input signature
        runner = self.runners.get(sig)
        if runner is not None:
            return runner(*tensors)
        path = self.cache_dir / f"{self.name}-{part_key(self.base, tensors)}{self.suffix}"
        built = len(self.built)
        before = got = None  # where this start lacks the part: the local cache's files, and those fetched
        try:
            with machine_lock(path.with_suffix(".lock")):  # actors starting together: one fetches or builds it
                if self.shared and not path.exists():
                    before = self.shared.files()
                    got = self.shared.fetch(path.stem)
                    if path.exists():
                        self.fetched.append(path)
                runner = self.runners[sig] = self._runner(path, tensors)
        except NotStored:
            raise
        except Exception as e:  # dynamo or inductor cannot take this model whole: run it the JIT way
            self.failed = f"{type(e).__name__}: {e}"
            logger.warning("%s: storing the compiled part failed, using torch.compile instead: %s",
                           self.name, self.failed)
            return self.fallback(*tensors)
        out = runner(*tensors)
        if before is not None:  # after the first call, which on a GPU tunes kernels' launch settings and writes them
            self._share(path, len(self.built) > built, before, got)
        return out

    def _share(self, path: Path, built: bool, before: set[str], got: set[str]) -> None:
        """Put what this start wrote for the part into the shared cache. The saved function holds its kernels'
        source, not their binaries: without them another machine compiles every kernel again (on a 2-core CPU,
        40 s of an 80-s first start against 1 s with them). So the archive is every file the build (or the fetch
        and load) wrote: built here, or fetched and completed here (kernels the archive lacked)."""
        new = self.shared.files() - before
        if built or (got and new - got):
            self.shared.store(path.stem, new | got)

    def _runner(self, path: Path, tensors):
        """Under the part's lock: the function saved at `path`, compiled and saved first where the cache lacks it."""
        external = {"owner": self.owner}  # the module is an argument, never part of the file
        compiled = _load_saved(path, external) if path.exists() else None
        if compiled is None and not self.build:
            raise NotStored(path)
        if compiled is None:
            logger.info("%s: compiling and saving the compiled function to %s", self.name, path)
            # torch 2.11 gives torch.compile's function its `aot_compile` only under this setting (2.13: always)
            with torch._dynamo.config.patch(enable_aot_compile=True):
                compiled = torch.compile(self.fn, fullgraph=True, dynamic=False,
                                         options={"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe}
                                         ).aot_compile(((self.owner, *tensors), {}))
            with atomic_output(str(path), suffix=".dynamo") as tmp:  # 2.11 writes in place: no partial file
                compiled.save_compiled_function(tmp, external_data=external)
                _plain_mode(tmp, path)
            self.built.append(path)
        return functools.partial(compiled, self.owner)


def _plain_mode(tmp: str, path: Path) -> None:
    """Give a file torch wrote the mode any file created here gets (the lock file's, which follows the umask): torch
    2.13 saves a compiled function through a private temp file (0600), which other users of a shared cache could not
    read."""
    os.chmod(tmp, path.with_suffix(".lock").stat().st_mode & 0o777)


def _load_saved(path: Path, external: dict):
    """The compiled function saved at `path`, or None (with a warning) where it does not load: another torch
    wrote it, or the file is partial. The caller compiles it again."""
    try:
        with open(path, "rb") as f:
            return torch.compiler.load_compiled_function(f, external_data=external)
    except Exception as e:
        logger.warning("%s does not load (%s: %s); compiling it again", path, type(e).__name__, e)
        return None
