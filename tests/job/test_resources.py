"""What the Ray stages ask for, decided from the config and the cluster (v2v.job.resources)."""


import dataclasses

import pytest

from v2v.config import SpeedSettings


def test_gpu_actors_compile_by_default_and_cpu_actors_do_not():
    from v2v.config import JobConfig
    from v2v.job.resources import auto_dtype, resources

    def job(**speed):
        return JobConfig(manifest="m", output="o", speed=SpeedSettings(**speed))

    gpu = resources(JobConfig(manifest="m", output="o"), {"CPU": 16, "GPU": 2})
    cpu = resources(JobConfig(manifest="m", output="o"), {"CPU": 16})
    assert (gpu.device, gpu.speed.compile, gpu.speed.compile_vae, gpu.batch_invariant, gpu.max_actors) == (
        "cuda", True, True, False, 2)
    assert (cpu.device, cpu.speed.compile, cpu.speed.compile_vae, cpu.batch_invariant) == ("cpu", False, False, True)
    # auto dtype: bfloat16 on GPUs (float16 on cards without native bf16), float32 on the CPU; a set one stays
    assert (gpu.dtype, cpu.dtype) == ("bfloat16", "float32")
    assert auto_dtype("cuda", bf16_native=False) == "float16"
    assert resources(JobConfig(manifest="m", output="o", dtype="float16"), {"GPU": 1}).dtype == "float16"
    forced = resources(dataclasses.replace(job(compile=False), batch_invariant=True), {"GPU": 1})
    assert (forced.speed.compile, forced.speed.compile_vae, forced.batch_invariant) == (False, False, True)
    unet_only = resources(job(compile_vae=False), {"GPU": 1}).speed
    assert (unet_only.compile, unet_only.compile_vae) == (True, False)
    # compiled parts are stored as torch.compile's functions with compile, unless turned off
    assert (gpu.speed.precompile, cpu.speed.precompile, forced.speed.precompile) == (True, False, False)
    assert not resources(job(precompile=False), {"GPU": 1}).speed.precompile
    # a first start compiles in the background by default, unless the clips must be bit-identical whatever the
    # actor (an eager clip differs from a compiled one by rounding) or nothing is stored
    assert gpu.speed.background_compile and not cpu.speed.background_compile
    invariant = resources(dataclasses.replace(job(), batch_invariant=True), {"GPU": 1}).speed
    assert invariant.compile and invariant.precompile and not invariant.background_compile
    assert not resources(job(precompile=False), {"GPU": 1}).speed.background_compile
    assert not resources(job(background_compile=False), {"GPU": 1}).speed.background_compile
    # every model switch follows compile unless set, either way
    for name in ("temporal_layers", "frame_attention", "channel_stats", "shared_prefix", "upsample_phases",
                 "cuda_graphs"):
        assert (getattr(gpu.speed, name), getattr(cpu.speed, name), getattr(forced.speed, name)) == (
            True, False, False), name
        assert getattr(resources(job(**{name: False}), {"GPU": 1}).speed, name) is False, name
        assert getattr(resources(job(**{name: True}), {"CPU": 2}).speed, name) is True, name



def test_batch_invariant_actors_run_a_fixed_number_of_threads_whatever_their_count():
    from v2v.config import JobConfig
    from v2v.job.resources import BATCH_INVARIANT_THREADS, resources

    cfgs = [JobConfig(manifest="m", output="o", num_actors=n) for n in (1, 2, 3)]
    threads = {resources(c, {"CPU": cpus}).torch_threads for c in cfgs for cpus in (2, 4, 16)}
    assert threads == {BATCH_INVARIANT_THREADS}
    # batching CPU actors (not invariant) share the machine's cores instead
    free = JobConfig(manifest="m", output="o", num_actors=2, batch_invariant=False)
    assert resources(free, {"CPU": 16}).torch_threads == 8


def test_the_device_and_the_actor_pool_follow_what_the_cluster_can_reach():
    """An autoscaling cluster whose GPU workers start at zero (cluster/aws.yaml: a CPU-only head, GPU workers
    min 0, max 4) plans as cuda, its pool growing to the GPUs it can reach; --device says so outright."""
    from v2v.config import ConfigError, JobConfig
    from v2v.job.resources import resources

    job = JobConfig(manifest="m", output="o")
    empty_head = {"CPU": 0.0, "memory": 1e9}
    r = resources(job, empty_head, {"CPU": 32, "GPU": 4})
    assert (r.device, r.dtype, r.initial_actors, r.max_actors, r.gpus_per_actor, r.speed.compile) == (
        "cuda", "bfloat16", 1, 4, 1.0, True)
    r = resources(job, {"CPU": 16, "GPU": 2}, {"GPU": 8})  # two GPUs up now: the pool starts with two
    assert (r.initial_actors, r.max_actors) == (2, 8)
    assert resources(job, {"CPU": 16}, {}).device == "cpu"  # no GPU now nor reachable
    cuda = dataclasses.replace(job, device="cuda")
    assert resources(cuda, {"CPU": 16}, {}).device == "cuda"  # never the CPU when asked for cuda
    cpu = dataclasses.replace(job, device="cpu", num_actors=3)
    r = resources(cpu, {"CPU": 16, "GPU": 2}, {})
    assert (r.device, r.gpus_per_actor, r.initial_actors, r.max_actors) == ("cpu", 0.0, 1, 3)
    with pytest.raises(ConfigError, match="num_gpus_per_actor 1.0 needs device cuda"):
        resources(dataclasses.replace(cpu, num_gpus_per_actor=1.0), {"CPU": 16}, {})
