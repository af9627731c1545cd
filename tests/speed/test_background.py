"""Compiling in the background (v2v.speed.background): the pieces an actor's first start is made of, on the CPU.
The whole actor (ready eager, the parts taken up once stored) is tests/speed/test_compile.py's."""

import os
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import CLIPS, REPO, random_video, speed_only
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_model_switches, compile_parts, eager_again
from v2v.speed.fixed_shapes import FixedBatch, PadFrames
from v2v.speed.stored import NotStored, StoredPart, part_tensors


@pytest.fixture
def compile_cache(tmp_path, monkeypatch):
    """A compile cache of the test's own; the variables compile_parts sets in os.environ restored after it."""
    monkeypatch.setenv("V2V_COMPILE_CACHE", str(tmp_path / "compiled"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compiled"))
    for flag in ("TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(flag, os.environ.get(flag, "1"))
    return tmp_path / "compiled"


def test_a_part_that_may_not_build_says_not_stored_until_another_process_stored_it(tmp_path):
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1), torch.nn.SiLU()).eval()
    x = torch.randn(2, 8, 4, 4)
    waiting = StoredPart(head, part_tensors, "head", {"model": "a"}, tmp_path, fallback=None, build=False)
    with torch.no_grad(), pytest.raises(NotStored) as e:
        waiting(x)
    assert e.value.path.parent == tmp_path and not list(tmp_path.glob("*.dynamo"))  # nothing compiled
    builder = StoredPart(head, part_tensors, "head", {"model": "a"}, tmp_path, fallback=None)
    with torch.no_grad():
        want = builder(x)
        got = waiting(x)  # the same part now stored: loaded, not built
    assert builder.built and not waiting.built and waiting.failed is None
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_eager_again_undoes_compile_parts_and_keeps_the_model_switches(cache_dir, compile_cache):
    """What an actor whose stored parts are missing runs while they compile elsewhere: the model switches' eager
    model, exactly as with no compile asked for."""
    video = random_video(2)
    switches = dict(temporal_layers=True, channel_stats=True, shared_prefix=True, upsample_phases=True)
    plain = load_components("tiny", cache_dir=cache_dir)
    apply_model_switches(plain, speed_only(**switches))
    want = restyle(plain, video, CLIPS, output="latents")

    c = load_components("tiny", cache_dir=cache_dir)
    s = speed_only(**switches, compile=True, compile_vae=True, precompile=True)
    apply_model_switches(c, s)
    prefix = c.unet.forward
    stored = compile_parts(c, s, unet_batch=4, build=False)
    assert set(stored) == {"unet", "vae_encoder", "vae_decoder"}
    assert isinstance(c.unet.forward, FixedBatch) and isinstance(c.vae.decoder.forward, PadFrames)
    eager_again(c)
    assert c.unet.forward is prefix  # the shared prefix's forward, a model switch, stays
    assert "forward" not in vars(c.vae.encoder) and "forward" not in vars(c.vae.decoder)  # their class's own
    torch.testing.assert_close(restyle(c, video, CLIPS, output="latents"), want, rtol=0, atol=0)


def test_a_background_compile_that_fails_says_why(tmp_path):
    from v2v.speed.background import BackgroundCompile

    spec = dict(model=str(tmp_path / "no-such-model"), device="cpu", dtype="float32", scheduler=None,
                allow_pickle=False, speed={}, unet_batch=2, vae_chunk=8, shared_cache=None, frames=8, height=64,
                width=64)
    bg = BackgroundCompile(spec)
    assert bg.wait(120)
    assert not bg.ok and bg.seconds > 0
    assert "no-such-model" in bg.tail()


_PARENT = """
import os, sys, time
from v2v.speed.background import BackgroundCompile
bg = BackgroundCompile(dict(model="tiny", device="cpu", dtype="float32", scheduler=None, allow_pickle=False,
                            speed=dict(compile=True, compile_vae=True, precompile=True), unet_batch=2, vae_chunk=8,
                            shared_cache=None, frames=8, height=64, width=64))
print(bg._proc.pid, flush=True)
time.sleep(3)
os._exit(0)  # as a killed actor: no clean-up of its own
"""


def test_a_background_compile_ends_with_its_actor(tmp_path, cache_dir):
    env = {**os.environ, "V2V_COMPILE_CACHE": str(tmp_path), "V2V_CACHE": str(cache_dir)}
    p = subprocess.run([sys.executable, "-c", _PARENT], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    pid = int(p.stdout.split()[0])
    deadline = time.monotonic() + 30  # it compiles for minutes here; it notices its parent gone within seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()  # a zombie has exited
    except FileNotFoundError:
        return False
