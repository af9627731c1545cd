"""What the Ray stages ask for, decided in one place from the config and the cluster."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from v2v.config import ConfigError, JobConfig, SpeedSettings


class ClusterError(ConfigError):
    """The cluster cannot run the job as asked (no GPU joined in time for --device cuda)."""


@dataclass(frozen=True)
class Resources:
    initial_actors: int  # the restyle actor pool starts with this many (the GPUs present at the start), at least 1 ...
    max_actors: int  # ... and grows to this many as nodes join
    gpus_per_actor: float
    cpus_per_actor: float
    cpus_per_task: float
    device: str
    dtype: str
    torch_threads: int  # per CPU actor, so actors do not fight over cores
    batch_invariant: bool
    speed: SpeedSettings  # resolved for `device`: every switch on or off


# Intra-op threads of a batch-invariant (CPU) actor, whatever the actor count or the machine's cores: CPU kernels
# split their sums by thread count and round differently with it, so a clip's bits would depend on how many actors
# share the machine.
BATCH_INVARIANT_THREADS = 2


def auto_dtype(device: str, bf16_native: bool = True) -> str:
    """What `dtype="auto"` runs in. GPUs: bfloat16 where the card has it natively (Ampere and later): faster than
    float16 on the cards measured, with float32's exponent range (no overflow to inf), at coarser rounding. Older
    GPUs: float16. CPU: float32."""
    if device != "cuda":
        return "float32"
    return "bfloat16" if bf16_native else "float16"


def reachable_resources() -> dict:
    """What the connected cluster can grow to: its autoscaler's node types times their most nodes, as Ray Data
    reads them too ({} where there is no autoscaler, or it reports none)."""
    import ray._private.state

    try:
        return ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception:  # a private API: a Ray that lacks it or answers otherwise means "no autoscaler known"
        return {}


def resources(cfg: JobConfig, cluster: dict, reachable: dict | None = None) -> Resources:
    """cluster: ray.cluster_resources() (e.g. {"CPU": 16, "GPU": 2}); reachable: what the cluster can grow to
    (`reachable_resources`), e.g. {"GPU": 8} for an autoscaler whose GPU node type has 8 nodes at most."""
    gpus = int(cluster.get("GPU", 0))
    gpus_max = max(gpus, int((reachable or {}).get("GPU", 0)))
    cpus = max(1, int(cluster.get("CPU", 1)))
    device = cfg.device if cfg.device != "auto" else ("cuda" if gpus_max and cfg.num_gpus_per_actor != 0 else "cpu")
    if device == "cuda":
        gpus_per_actor = cfg.num_gpus_per_actor or 1.0
        max_actors = cfg.num_actors or max(1, int(gpus_max // gpus_per_actor))
        initial_actors = max(1, min(max_actors, int(gpus // gpus_per_actor)))
    else:
        if cfg.num_gpus_per_actor:
            raise ConfigError(f"num_gpus_per_actor {cfg.num_gpus_per_actor} needs device cuda (--device cuda)")
        gpus_per_actor = 0.0
        initial_actors, max_actors = 1, cfg.num_actors or 1
    # The driver may have no GPU to ask: it assumes native bf16, and an actor on an older card falls back
    # (stages.Restyle).
    dtype = cfg.dtype if cfg.dtype != "auto" else auto_dtype(device)
    # An actor decodes and writes its clips too (stages.ClipWorker): CPU actors share the machine's cores.
    cpus_per_actor = 1.0 if device == "cuda" else max(0.5, min(2.0, cpus / max_actors))
    invariant = cfg.batch_invariant if cfg.batch_invariant is not None else device == "cpu"
    if invariant:
        threads = BATCH_INVARIANT_THREADS
    else:
        threads = max(1, int(cpus // max_actors)) if device == "cpu" else 4
    speed = cfg.speed.resolved(device)
    if invariant and speed.background_compile:  # a clip restyled eager differs from a compiled one by rounding
        speed = dataclasses.replace(speed, background_compile=False)
    return Resources(initial_actors, max_actors, gpus_per_actor, cpus_per_actor, cfg.cpus_per_task, device, dtype,
                     threads, invariant, speed)


def wait_for_a_gpu(cfg: JobConfig, res: Resources, log) -> None:
    """With device cuda on a cluster that has no GPU yet (GPU workers that start at zero), ask the autoscaler for
    one actor's GPUs and wait up to cfg.gpu_wait_s for them to join. Raises ClusterError if none does."""
    import time

    import ray
    from ray.autoscaler.sdk import request_resources

    if res.device != "cuda" or ray.cluster_resources().get("GPU", 0) >= res.gpus_per_actor:
        return
    log(f"v2v: waiting up to {cfg.gpu_wait_s:.0f} s for a GPU node to join the cluster (--gpu-wait-s)")
    request_resources(bundles=[{"GPU": res.gpus_per_actor}])
    deadline = time.time() + cfg.gpu_wait_s
    try:
        while ray.cluster_resources().get("GPU", 0) < res.gpus_per_actor:
            if time.time() >= deadline:
                raise ClusterError(f"--device cuda: no GPU joined the cluster within {cfg.gpu_wait_s:.0f} s "
                                   "(--gpu-wait-s); check the autoscaler's GPU node type, its quota and max_workers, "
                                   "or run on CPUs with --device cpu")
            time.sleep(min(2.0, max(0.1, deadline - time.time())))
    finally:
        request_resources(bundles=[])  # the pool asks for what it needs from here on
    log("v2v: a GPU joined the cluster")
