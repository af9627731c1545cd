"""The compiled UNet's call replayed from a CUDA graph (`cuda_graphs`).

A compiled 4-clip guided step launches ~2,150 kernels (cuDNN and cuBLAS calls, inductor's Triton kernels, v2v's
frame attention) from Python: inductor's wrapper, the stored part's guards and the launchers run on the CPU
before and between them, some milliseconds a step over the sum of its kernels. A CUDA graph records the launches of one call once and
replays them as one: the CPU work goes, the kernels and their arithmetic stay the same.

A graph replays fixed addresses, so each input signature (shapes, dtypes, layouts) gets its own graph with
static input buffers: a call copies its tensors into them, replays, and returns a copy of the static output
(the next replay overwrites it). What the function reads must be among its tensor inputs: a value it took from
the CPU while recorded (a Python number, a CPU tensor) would be replayed as recorded, so the UNet's timestep
comes in on the GPU (`v2v.speed.fixed_shapes.DenoiserCall` moves it there). The function must not synchronize with
the CPU.
"""

from __future__ import annotations

import torch

from v2v.speed.stored import (
    signature,  # what one graph serves, as one stored part: shapes, dtypes, devices, layouts
)


class GraphedCall:
    """fn(*tensors) -> tensor on CUDA, replayed from one recorded CUDA graph per input signature.

    fn's first calls for a signature run plainly (`warmups` of them, on a side stream as torch's
    make_graphed_callables does: a compiled function compiles and autotunes there, cuDNN picks its algorithms),
    then one call is recorded. All graphs share one memory pool: they never run at once, and each call copies its
    output out before any other replay can reuse that memory.
    """

    def __init__(self, fn, warmups: int = 2):
        self.fn = fn
        self.warmups = warmups
        self.graphs: dict[tuple, tuple] = {}  # signature -> (graph, static inputs, static output)
        self.pool = None

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        sig = signature(tensors)
        entry = self.graphs.get(sig)
        if entry is None:
            entry = self.graphs[sig] = self._record(tensors)
        graph, inputs, out = entry
        for static, t in zip(inputs, tensors):
            static.copy_(t)
        graph.replay()
        return out.clone()

    def _record(self, tensors) -> tuple:
        if not all(t.is_cuda for t in tensors):
            raise ValueError(f"GraphedCall: every input must be a CUDA tensor, got devices "
                             f"{[str(t.device) for t in tensors]}")
        # same strides as the caller's (clone keeps a dense tensor's layout); later calls' tensors are copied in
        inputs = [t.clone() for t in tensors]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmups):
                self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.fn(*inputs)
        except RuntimeError as e:  # e.g. an operation that waits for the CPU: the same on every start
            raise RuntimeError(f"GraphedCall: recording {getattr(self.fn, '__name__', self.fn)!r} as a CUDA graph "
                               f"failed ({e}); switch cuda_graphs off (--speed cuda_graphs=off) to run it without one") from e
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"GraphedCall: the function must return one tensor, got {type(out).__name__}")
        return graph, inputs, out
