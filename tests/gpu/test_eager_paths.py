"""The GPU paths that run the UNet uncompiled: an actor without compile, and a compiled actor's own eager calls (a
video's shorter last clip, in flight beside full ones; a clip retried alone). Each forward takes one timestep per
clip, which diffusers' UNet leaves where it finds it: these paths ran only on the CPU until a GPU benchmark's mixed
manifest failed on one (`mat1 is on cpu`). GPU machines run them with `bash benchmarks/gpu_run.sh NAME tests`."""

import dataclasses

import pytest
import torch

from tests.helpers import CLIPS, random_video, speed_only
from v2v.model.continuous import StepBatcher, run_all
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("shorter_graphs", [False, True])
def test_uncompiled_and_eager_calls_restyle_on_the_gpu(cache_dir, shorter_graphs):
    video = random_video(2)
    compiled = load_components("tiny", cache_dir=cache_dir, device="cuda")
    apply_speed_settings(compiled, speed_only(compile=True, cuda_graphs=True, precompile=True,
                                              shorter_graphs=shorter_graphs), unet_batch=4)
    plain = load_components("tiny", cache_dir=cache_dir, device="cuda")
    # 6 steps a clip: with shorter_graphs, the short clip's forwards are two warm-ups, the recording, three replays
    clips = [dataclasses.replace(c, num_inference_steps=10) for c in CLIPS]
    # float32 matmuls and convolutions for both (the speed layer allowed TF32): with TF32 the short clip alone
    # (batch 1) and in a batch of 2 take kernels that round apart by ~1e-2 over the steps, hiding what this checks
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        want_short = restyle(plain, video[:, :5], clips, output="latents")
        # a full clip and a shorter one in flight together: the shorter one's forwards run eager, or replayed
        items = [("full", video[0], clips[0]), ("short", video[1, :5], clips[1])]
        got = run_all(StepBatcher(compiled, 2), items)
        assert all(isinstance(v, torch.Tensor) for v in got.values()), got
        torch.testing.assert_close(got["short"], want_short[1:2], rtol=0, atol=1e-4)
        full = restyle(plain, video, clips, output="latents")
        torch.testing.assert_close(got["full"], full[:1], rtol=0, atol=5e-2)  # compiled kernels round otherwise
        assert torch.isfinite(full).all()
        other = compiled.unet.forward.other
        if shorter_graphs:  # one graph: the short clip's (1 clip, 5 frames, guided), replayed
            assert len(other.fn.graphs) == 1 and not other.fn.plain
        else:
            assert other is compiled.unet.forward.eager
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
