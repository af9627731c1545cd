"""What the tests share: sample inputs, the tiny model's clips, a small UNet, and a real local Ray cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import torch

from v2v.config import SpeedSettings
from v2v.model.sampler import ClipSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two clips of the tiny model, 4 steps each (strength 0.6: 2 denoising steps).
CLIPS = [ClipSettings("a red fox", seed=1, num_inference_steps=4), ClipSettings("ink", seed=2, num_inference_steps=4)]


def random_video(b: int, seed: int = 0) -> torch.Tensor:
    """b clips of 8 random uint8 frames of 64 x 64 (the tiny model's native shape): (b, 8, 64, 64, 3)."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 8, 64, 64, 3), dtype=np.uint8))


def speed_only(**on) -> SpeedSettings:
    """Speed settings with exactly the given switches set and every other off (none left to the device's default)."""
    off = {"compile": False, "compile_vae": False, "precompile": False, "temporal_layers": False,
           "frame_attention": False, "channel_stats": False, "shared_prefix": False, "upsample_phases": False,
           "cuda_graphs": False}
    return SpeedSettings(**{**off, **on})


def small_unet(**config):
    """A random UNet3D of the tiny model's kind (the tiny one has one layer per block; zeroscope has two)."""
    from diffusers import UNet3DConditionModel

    from benchmarks.harness import unzero_temporal_layers

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**{"block_out_channels": (32, 64), "layers_per_block": 2, "cross_attention_dim": 32,
                                   "attention_head_dim": 8, "norm_num_groups": 8,
                                   "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
                                   "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"), **config}).eval()
    unzero_temporal_layers(unet)  # diffusers starts them as identities: make them compute something
    return unet


def frame_index(frame: np.ndarray) -> int:
    """Read back the index (mod 64) that jobs.demo.pattern_frame stamped into a frame; robust to mild lossy coding."""
    return int(round(float(frame[4:12, 4:12].mean()) / 4)) % 64


# A real local Ray cluster: `ray start --head` with the dashboard (for `ray job submit`).


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]


def start_head(temp_dir: str, num_cpus: int = 4) -> dict:
    """Start a head node. Token authentication is on (conftest sets the token before Ray is imported, which
    is when Ray reads it); this process and its children (drivers, `ray job submit`) share it."""
    gcs, dash = free_port(), free_port()
    cmd = ray_cli() + ["start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                       "--include-dashboard=true", f"--num-cpus={num_cpus}", "--num-gpus=0",
                       f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    dashboard = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 60
    import urllib.request

    while time.time() < deadline:  # the job server answers a little after `ray start` returns
        try:
            req = urllib.request.Request(f"{dashboard}/api/version",
                                         headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"})
            urllib.request.urlopen(req, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    return {"address": f"127.0.0.1:{gcs}", "dashboard": dashboard}


def stop() -> None:
    """Stop the cluster. `ray stop` stops every Ray on the machine (its dashboard and agent processes do not
    all name the temp dir, so nothing narrower catches them): run one test session per machine at a time."""
    subprocess.run(ray_cli() + ["stop", "--force"], capture_output=True, timeout=120)
