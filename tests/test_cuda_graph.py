"""v2v.cuda_graph: the compiled UNet's call replayed from a CUDA graph.

CUDA graphs exist only on a GPU: on a CPU-only machine the tests that replay one are not collected as passing
but skipped, and run on the GPU machines (benchmarks/gpu_explore.sh queues `pytest tests/test_cuda_graph.py`;
the run's log is kept with the benchmark's raw outputs). What the CPU can check is checked here on the CPU:
the switch leaves a CPU actor's computation as it is, and a CPU tensor is refused with a clear error.
"""
import os
import shutil

import pytest
import torch
import torch._inductor.config  # noqa: F401  (torch._inductor.config.patch below)

from v2v.cuda_graph import GraphedCall
from v2v.models import load_components
from v2v.perf import apply_perf_settings
from v2v.sampler import restyle
from tests.test_perf import CLIPS, _video

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_graphed_call_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA tensor.*cpu"):
        GraphedCall(lambda x: x * 2)(torch.ones(3))


def test_cuda_graphs_switch_leaves_a_cpu_actor_as_it_is(cache_dir):
    want = restyle(load_components("tiny", cache_dir=cache_dir), _video(2), CLIPS, output="latents")
    c = load_components("tiny", cache_dir=cache_dir)
    forward = c.unet.forward
    apply_perf_settings(c, cuda_graphs=True)  # without compile, and on the CPU: nothing to record
    assert c.unet.forward == forward
    torch.testing.assert_close(restyle(c, _video(2), CLIPS, output="latents"), want, rtol=0, atol=0)


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
    video = _video(2)
    outs = []
    for graphs, precompile in ((False, False), (True, False), (True, True)):
        c = load_components("tiny", cache_dir=cache_dir, device="cuda")
        apply_perf_settings(c, compile=True, unet_batch=4, cuda_graphs=graphs, precompile=precompile)
        outs.append(restyle(c, video, CLIPS, output="latents"))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=1e-5)
    c = load_components("tiny", cache_dir=cache_dir, device="cuda")
    apply_perf_settings(c, compile=True, unet_batch=4, cuda_graphs=True)
    x = torch.randn(4, 4, 8, 8, 8, device="cuda")  # a guided call of 2 clips: the latents twice, 4 embeddings
    e = torch.randn(4, 77, c.text_encoder.config.hidden_size, device="cuda")
    with torch.no_grad():
        a = c.unet(x, torch.tensor(100), encoder_hidden_states=e, return_dict=False)[0]
        b = c.unet(x, torch.tensor(900), encoder_hidden_states=e, return_dict=False)[0]
    assert (a - b).abs().max() > 1e-3


@cuda
def test_graph_over_an_ahead_of_time_package_restyles_the_same(cache_dir):
    """`--compile-aot` with the graph: the AOTInductor package's runner recorded and replayed (it launches on the
    current stream) gives the latents the package gives called plainly; neither run fell back to torch.compile.
    The package is built with the system compiler, as the README asks for --compile-aot on the GPU images: their
    environment sets CXX=/opt/gcc/bin/g++ (a wrapper around another g++ build), whose packages crash their load
    check (benchmarks/RESULTS.md, twenty-seventh and twenty-eighth sections; this test failed there while it took
    CXX first). Named through inductor's `cpp.cxx`, which inductor filled from CXX when imported (before this test)."""
    compiler = "/usr/bin/g++" if os.path.exists("/usr/bin/g++") else (os.environ.get("CXX") or shutil.which("g++"))
    video = _video(2)
    outs = []
    with torch._inductor.config.patch({"cpp.cxx": (None, compiler or "g++")}):
        for graphs in (False, True):
            c = load_components("tiny", cache_dir=cache_dir, device="cuda")
            aot = apply_perf_settings(c, compile=True, compile_aot=True, unet_batch=4, cuda_graphs=graphs)
            outs.append(restyle(c, video, CLIPS, output="latents"))
            assert aot["unet"].failed is None and aot["unet"].runners  # the package ran, not the fallback
            call = c.unet.forward.forward.fn  # FixedBatch -> UNetCall -> the graphed call, or the package itself
            assert (len(call.graphs) == 1) if graphs else call is aot["unet"]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)


@cuda
def test_a_call_that_cannot_be_recorded_names_the_switch():
    def waits_for_the_cpu(x):
        return x * float(x.sum())  # .item(): a synchronization, which a recording cannot hold

    # last in this file: a failed recording may leave the device's state to its process
    with pytest.raises(RuntimeError, match="no-cuda-graphs"):
        GraphedCall(waits_for_the_cpu, warmups=1)(torch.ones(4, device="cuda"))
