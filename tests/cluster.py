"""A real local Ray cluster for tests: `ray start --head` with the dashboard (for `ray job submit`)."""

import os
import socket
import subprocess
import sys
import time


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
