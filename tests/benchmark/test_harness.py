"""The benchmark's helpers (benchmarks/harness.py, benchmarks/run.py): variants, FLOP and kernel accounting, rates."""


import dataclasses
from pathlib import Path

import torch

from benchmarks.harness import actor_rates, kernel_kinds, max_unwritten, parse_smi_utilization, profiler_kernels


def test_kernel_kinds_sort_profiler_kernel_names():
    kinds = kernel_kinds([
        ("triton_red_fused_add_clone_native_group_norm_permute_12", 1.0),
        ("triton_poi_fused_gelu_mul_split_view_33", 2.0),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64", 4.0),  # not a conv
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x256x64", 8.0),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float>", 16.0),
        ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT", 32.0),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", 64.0),
        ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16>", 0.5),
        ("some_new_kernel", 128.0),
    ])
    assert kinds == {"generated: reduction (norm + fused elementwise)": 1.0, "generated: pointwise": 2.0,
                     "attention": 4.0, "convolution": 8.0, "layout conversion": 16.0, "matmul": 32.0,
                     "elementwise (eager)": 64.0, "norm (eager)": 0.5, "other": 128.0}


def test_profiler_kernels_lists_what_a_profile_ran_slowest_first():
    a, b = torch.randn(256, 256), torch.randn(64, 64)
    with torch.profiler.profile() as prof:
        for _ in range(3):
            a @ a
        b.relu()
    kernels = profiler_kernels(prof, cuda=False)  # on a CPU run: the operators
    by_name = {name: (secs, calls) for name, secs, calls in kernels}
    assert by_name["aten::mm"][1] == 3 and by_name["aten::relu"][1] == 1
    assert all(secs > 0 for _, secs, _ in kernels)
    assert [secs for _, secs, _ in kernels] == sorted((secs for _, secs, _ in kernels), reverse=True)
    assert profiler_kernels(prof, cuda=True) == []  # no GPU kernels ran


def test_benchmark_falls_back_to_what_the_job_runs():
    """With no sampler row to take the fastest from, the attention, start-up and Ray job sections measure the job's
    own GPU configuration (JobConfig's defaults as `resources` resolves them on a GPU cluster), or float32 on CPU."""
    from benchmarks.run import JOB_GPU_VARIANT, _section_variant, _variant_cfg
    from v2v.config import JobConfig
    from v2v.job.resources import resources

    assert _section_variant({"variant": "float16", "batch": 2}, cuda=True) == ("float16", 2)
    assert _section_variant(None, cuda=True) == (JOB_GPU_VARIANT, 4)
    assert _section_variant(None, cuda=False) == ("float32", 1)
    assert _section_variant({"variant": "float16", "batch": 2}, True, "bfloat16", None) == ("bfloat16", 2)
    dtype, speed = _variant_cfg(JOB_GPU_VARIANT)
    job = resources(JobConfig(manifest="m", output="o"), {"CPU": 8, "GPU": 1})
    assert dtype == job.dtype and speed == job.speed  # every switch as the job resolves it on a GPU


