"""UNet calls replayed from CUDA graphs (`cuda_graphs`: the compiled call; `shorter_graphs`: the eager calls of
other clip shapes, a video's shorter last clips).

A compiled 4-clip guided step launches ~2,150 kernels (cuDNN and cuBLAS calls, inductor's Triton kernels, v2v's
frame attention) from Python: inductor's wrapper, the stored part's guards and the launchers run on the CPU
before and between them, some milliseconds a step over the sum of its kernels. An eager forward spends far more
there (every module's Python), so a small eager call (a few shorter clips) waits on the CPU, not on its kernels.
A CUDA graph records the launches of one call once and replays them as one: the CPU work goes, the kernels and
their arithmetic stay the same.

A graph replays fixed addresses, so each input signature (shapes, dtypes, layouts) gets its own graph with
static input buffers: a call copies its tensors into them, replays, and returns a copy of the static output
(the next replay overwrites it). What the function reads must be among its tensor inputs: a value it took from
the CPU while recorded (a Python number, a CPU tensor) would be replayed as recorded, so the UNet's timestep
comes in on the GPU (`v2v.speed.UNetCall` moves it there). The function must not synchronize with the CPU.
"""

from __future__ import annotations

import logging

import torch

from v2v.speed.stored import (
    signature,  # what one graph serves, as one stored part: shapes, dtypes, devices, layouts
)

logger = logging.getLogger(__name__)


class GraphedCall:
    """fn(*tensors) -> tensor on CUDA, replayed from one recorded CUDA graph per input signature.

    A signature's first `warmups` calls run fn plainly and return its result (on a side stream, as torch's
    make_graphed_callables warms up: a compiled function compiles and autotunes there, cuDNN picks its
    algorithms, Triton compiles its kernels for new shapes); the next one is recorded, then replayed. So a new
    signature costs one recording's CPU time, not extra forwards. Graphs share one memory pool (`pool`, or one of
    their own): they never run at once, and each call copies its output out before any other replay can reuse
    that memory.

    max_graphs: beyond this many signatures, calls of a new one run plainly (each graph holds its recorded
    launches and its static buffers). fallback: a signature that fails to record runs plainly from then on, said
    once in the log, instead of raising (for optional graphs: the eager calls of other clip shapes). switch: the
    speed switch an error names.
    """

    def __init__(self, fn, warmups: int = 2, *, pool=None, max_graphs: int | None = None, fallback: bool = False,
                 switch: str = "cuda_graphs"):
        self.fn, self.switch = fn, switch
        self.warmups = warmups
        self.pool = pool
        self.max_graphs, self.fallback = max_graphs, fallback
        self.graphs: dict[tuple, tuple] = {}  # signature -> (graph, static inputs, static output)
        self.calls: dict[tuple, int] = {}  # signature -> plain calls so far (warm-ups; not recorded)
        self.plain: set[tuple] = set()  # signatures that run plainly for good (over max_graphs, or failed)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        sig = signature(tensors)
        entry = self.graphs.get(sig)
        if entry is None:
            if not all(t.is_cuda for t in tensors):
                raise ValueError(f"GraphedCall: every input must be a CUDA tensor, got devices "
                                 f"{[str(t.device) for t in tensors]}")
            if sig in self.plain:
                return self.fn(*tensors)
            if self.calls.get(sig, 0) < self.warmups:
                self.calls[sig] = self.calls.get(sig, 0) + 1
                return self._warm_up(tensors)
            if self.max_graphs is not None and len(self.graphs) >= self.max_graphs:
                self.plain.add(sig)
                return self.fn(*tensors)
            try:
                entry = self.graphs[sig] = self._record(tensors)
            except RuntimeError as e:
                if not self.fallback:
                    raise
                logger.warning("%s; this call shape runs without a graph from now on", e)
                self.plain.add(sig)
                return self.fn(*tensors)
        graph, inputs, out = entry
        for static, t in zip(inputs, tensors):
            static.copy_(t)
        graph.replay()
        return out.clone()

    def _warm_up(self, tensors):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.fn(*tensors)
        # the caller's stream reads the output after the side stream's work; later side-stream work (the next
        # warm-up) waits for the caller's stream first, so no memory is reused under a reader
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _record(self, tensors) -> tuple:
        # same strides as the caller's (clone keeps a dense tensor's layout); later calls' tensors are copied in
        inputs = [t.clone() for t in tensors]
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.fn(*inputs)
        except RuntimeError as e:  # e.g. an operation that waits for the CPU: the same on every start
            raise RuntimeError(f"GraphedCall: recording {getattr(self.fn, '__name__', self.fn)!r} as a CUDA graph "
                               f"failed ({e}); switch {self.switch} off (--speed {self.switch}=off) to run it "
                               "without one") from e
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"GraphedCall: the function must return one tensor, got {type(out).__name__}")
        return graph, inputs, out
