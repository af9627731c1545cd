"""The GPU paths that run the UNet uncompiled: an actor without compile, and a compiled actor's own eager calls (a
video's shorter last clip, in flight beside full ones; a clip retried alone). Each forward takes one timestep per
clip, which diffusers' UNet leaves where it finds it: these paths ran only on the CPU until a GPU benchmark's mixed
manifest failed on one (`mat1 is on cpu`). GPU machines run them with `bash benchmarks/gpu_run.sh NAME tests`."""

import contextlib

import numpy as np
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


@contextlib.contextmanager
def _no_waits(checked: bool = True):
    """torch's sync debug mode at "error" (any blocking copy or read raises) where `checked`."""
    torch.cuda.set_sync_debug_mode("error" if checked else "default")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("model,scheduler,waits", [
    ("tiny", "ddim", ()), ("tiny-compiled", "ddim", ()),
    # a sigma scheduler's add_noise indexes its sigmas with a Python list (a blocking copy); Wan's UMT5 text encoder
    # (transformers) checks its padding mask on the host; UniPC (Wan's) copies sigmas to the GPU blocking and solves
    # a small system there at each step (docs/speed.md)
    ("tiny", "dpm++", ("admit",)), ("tiny-wan", None, ("admit", "step"))])
def test_a_round_admits_steps_and_reads_out_without_waiting_for_the_gpu(cache_dir, model, scheduler, waits):
    """What keeps the GPU's queue full in an actor: admitting a clip (text, VAE encode, its generator's draws, its
    scheduler's noise), a round's forward and scheduler steps, and queuing a finished clip's decode, checks and
    signals with their copies to the host do not wait for the GPU (torch's sync debug mode raises on any blocking
    copy or read), but for the `waits` of a scheduler or text encoder that do; only `Readback.wait` does, and its
    values are those read the blocking way."""
    from v2v.model.loading import make_scheduler
    from v2v.model.quality import signal_tensors, signal_values, signals
    from v2v.model.sampler import Readback, clip_sums, to_device, to_uint8_checked, uint8_frames

    if model.startswith("tiny-wan"):
        from v2v.model.tiny import TINY_WAN_FRAMES, TINY_WAN_SIZE, tiny_wan_dir
        from v2v.model.wan import load_wan_components

        c = load_wan_components(tiny_wan_dir(cache_dir), device="cuda")
        video = torch.randint(0, 256, (2, TINY_WAN_FRAMES, TINY_WAN_SIZE, TINY_WAN_SIZE, 3), dtype=torch.uint8)
    else:
        c, video = load_components("tiny", cache_dir=cache_dir, device="cuda"), random_video(2)
    sched = make_scheduler(c.scheduler, scheduler)
    if model == "tiny-compiled":  # the job's GPU path, every switch but the stored parts; compiled and recorded first
        on = dict(compile=True, compile_vae=True, temporal_layers=True, frame_attention=True, channel_stats=True,
                  shared_prefix=True, upsample_phases=True, cuda_graphs=True)
        apply_speed_settings(c, speed_only(**on), unet_batch=4)
        run_all(StepBatcher(c, 2), [(i, video[i], clip, sched) for i, clip in enumerate(CLIPS)])
    batcher = StepBatcher(c, 2)
    outs = []
    with _no_waits("admit" not in waits):
        for i, clip in enumerate(CLIPS):
            batcher.admit(i, video[i], clip, scheduler=sched)
    while batcher.active:
        with _no_waits("step" not in waits):
            done, failed = batcher.step()
        assert not failed, failed[0][1]
        with _no_waits():
            for clip in done:
                frames = batcher.finish(clip)
                source = to_device(video[clip.key], frames.device)
                outs.append((frames, source, Readback(u8=uint8_frames(frames), sums=clip_sums(frames[None]),
                                                      **signal_tensors(frames, source))))
    assert len(outs) == 2
    for frames, source, readback in outs:
        got = readback.wait()
        u8, bad = to_uint8_checked(frames[None])
        assert np.array_equal(got["u8"].numpy(), u8[0]) and bad == [] and torch.isfinite(got["sums"]).all()
        assert signal_values({k: got[k] for k in signals(frames, source)}) == signals(frames, source)
