"""Ahead-of-time compiled parts: an actor's later starts load what was compiled instead of tracing the model.

`torch.compile` caches its kernels on disk, but every start still traces the model with dynamo and replays
inductor's graph passes before it finds them in the cache — tens of seconds for the 1.4 B-parameter UNet3D,
more on a slow host CPU. Here a part is exported once (`torch.export`) and compiled by AOTInductor into a
package (a shared library plus its GPU kernels) stored under the compile cache; a later start loads the
package and is ready after one call.

The package holds no weights: the running module's own parameters are handed to it (shared, not copied), so
one copy of the weights sits in GPU memory. Inductor still writes tensors of a few values (e.g. the 4 output
biases of the UNet's last convolution) into its kernels as literals, so a package is only valid for the exact
weights it was built from: the model's fingerprint is part of its key, with the input shapes, dtypes, torch
version, device, and the source of the v2v modules it runs (`code_digest`).

`PrecompiledForward` is the other form, and needs no C++ compiler or loader of its own: torch.compile's own
saved form of a traced function (dynamo's precompile), whose kernels are torch.compile's.

Either form can be shared by machines: with a `v2v.shared_cache.SharedCache`, a part the local cache lacks is
fetched from it, and a part built here is put there.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from v2v.shared_cache import SharedCache
from v2v.storage import atomic_output

logger = logging.getLogger(__name__)

# The v2v modules whose code a stored part runs (its traced functions and the layers they swap in) or whose code
# decides what it traces (how inputs are passed, which switch swaps what): their source is part of every key, so a
# v2v release that changes any of them makes each machine compile its parts once more instead of running stale ones
# (a stored part keeps only its input guards, `PrecompiledForward`). tests/test_perf.py checks that every v2v module
# apply_perf_settings imports is here or named there as not traced.
TRACED_MODULES = ("v2v.aot", "v2v.perf", "v2v.unet", "v2v.temporal", "v2v.group_norm", "v2v.upsample",
                  "v2v.frame_attention")


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
    """((shape, dtype, device type, contiguous), ...) of a call's inputs: a package serves exactly these."""
    return tuple((tuple(t.shape), str(t.dtype), t.device.type, t.is_contiguous()) for t in tensors)


def cxx() -> str:
    """The C++ compiler inductor builds a package's wrapper with (its `cpp.cxx` setting, from `CXX` or `g++` on
    PATH), as the file it resolves to: a package one compiler built may not load (benchmarks/RESULTS.md), and
    one compiler under two names (g++, g++-13) is one compiler."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    name = get_cpp_compiler()
    return os.path.realpath(shutil.which(name) or name)


def inductor_env() -> dict[str, str]:
    """The TORCHINDUCTOR_* variables that change what inductor compiles (e.g. TORCHINDUCTOR_COORDINATE_DESCENT_TUNING
    =1): a part compiled under others is another part. Left out: where caches live and whether they are used, and
    compile threads (per machine, and v2v sets the cache ones itself). Variables, not inductor's config as it
    stands: compiling changes some of that config in place (an AOTInductor build fills `aot_inductor.metadata`),
    which would give a process's later parts other keys than a fresh process computes for them."""
    return {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")
            and "CACHE" not in k and k not in ("TORCHINDUCTOR_COMPILE_THREADS", "TORCHINDUCTOR_WORKER_START")}


