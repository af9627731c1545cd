"""What the Ray stages ask for, decided in one place from the config and the cluster."""

from __future__ import annotations

from dataclasses import dataclass

from v2v.config import JobConfig, SpeedSettings


@dataclass(frozen=True)
class Resources:
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    cpus_per_task: float
    device: str
    dtype: str
    torch_threads: int  # per CPU actor, so actors do not fight over cores
    batch_invariant: bool
    speed: SpeedSettings  # resolved for `device`: every switch on or off


def auto_dtype(device: str, bf16_native: bool = True) -> str:
    """What `dtype="auto"` runs in. GPUs: bfloat16 where the card has it natively (Ampere and later): faster than
    float16 on the cards measured, with float32's exponent range (no overflow to inf), at coarser rounding. Older
    GPUs: float16. CPU: float32."""
    if device != "cuda":
        return "float32"
    return "bfloat16" if bf16_native else "float16"


def resources(cfg: JobConfig, cluster: dict) -> Resources:
    """cluster: ray.cluster_resources() (e.g. {"CPU": 16, "GPU": 2})."""
    gpus = int(cluster.get("GPU", 0))
    cpus = max(1, int(cluster.get("CPU", 1)))
    gpus_per_actor = cfg.num_gpus_per_actor if cfg.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if gpus_per_actor > 0:
        num_actors = cfg.num_actors or max(1, int(gpus // gpus_per_actor))
        device = "cuda"
    else:
        num_actors = cfg.num_actors or 1
        device = "cpu"
    # The driver may have no GPU to ask: it assumes native bf16, and an actor on an older card falls back
    # (stages.Restyle).
    dtype = cfg.dtype if cfg.dtype != "auto" else auto_dtype(device)
    # CPU actors share the machine with decode/encode tasks: half the cores go to actors.
    cpus_per_actor = 1.0 if device == "cuda" else max(0.5, min(2.0, cpus / (2 * num_actors)))
    threads = max(1, int(cpus // max(1, num_actors))) if device == "cpu" else 4
    invariant = cfg.batch_invariant if cfg.batch_invariant is not None else device == "cpu"
    return Resources(num_actors, gpus_per_actor, cpus_per_actor, cfg.cpus_per_task, device, dtype, threads,
                     invariant, cfg.speed.resolved(device))
