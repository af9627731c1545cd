"""Compiling in the background (`background_compile`): a machine's first start is ready in seconds, not minutes.

Compiling the zeroscope-size UNet and the VAE's parts takes minutes on a machine that has never compiled them: an
autoscaled node that lives an hour would spend a tenth of it before its first clip. With `background_compile`, an
actor whose caches hold no stored parts (v2v.speed.stored) for its model and settings starts with the eager model
(the model switches applied) and is ready at once, while a subprocess loads the same model, compiles each part and
stores it, as a first start with `precompile` does. When the subprocess has exited, the actor loads the stored
parts between two denoising steps (as a second start does: seconds), and its later forwards run compiled.

A subprocess, not a thread: compiling holds the interpreter for minutes in dynamo's tracing, which would stall the
actor's own Python launches, and a compiler crash takes down only the subprocess (the actor stays eager and says
why). The subprocess runs at a lower CPU priority than the actor, on the same GPU (one more copy of the denoiser's and
the VAE's weights and the warm-up's activations there, while it runs). It exits when the actor does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time

logger = logging.getLogger(__name__)


class BackgroundCompile:
    """A running subprocess that compiles and stores the parts `spec` describes (see `main`); `done()` once it
    has exited, `ok` whether it stored them, `tail` the end of its output where it failed."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.started = time.perf_counter()
        self.seconds: float | None = None  # how long it ran, once it has exited
        self._log = tempfile.TemporaryFile()
        # the actor's import path: a Ray job's working directory (its runtime_env) is on sys.path, not in the env
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "v2v.speed.background", json.dumps(spec)],
                                      stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        logger.info("compiling the model's parts in the background (pid %d)", self._proc.pid)

    def done(self) -> bool:
        if self.seconds is None and self._proc.poll() is not None:
            self.seconds = time.perf_counter() - self.started
        return self.seconds is not None

    @property
    def ok(self) -> bool:
        return self.done() and self._proc.returncode == 0

    def tail(self, chars: int = 2000) -> str:
        """The end of the subprocess's output (its traceback, where it failed)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-chars:]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the subprocess exits (or `timeout` seconds pass): whether it has."""
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return self.done()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def main(spec: dict) -> int:
    """The subprocess: load the model as the actor did, compile each part and store it (apply_speed_settings with
    precompile, then warm_up), exit. spec: model, device, dtype, scheduler, allow_pickle, speed (resolved
    SpeedSettings fields), unet_batch, vae_chunk, shared_cache, frames, height, width."""

    from v2v.config import SpeedSettings
    from v2v.model.loading import load_components
    from v2v.speed import apply_speed_settings, warm_up

    parent = os.getppid()
    # the actor gone (killed, or its node drained), the compile is no one's: exit rather than hold the GPU
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    os.nice(10)  # below the actor's decoding, encoding and kernel launches
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Loaded on the CPU, then the denoiser and the VAE moved to the actor's device: only they (the UNet3D's VAE
    # parts) compile here, and warm_up reads the text encoder's config alone. Its weights (Wan's UMT5: 11 GB in bf16)
    # never take GPU memory beside the actor's own copy.
    c = load_components(spec["model"], device="cpu", dtype=spec["dtype"], scheduler=spec["scheduler"],
                        allow_pickle=spec["allow_pickle"])
    for part in (getattr(c, c.family.denoiser), c.vae):
        part.to(spec["device"])
    speed = SpeedSettings(**{**spec["speed"], "background_compile": False})
    stored = apply_speed_settings(c, speed, unet_batch=spec["unet_batch"], vae_chunk=spec["vae_chunk"],
                                  shared_cache=spec["shared_cache"])
    seconds = warm_up(c, spec["unet_batch"], spec["frames"], spec["height"], spec["width"])
    failed = {k: p.failed for k, p in stored.items() if p.failed}
    print("compiled in the background:", json.dumps({"seconds": seconds, "failed": failed}), flush=True)
    return 1 if failed or not stored else 0


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(3)


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