def package_key(base: dict, tensors) -> str:
    key = {**base, "code": code_digest(), "torch": torch.__version__, "cxx": cxx(),
           "inductor_env": inductor_env(), "inputs": signature(tensors)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class _Call(torch.nn.Module):
    """Lets torch.export trace fn(owner, *tensors), a plain function whose weights live in `owner`."""

    def __init__(self, owner, fn):
        super().__init__()
        self.owner = owner  # registered: the package's constants are named owner.<parameter name>
        self.fn = fn

    def forward(self, *tensors):
        return self.fn(self.owner, *tensors)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock next to `path`: actors starting together on one machine build a package once; the
    others wait, then load it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_package(owner, fn, tensors, path: Path) -> None:
    """Export `fn(owner, *tensors)` and compile it with AOTInductor into `path` (written whole, then renamed)."""
    exported = torch.export.export(_Call(owner, fn), tuple(tensors), strict=False)
    with atomic_output(str(path), suffix=".pt2") as tmp:
        torch._inductor.aoti_compile_and_package(
            exported, package_path=tmp,
            # weights stay out of the package: they are the running module's, handed over at load
            inductor_configs={"aot_inductor.package_constants_in_so": False})


def check_loads(path: Path) -> None:
    """Load the package once in a child process, so that a loader that crashes (seen with torch 2.11 on the
    GPU machines: a segmentation fault inside torch's package loader, for packages built by the images'
    /opt/gcc/bin/g++, benchmarks/RESULTS.md twenty-seventh section) costs a warning and torch.compile instead of
    the actor. Raises RuntimeError naming the file and the compiler when the child fails."""
    code = "import sys; from v2v.aot import _open_package; _open_package(sys.argv[1])"
    # the child imports v2v from the folder this process did (installed, a Ray working dir, a PYTHONPATH)
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=900,
                       env=env)
    if p.returncode != 0:  # named: the compiler is the usual cause (README, --compile-aot)
        raise RuntimeError(f"{path}: loading it failed in a test process (exit code {p.returncode}; built with "
                           f"{cxx()}: set CXX to another C++ compiler, or delete the file to rebuild it): "
                           f"{p.stderr.strip()[-500:]}")


def _open_package(path, device_index: int = -1):
    """The package's runner, from torch's C++ package loader directly. `torch._inductor.aoti_load_package` took
    50-68 s over the UNet's package on the H100 machines against 0.3 s for this loader (benchmarks/RESULTS.md):
    before loading, it compares the package's build machine with this one, and to name this CPU's vector ISA
    inductor compiles and test-runs a C++ program per ISA, each test in a new Python process importing torch
    (17-34 s on this project's CI machine). The package key already names the device (`device_id`).
    device_index -1: the current CUDA device.

    Opened single-threaded (v2v calls a part from one thread at a time): the default runner hands each call one of
    its model instances and, on a GPU, takes one back by querying or waiting on the CUDA event its last call
    recorded. That query is not allowed while a CUDA graph records (`v2v.cuda_graph`: "operation not permitted
    when stream is capturing", benchmarks/RESULTS.md twenty-seventh section), and with one instance the wait holds
    the host until the previous call's kernels finish, each step."""
    from torch._inductor.package import AOTICompiledModel

    return AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(str(path), "model", True, 1, device_index))


def load_package(owner, path: Path):
    """The compiled part at `path`, running on `owner`'s own parameters and buffers (no copy)."""
    index = next(owner.parameters()).device.index
    runner = _open_package(path, -1 if index is None else index)
    own = {f"owner.{k}": v for k, v in owner.named_parameters()}
    own.update({f"owner.{k}": v for k, v in owner.named_buffers()})
    wanted = runner.get_constant_fqns()
    missing = [k for k in wanted if k not in own]
    if missing:  # a tensor made inside forward, or a package built for another module
        raise RuntimeError(f"{path.name}: constants {missing[:5]} are not among the module's parameters")
    runner.load_constants({k: own[k] for k in wanted}, check_full_update=True, user_managed=True)
    return runner


def unet_tensors(unet, sample, timestep, encoder_hidden_states):
    """The UNet's class forward as a function of the module and its three tensors: what a stored UNet computes
    (the module an argument: an AOTInductor package's constants are its parameters, a saved function reads them
    at each call and its guards name no global)."""
    return type(unet).forward(unet, sample, timestep, encoder_hidden_states=encoder_hidden_states,
                              return_dict=False)[0]


def part_tensors(part, x):
    """A VAE encoder's or decoder's class forward as a function of the module and its input."""
    return type(part).forward(part, x)