def test_benchmark_loads_give_each_unet_its_own_forward_code(cache_dir):
    """Dynamo keeps compiled graphs per code object and guards neither hooks nor inductor settings, so every model
    the benchmark loads gets its own copy of the UNet's forward (else two variants could share one graph)."""
    import torch

    from benchmarks.run import _load
    from v2v.model.loading import resolve_model

    folder = str(resolve_model("tiny"))
    a, b = _load(folder, "cpu", "float32"), _load(folder, "cpu", "float32")
    codes = [a.unet.forward.__func__.__code__, b.unet.forward.__func__.__code__, type(a.unet).forward.__code__]
    assert len({id(c) for c in codes}) == 3  # distinct objects (code objects compare equal by content)
    x = torch.randn(2, a.unet.config.in_channels, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    e = torch.randn(2, 77, a.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the copy computes what the class's forward does
        got = a.unet(x, 10, encoder_hidden_states=e, return_dict=False)[0]
        want = type(a.unet).forward(a.unet, x, 10, encoder_hidden_states=e, return_dict=False)[0]
    assert torch.equal(got, want)


def test_benchmark_unet_step_is_one_guided_step_of_the_variant(cache_dir):
    from benchmarks.run import _load, _step_inputs, unet_step
    from v2v.model.loading import resolve_model
    from v2v.speed.group_norm import ChannelStatsGroupNorm

    folder = str(resolve_model("tiny"))
    plain = _load(folder, "cpu", "float32")
    x, e, t = _step_inputs(plain, 2)
    assert torch.equal(x[:2], x[2:])  # a guided step: the same latents for both halves
    with torch.no_grad():
        want = plain.unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
    assert want.shape[0] == 4  # cond + uncond latents for 2 clips
    for variant in ("float32+chanstats", "float32+chanstats+prefix"):
        c, step = unet_step(folder, "cpu", variant, batch=2)
        assert any(isinstance(m, ChannelStatsGroupNorm) for m in c.unet.modules())  # the variant's switches
        assert _step_inputs(c, 2)[0].shape[0] == (2 if variant.endswith("prefix") else 4)  # latents once, or twice
        torch.testing.assert_close(step(), want, rtol=0, atol=1e-4)


def test_benchmark_model_folder_builds_the_random_model_once_and_resolves_the_rest(tmp_path):
    from benchmarks.run import model_folder

    kept = tmp_path / "random-576w"
    kept.mkdir()
    (kept / "model_index.json").write_text("{}")  # an earlier run's model: reused, not rebuilt
    assert model_folder("random-576w", str(tmp_path), "cpu") == (str(kept), None)
    folder, built = model_folder("tiny", str(tmp_path / "unused"), "cpu")
    assert built is None and (Path(folder) / "model_index.json").exists() and not (tmp_path / "unused").exists()


def test_benchmark_variants_name_config_switches():
    from benchmarks.run import _variant_cfg

    def switches(variant):
        return dataclasses.asdict(_variant_cfg(variant)[1])

    off = {"temporal_layers": False, "frame_attention": False, "channel_stats": False, "shared_prefix": False,
           "upsample_phases": False, "cuda_graphs": False, "compile": False, "precompile": False,
           "compile_vae": False, "background_compile": False, "cudnn_benchmark": True}
    assert _variant_cfg("bfloat16+compile+vae")[0] == "bfloat16"
    assert switches("bfloat16+compile+vae") == {**off, "compile": True, "compile_vae": True}
    assert switches("float16") == off
    # pre stores the compiled parts: it implies compile
    assert switches("bfloat16+pre+vae") == {**off, "compile": True, "precompile": True, "compile_vae": True}
    # bg compiles in the background where the parts are not stored: it implies pre
    assert switches("bfloat16+bg+vae") == {**off, "compile": True, "precompile": True, "compile_vae": True,
                                           "background_compile": True}
    assert switches("bfloat16+temporal+compile") == {**off, "temporal_layers": True, "compile": True}
    assert switches("bfloat16+temporal+frameattn") == {**off, "temporal_layers": True, "frame_attention": True}
    assert switches("bfloat16+chanstats") == {**off, "channel_stats": True}
    assert switches("bfloat16+prefix") == {**off, "shared_prefix": True}
    assert switches("bfloat16+phaseup") == {**off, "upsample_phases": True}
    assert switches("bfloat16+graph+compile") == {**off, "cuda_graphs": True, "compile": True}
    assert switches("bfloat16+compile+nobench") == {**off, "compile": True, "cudnn_benchmark": False}
    for bad, says in [("bfloat16+turbo", "turbo"), ("bfloat16+vae", "vae needs compile"),
                      ("bfloat16+aot", "aot")]:
        try:
            _variant_cfg(bad)
        except ValueError as e:
            assert says in str(e) and bad in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_actor_rates_count_clips_after_each_actors_first():
    rows = []
    # actor A: 2 clips every 10 s, the first after a long start-up; actor B: one clip only
    for k, start in enumerate([100.0, 110.0, 120.0]):
        rows += [{"status": "ok", "worker": "h/1/gpu0", "restyle_started_at": start,
                  "restyle_finished_at": start + 8.0}] * 2
    rows.append({"status": "ok", "worker": "h/2/gpu1", "restyle_started_at": 105.0, "restyle_finished_at": 113.0})
    rows.append({"status": "failed", "worker": None, "restyle_started_at": None, "restyle_finished_at": None})
    r = actor_rates(rows)
    a = r["actors"]["h/1/gpu0"]
    # 4 clips after the first ones, from their end (108) to the last end (128): 20 s; inside the model 16 s
    assert a["clips_per_hour"] == 3600 * 4 / 20 and a["busy"] == 16 / 20 and a["clips"] == 6
    assert a["idle"] == [2.0, 2.0]  # 108-110 and 118-120
    assert "h/2/gpu1" not in r["actors"] and r["clips_per_hour"] == a["clips_per_hour"]
    # clips in flight overlap (continuous batching): the model is busy while any is in it, counted once
    staggered = [{"status": "ok", "worker": "w", "restyle_started_at": s, "restyle_finished_at": s + 10.0}
                 for s in (0.0, 4.0, 8.0, 20.0)]
    b = actor_rates(staggered)["actors"]["w"]
    # ends 10, 14, 18, 30: span 20 s from the first end; in the model 10-18 and 20-30: 18 s
    assert b["busy"] == 18 / 20 and b["clips_per_hour"] == 3600 * 3 / 20 and b["idle"] == [2.0]



def test_max_unwritten_counts_clips_out_of_the_model_and_not_yet_written():
    def row(done, written, status="ok"):
        return {"status": status, "restyle_finished_at": done, "finished_at": written}

    # out of the model at 1, 2, 3 and 10; written at 4, 4, 5 and 11: three held from 3 to 4
    rows = [row(1, 4), row(2, 4), row(3, 5), row(10, 11), row(None, 6, "failed")]
    assert max_unwritten(rows) == 3
    # a clip written the instant the next leaves the model is not held beside it
    assert max_unwritten([row(1, 2), row(2, 3)]) == 1
    assert max_unwritten([]) == 0


def test_parse_smi_utilization_reads_nvidia_smi_lines():
    import datetime

    got = parse_smi_utilization(["2026/12/06 21:59:01.500, 97", "2026/12/06 21:59:02.000, 100",
                                 "2026/12/06 21:59:02.000, 100", "[N/A]", ""])
    t = datetime.datetime(2026, 12, 6, 21, 59, 1, 500000).timestamp()
    assert got == [(t, 97.0), (t + 0.5, 100.0)]


def test_random_lora_adapts_every_attention_projection_and_loads_on_the_model(tiny, tmp_path):
    from benchmarks.harness import random_lora
    from v2v.model.adapters import load_lora

    path = str(tmp_path / "style.safetensors")
    n = random_lora(path, str(tiny.folder), rank=3, seed=1)
    lora = load_lora(path, tiny)  # names and shapes fit the model (load_lora checks both)
    assert len(lora.layers) == n
    assert all(a.shape[0] == 3 and alpha == 3.0 for a, _, alpha in lora.layers.values())
    projections = {(c, name) for c, part in (("unet", tiny.unet), ("text_encoder", tiny.text_encoder))
                   for name, m in part.named_modules() if isinstance(m, torch.nn.Linear)
                   and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj", "out_proj")}
    assert projections and projections <= set(lora.layers)
    assert any(".temp_attentions." in name for _, name in lora.layers)  # the temporal attentions too


def test_random_wan_has_the_size_of_wan_2_1_t2v_1_3b():
    """The benchmark's random Wan is Wan2.1-T2V-1.3B's shape: a 1.42B-parameter transformer, the 5.68B UMT5-XXL
    encoder and the 127M Wan VAE (built on the meta device: shapes only)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from benchmarks.harness import UMT5_XXL, WAN_1_3B

    with torch.device("meta"):
        parts = [WanTransformer3DModel(**WAN_1_3B), UMT5EncoderModel(UMT5Config(**UMT5_XXL)), AutoencoderKLWan()]
    sizes = [round(sum(p.numel() for p in m.parameters()) / 1e6) for m in parts]
    assert sizes == [1419, 5681, 127]


def test_the_mixed_manifests_last_clips_follow_last_clip():
    """Every fourth clip of the benchmark's mixed manifest is a video's last, a third of a clip short: with overlap (the
    job's default) a whole clip, a third of it context; with short, a shorter clip. Settings vary either way."""
    from types import SimpleNamespace

    from benchmarks.run import mixed_settings

    def bench(last_clip):
        return SimpleNamespace(clip=dict(strength=0.6, num_inference_steps=40, guidance_scale=15.0), frames=24,
                               a=SimpleNamespace(last_clip=last_clip))

    overlap, short = mixed_settings(bench("overlap"), "mixed", 8), mixed_settings(bench("short"), "mixed", 8)
    assert [(c["frames"], c["context"]) for c in overlap] == [(24, 0)] * 3 + [(24, 8)] + [(24, 0)] * 3 + [(24, 8)]
    assert [(c["frames"], c["context"]) for c in short] == [(24, 0)] * 3 + [(16, 0)] + [(24, 0)] * 3 + [(16, 0)]
    assert len({(c["strength"], c["guidance_scale"], c["scheduler"]) for c in overlap}) == 8
    assert all(c["context"] == 0 and c["frames"] == 24 for c in mixed_settings(bench("overlap"), "uniform", 4))
