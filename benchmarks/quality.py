"""What the index's quality signals cost per clip: v2v.model.quality.signals on one clip of the benchmark's size
(576x320, 24 frames), on the device the restyle actor would use.

    python -m benchmarks.quality [--device cuda] [--frames 24 --height 320 --width 576] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from v2v.model.quality import signals


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=576)
    p.add_argument("--repeat", type=int, default=20)
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    # as the actor holds them: the restyled frames float32 in [0, 1] on the device, the source uint8 on the host
    output = torch.rand(a.frames, a.height, a.width, 3, generator=g).to(a.device)
    source = (torch.rand(a.frames, a.height, a.width, 3, generator=g) * 255).to(torch.uint8)
    times = []
    for _ in range(a.repeat + 2):
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        signals(output, source.to(a.device))  # returns Python numbers: the device is synchronized
        times.append(time.perf_counter() - t0)
    result = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "torch": torch.__version__,
              "clip": [a.frames, a.height, a.width], "median_ms": 1000 * statistics.median(times[2:]),
              "max_ms": 1000 * max(times[2:])}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
