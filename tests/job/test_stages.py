"""The restyle stage alone (no Ray): how it answers a GPU that runs out of memory or breaks."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers import REPO
from v2v.config import JobConfig
from v2v.job.resources import resources
from v2v.job.stages import DEVICE_FAILURE_TRIES, EXIT_DEVICE_FAILURE, Restyle, device_failed
from v2v.speed.fixed_shapes import FixedBatch

FRAMES = np.random.default_rng(0).integers(0, 256, (2, 8, 64, 64, 3), dtype=np.uint8)


def _batch(n: int = 2, first: int = 0) -> dict:
    k = slice(first, first + n)
    return {"id": np.array(["a", "b"][k], object), "clip_index": np.array([0, 0][k]),
            "prompt": np.array(["a fox", "ink"][k], object), "negative_prompt": np.array(["", ""][k], object),
            "seed": np.array([1, 2][k]), "strength": np.array([0.6, 0.6][k]), "num_inference_steps": np.array([4, 4][k]),
            "guidance_scale": np.array([9.0, 9.0][k]), "frames": FRAMES[k], "error": np.array([None] * n, object)}


@pytest.fixture
def actor(cache_dir):
    cfg = JobConfig(manifest="-", output="-", steps=4, batch_size=2, batch_invariant=False)
    return Restyle(cfg, resources(cfg, {"CPU": 2}))


def _fits_at_most(actor, latents: int, calls: list):
    """The UNet as a compiled one sits in the actor (FixedBatch: every call padded to the 2-clip batch of 4
    latents) on a GPU that holds at most `latents` latents in one forward."""
    plain = actor.components.unet.forward

    def forward(sample, *a, **k):
        calls.append(sample.shape[0])
        if sample.shape[0] > latents:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return plain(sample, *a, **k)

    actor.components.unet.forward = FixedBatch(forward, 4, eager=forward)


def test_a_batch_out_of_memory_is_retried_clip_by_clip_at_its_own_size(actor):
    alone = [actor(_batch(1, first=i))["frames"][0] for i in range(2)]
    calls = []
    _fits_at_most(actor, 2, calls)  # one guided clip fits, a padded batch does not
    out = actor(_batch())
    assert list(out["error"]) == [None, None]
    assert np.array_equal(out["frames"][0], alone[0]) and np.array_equal(out["frames"][1], alone[1])
    assert calls[0] == 4 and set(calls[1:]) == {2}  # the batch once, then each clip unpadded


def test_a_clip_out_of_memory_even_alone_is_a_failed_row(actor):
    _fits_at_most(actor, 1, [])
    out = actor(_batch())
    assert all(e.startswith("restyle: out of GPU memory even alone") for e in out["error"])


def test_device_failures_are_told_from_other_errors():
    assert device_failed(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert device_failed(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
    assert not device_failed(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not device_failed(RuntimeError("shape mismatch"))
    assert not device_failed(ValueError("CUDA error"))


_BROKEN_GPU = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.job.test_stages import _batch
from v2v.config import JobConfig
from v2v.job.resources import resources
from v2v.job.stages import Restyle

cfg = JobConfig(manifest="-", output="-", steps=4, batch_size=2, batch_invariant=False)
actor = Restyle(cfg, resources(cfg, {"CPU": 2}))

def broken(*a, **k):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")

actor.components.unet.forward = broken
print("RESULT " + json.dumps(list(actor(_batch())["error"])))
"""


@pytest.mark.slow
def test_a_broken_gpu_exits_the_actor_and_a_clip_that_keeps_breaking_it_fails(cache_dir, tmp_path):
    """A CUDA error other than out-of-memory: the actor's process exits (the pool starts a fresh actor and the job
    redoes the batch in its next pass); the same clips breaking it DEVICE_FAILURE_TRIES times become failed rows
    instead of a restart loop."""
    env = {**os.environ, "V2V_CACHE": str(tmp_path), "PYTHONPATH": REPO}
    for attempt in range(DEVICE_FAILURE_TRIES):
        p = subprocess.run([sys.executable, "-c", _BROKEN_GPU, REPO], env=env, capture_output=True, text=True,
                           timeout=300)
        if attempt < DEVICE_FAILURE_TRIES - 1:
            assert p.returncode == EXIT_DEVICE_FAILURE, p.stderr[-2000:]
            assert "exiting so that a fresh actor takes over" in p.stderr
        else:
            assert p.returncode == 0, p.stderr[-2000:]
            errors = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
            assert errors.count(f"the GPU failed on this clip {DEVICE_FAILURE_TRIES} times") == 2, errors
