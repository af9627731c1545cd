"""The GPU layer: what only a CUDA device can run (tests/gpu/ is skipped, test by test, on machines without one; the
GPU machines run it with `bash benchmarks/gpu_run.sh NAME tests`)."""

import pytest
import torch

from tests.helpers import CLIPS, random_video, speed_only
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings
from v2v.speed.cuda_graph import GraphedCall

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_graphed_call_replays_each_call_on_its_own_inputs():
    w = torch.randn(64, 64, device="cuda")
    calls = []

    def fn(x, t):
        calls.append(1)
        return torch.relu(x @ w) * t  # t: a 0-d GPU tensor, read from its buffer on every replay

    g = GraphedCall(fn, warmups=1)
    outs = []
    for i in range(4):
        x, t = torch.randn(8, 64, device="cuda"), torch.tensor(float(i + 1), device="cuda")
        outs.append(g(x, t))
        torch.testing.assert_close(outs[-1], fn(x, t), rtol=0, atol=0)
    assert len(calls) == 2 + 4  # one warm-up and the recording, then only the reference calls above
    assert len({o.data_ptr() for o in outs}) == 4  # each call's output is its own copy
    g(torch.randn(2, 64, device="cuda"), torch.tensor(1.0, device="cuda"))  # another shape: a second graph
    assert len(g.graphs) == 2


@cuda
def test_compiled_unet_replayed_from_a_graph_restyles_the_same(cache_dir):
    """The tiny model on the GPU, compiled, without the graph and with it, over torch.compile and over the stored
    part as the job runs it (precompile): the same latents; the timestep of every step reaches the replayed graph
    (a recorded CPU value would repeat the first step's)."""
    video = random_video(2)
    outs = []
    for graphs, precompile in ((False, False), (True, False), (True, True)):
        c = load_components("tiny", cache_dir=cache_dir, device="cuda")
        apply_speed_settings(c, speed_only(compile=True, cuda_graphs=graphs, precompile=precompile), unet_batch=4)
        outs.append(restyle(c, video, CLIPS, output="latents"))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=1e-5)
    c = load_components("tiny", cache_dir=cache_dir, device="cuda")
    apply_speed_settings(c, speed_only(compile=True, cuda_graphs=True), unet_batch=4)
    x = torch.randn(4, 4, 8, 8, 8, device="cuda")  # a guided call of 2 clips: the latents twice, 4 embeddings
    e = torch.randn(4, 77, c.text_encoder.config.hidden_size, device="cuda")
    with torch.no_grad():
        a = c.unet(x, torch.tensor(100), encoder_hidden_states=e, return_dict=False)[0]
        b = c.unet(x, torch.tensor(900), encoder_hidden_states=e, return_dict=False)[0]
    assert (a - b).abs().max() > 1e-3


@cuda
def test_a_call_that_cannot_be_recorded_names_the_switch():
    def waits_for_the_cpu(x):
        return x * float(x.sum())  # .item(): a synchronization, which a recording cannot hold

    # last in this file: a failed recording may leave the device's state to its process
    with pytest.raises(RuntimeError, match="cuda_graphs=off"):
        GraphedCall(waits_for_the_cpu, warmups=1)(torch.ones(4, device="cuda"))
