"""The GPU paths that run the UNet uncompiled: an actor without compile, and a compiled actor's own eager calls (a
video's shorter last clip, in flight beside full ones; a clip retried alone). Each forward takes one timestep per
clip, which diffusers' UNet leaves where it finds it: these paths ran only on the CPU until a GPU benchmark's mixed
manifest failed on one (`mat1 is on cpu`). GPU machines run them with `bash benchmarks/gpu_run.sh NAME tests`."""

import pytest
import torch

from tests.helpers import CLIPS, random_video, speed_only
from v2v.model.continuous import StepBatcher, run_all
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_uncompiled_and_eager_calls_restyle_on_the_gpu(cache_dir):
    video = random_video(2)
    compiled = load_components("tiny", cache_dir=cache_dir, device="cuda")
    apply_speed_settings(compiled, speed_only(compile=True, cuda_graphs=True, precompile=True), unet_batch=4)
    plain = load_components("tiny", cache_dir=cache_dir, device="cuda")
    # float32 matmuls and convolutions for both (the speed layer allowed TF32): with TF32 the short clip alone
    # (batch 1) and in a batch of 2 take kernels that round apart by ~1e-2 over the steps, hiding what this checks
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        want_short = restyle(plain, video[:, :5], CLIPS, output="latents")
        # a full clip and a shorter one in flight together: the shorter one's forwards run eager
        items = [("full", video[0], CLIPS[0]), ("short", video[1, :5], CLIPS[1])]
        got = run_all(StepBatcher(compiled, 2), items)
        assert all(isinstance(v, torch.Tensor) for v in got.values()), got
        torch.testing.assert_close(got["short"], want_short[1:2], rtol=0, atol=1e-4)
        full = restyle(plain, video, CLIPS, output="latents")
        torch.testing.assert_close(got["full"], full[:1], rtol=0, atol=5e-2)  # compiled kernels round otherwise
        assert torch.isfinite(full).all()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


@cuda
def test_host_to_gpu_copies_do_not_wait_for_the_gpus_queued_work():
    """sampler.to_device: the values of a blocking copy, but the host goes on while the GPU still runs what was queued
    before (a blocking copy from pageable memory waits for it, and the GPU then idles while the host prepares the
    next work). Admission's frames, each forward's timesteps and guidance scales cross this way."""
    from v2v.model.sampler import frames_to_pixels, to_device

    frames = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # a second or so of queued GPU work
    on_gpu = to_device(frames, "cuda")
    assert not torch.cuda.current_stream().query(), "to_device waited for the queued work"
    assert torch.equal(frames_to_pixels(on_gpu).cpu(), frames_to_pixels(frames))  # converted there, the same values
    assert torch.cuda.current_stream().query()  # (.cpu() waited)