class AotForward:
    """Calls fn(owner, *tensors) through an AOTInductor package built for exactly these input shapes.

    fn: `unet_tensors` or `part_tensors` (any function of the module and its input tensors). owner: the nn.Module
    whose parameters fn uses. base: what else the package depends on (model fingerprint,
    dtype, perf switches, device), see `package_key`. A part that cannot be exported or compiled runs through
    `fallback` (torch.compile) instead, with a warning: the job still runs, only its starts stay slow.
    shared: a compile cache shared by machines (v2v.shared_cache): where the local cache lacks the part, it is
    fetched from there; where this process built it (or completed a fetched one), it is put there.
    """

    suffix = ".pt2"

    def __init__(self, owner, fn, name: str, base: dict, cache_dir: str | Path, fallback,
                 shared: SharedCache | None = None):
        self.owner, self.fn, self.name, self.base = owner, fn, name, base
        self.cache_dir = Path(cache_dir)
        self.fallback = fallback
        self.shared = shared
        self.runners: dict[tuple, object] = {}  # input signature -> loaded package
        self.failed: str | None = None  # why this part runs through the fallback, once it does
        self.built: list[Path] = []  # stored parts this process compiled (found in neither cache)
        self.fetched: list[Path] = []  # those the local cache lacked and the shared cache had

    def __call__(self, *tensors):
        if self.failed is not None:
            return self.fallback(*tensors)
        sig = signature(tensors)  # per UNet step: the package key (a hash) only once per input signature
        runner = self.runners.get(sig)
        if runner is not None:
            return runner(*tensors)
        path = self.cache_dir / f"{self.name}-{package_key(self.base, tensors)}{self.suffix}"
        built = len(self.built)
        before = got = None  # where this start lacks the part: the local cache's files, and those fetched
        try:
            with _locked(path):  # actors starting together on one machine fetch or build a part once
                if self.shared and not path.exists():
                    before = self.shared.files()
                    got = self.shared.fetch(path.stem)
                    if path.exists():
                        self.fetched.append(path)
                runner = self.runners[sig] = self._runner(path, tensors)
        except Exception as e:  # export or the compiler cannot take this model: run it the JIT way
            self.failed = f"{type(e).__name__}: {e}"
            logger.warning("%s: ahead-of-time compile failed, using torch.compile instead: %s",
                           self.name, self.failed)
            return self.fallback(*tensors)
        out = runner(*tensors)
        if before is not None:  # after the first call, which on a GPU tunes kernels' launch settings and writes them
            self._share(path, len(self.built) > built, before, got)
        return out

    def _share(self, path: Path, built: bool, before: set[str], got: set[str]) -> None:
        """Put a part this start built into the shared cache: a package holds its kernels, so it travels alone."""
        if built:
            self.shared.store(path.stem, {path.relative_to(self.shared.local).as_posix()})

    def _runner(self, path: Path, tensors):
        """Under the part's lock: the package at `path`, built first where the cache lacks it."""
        checked = path.with_suffix(".loads")  # this package loaded in a test process once: no need again
        if not path.exists():
            logger.info("%s: compiling ahead of time into %s", self.name, path)
            build_package(self.owner, self.fn, tensors, path)
            self.built.append(path)
        if not checked.exists():
            check_loads(path)
            checked.touch()
        return load_package(self.owner, path)


class PrecompiledForward(AotForward):
    """Calls fn(owner, *tensors) through torch.compile's saved form of it, built for exactly these input shapes.

    On a first start, dynamo traces fn whole (`aot_compile`, fullgraph) and inductor compiles it as torch.compile
    does; the result (the traced bytecode, its guards and inductor's compiled graph) is saved under the compile
    cache, next to inductor's kernels. A later start loads that file instead of tracing the model again: the part
    of a cached torch.compile start that its kernel cache cannot skip (benchmarks/RESULTS.md). Unlike
    AotForward's packages, no C++ wrapper is built or loaded.

    fn: as AotForward's, defined at a module's top level (the saved form refers to its code). Only the guards on
    the input tensors are kept (torch.compiler.keep_tensor_guards_unsafe): what else the compiled graph depends on
    (the model, dtype, switches, device, torch version, v2v's code) is in the file's key, and the parameters are read
    off `owner` at each call. torch's API is experimental: a part it cannot trace whole, save or load runs through
    `fallback` (torch.compile) with a warning, as AotForward's do.
    """

    suffix = ".dynamo"

    def _share(self, path: Path, built: bool, before: set[str], got: set[str]) -> None:
        # The saved function holds its kernels' source, not their binaries: without them another machine compiles
        # every kernel again (on this project's CPU, 40 s of an 80-s first start against 1 s with them). So the
        # archive is every file the build (or the fetch and load) wrote: built here, or fetched and completed here
        # (kernels the archive lacked).
        new = self.shared.files() - before
        if built or (got and new - got):
            self.shared.store(path.stem, new | got)

    def _runner(self, path: Path, tensors):
        """Under the part's lock: the function saved at `path`, compiled and saved first where the cache lacks it."""
        external = {"owner": self.owner}  # the module is an argument, never part of the file
        compiled = _load_saved(path, external) if path.exists() else None
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
