"""What the tests share: sample inputs, the tiny model's clips, a small UNet, and a real local Ray cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def progress_rows(out, columns: list[str] | None = None):
    """The rows a running job has written to out/_progress so far, as one DataFrame (empty: none yet). A part
    vanishing under the reader (the run ended and merged its progress into the index) is skipped."""
    import pandas as pd

    parts = []
    for f in out.glob("_progress/*/part-*.parquet"):
        try:
            parts.append(pd.read_parquet(f, columns=columns))
        except (FileNotFoundError, OSError):
            pass
    return pd.concat(parts) if parts else pd.DataFrame(columns=columns or ["worker", "status"])


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
    """Start a head node, its metrics for Prometheus at the returned "metrics" URL. Token authentication is on (conftest sets the token before Ray is imported, which
    is when Ray reads it); this process and its children (drivers, `ray job submit`) share it."""
    gcs, dash, metrics = free_port(), free_port(), free_port()
    cmd = ray_cli() + ["start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                       "--include-dashboard=true", f"--num-cpus={num_cpus}", "--num-gpus=0",
                       f"--metrics-export-port={metrics}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
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
    return {"address": f"127.0.0.1:{gcs}", "dashboard": dashboard, "metrics": f"http://127.0.0.1:{metrics}/metrics"}


def stop() -> None:
    """Stop the cluster. `ray stop` stops every Ray on the machine (its dashboard and agent processes do not
    all name the temp dir, so nothing narrower catches them): run one test session per machine at a time."""
    subprocess.run(ray_cli() + ["stop", "--force"], capture_output=True, timeout=120)


# The network between the job and the S3-compatible server, with faults the tests inject.


class FaultyNetwork:
    """An HTTP proxy in front of the S3-compatible server: it forwards every request, except those a test chose to
    fail (`outage`): their connection is reset, or the store answers 503 SlowDown, as object stores do under load.
    Runs in the test process; Ray's workers reach the store through it (AWS_ENDPOINT_URL)."""

    def __init__(self, upstream: str):
        import http.server
        import threading

        self.upstream = upstream.split("://", 1)[1]
        self.rules: list[dict] = []
        self.failed: dict[str, int] = {}  # path substring -> requests failed
        self.lock = threading.Lock()
        net = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        chunk = self.rfile.read(size + 2)
                        raw += chunk
                        if size == 0:
                            while chunk not in (b"\r\n", b""):  # trailers
                                chunk = self.rfile.readline()
                                raw += chunk
                            return raw
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self):
                import http.client
                import socket
                import struct

                body = self._body()
                fault = net.fault_for(self.command, self.path)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "503":
                    xml = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                           b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection(net.upstream, timeout=60)
                conn.request(self.command, self.path, body=body or None,
                             headers={k: v for k, v in self.headers.items()}, encode_chunked=False)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():  # a HEAD's Content-Length is the object's size: kept
                    if k.lower() not in ("transfer-encoding", "connection") and (
                            k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def outage(self, path_contains: str, seconds: float = float("inf"), how: str = "reset") -> None:
        """Fail every request whose path holds `path_contains`, from its first such request on, for `seconds`."""
        with self.lock:
            self.rules.append({"path": path_contains, "seconds": seconds, "how": how, "since": None})
            self.failed[path_contains] = 0

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def fault_for(self, method: str, path: str) -> str | None:
        with self.lock:
            for rule in self.rules:
                if rule["path"] in path:
                    rule["since"] = rule["since"] or time.monotonic()
                    if time.monotonic() - rule["since"] < rule["seconds"]:
                        self.failed[rule["path"]] += 1
                        return rule["how"]
        return None

    def close(self) -> None:
        self.server.shutdown()


# A real headless browser (Debian's Chromium: `apt-get install chromium`; .ci/run installs it), for the pages v2v
# writes. The flags keep it off the network, which this machine does not have.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browser_dom(url: str, wait_ms: int = 5000, flags: tuple[str, ...] = ()) -> str:
    """The page's DOM after it loaded and its scripts ran (chromium --headless --dump-dom); `flags`: Chromium's own,
    added."""
    assert CHROMIUM, "no Chromium on this machine: apt-get install chromium (.ci/run does)"
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={profile}", "--allow-file-access-from-files",
                            f"--virtual-time-budget={wait_ms}", *flags, "--dump-dom", url],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout
