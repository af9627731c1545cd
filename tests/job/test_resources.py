"""What the Ray stages ask for, decided from the config and the cluster (v2v.job.resources)."""


import dataclasses

from v2v.config import SpeedSettings


def test_gpu_actors_compile_by_default_and_cpu_actors_do_not():
    from v2v.config import JobConfig
    from v2v.job.resources import auto_dtype, resources

    def job(**speed):
        return JobConfig(manifest="m", output="o", speed=SpeedSettings(**speed))

    gpu = resources(JobConfig(manifest="m", output="o"), {"CPU": 16, "GPU": 2})
    cpu = resources(JobConfig(manifest="m", output="o"), {"CPU": 16})
    assert (gpu.device, gpu.speed.compile, gpu.speed.compile_vae, gpu.batch_invariant, gpu.num_actors) == (
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
    # every model switch follows compile unless set, either way
    for name in ("temporal_layers", "frame_attention", "channel_stats", "shared_prefix", "upsample_phases",
                 "cuda_graphs"):
        assert (getattr(gpu.speed, name), getattr(cpu.speed, name), getattr(forced.speed, name)) == (
            True, False, False), name
        assert getattr(resources(job(**{name: False}), {"GPU": 1}).speed, name) is False, name
        assert getattr(resources(job(**{name: True}), {"CPU": 2}).speed, name) is True, name

