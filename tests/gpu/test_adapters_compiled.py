"""Adapters under the speed layer on a GPU (and on the CPU): LoRAs switched on the compiled (and graphed, and stored)
UNet restyle as a UNet compiled with the same LoRAs merged into its weights before, and switching never compiles
again."""

import pytest
import torch

from tests.helpers import CLIPS, random_video, speed_only
from tests.model.test_adapters import make_lora
from v2v.model.adapters import Adapters, LoraRef, merged_weight
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device, graphs, precompile", [
    pytest.param("cpu", False, False, marks=pytest.mark.slow),  # inductor's CPU code: the same guards, no TF32
    pytest.param("cuda", False, False, marks=cuda), pytest.param("cuda", True, True, marks=cuda)])
def test_switching_loras_on_the_compiled_unet_restyles_as_merged_and_never_recompiles(cache_dir, tmp_path, device,
                                                                                     graphs, precompile):
    import torch._dynamo.utils as dynamo_utils

    video = random_video(2)
    speed = speed_only(compile=True, cuda_graphs=graphs, precompile=precompile)
    probe = load_components("tiny", cache_dir=cache_dir, device=device)
    make_lora(tmp_path / "a.safetensors", probe, seed=1)
    make_lora(tmp_path / "b.safetensors", probe, seed=2)
    sets = [[LoraRef(str(tmp_path / "a.safetensors"), 0.8)], [], [LoraRef(str(tmp_path / "b.safetensors"), 1.0)],
            [LoraRef(str(tmp_path / "a.safetensors"), 0.8), LoraRef(str(tmp_path / "b.safetensors"), 0.5)]]
    expected = []
    for s in sets:  # each set merged into fresh weights before the speed layer sees them (and TF32 alike)
        fresh = load_components("tiny", cache_dir=cache_dir, device=device)
        loras = [(Adapters(fresh).lora(r.path), r.scale) for r in s]
        with torch.no_grad():
            for component, name in {k for lora, _ in loras for k in lora.layers}:
                w = getattr(fresh, component).get_submodule(name).weight
                w.copy_(merged_weight(w, loras, component, name))
        apply_speed_settings(fresh, speed, unet_batch=4)
        expected.append(restyle(fresh, video, CLIPS, output="latents"))
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # a LoRA that went unapplied would show

    c = load_components("tiny", cache_dir=cache_dir, device=device)
    apply_speed_settings(c, speed, unet_batch=4)
    adapters = Adapters(c)
    restyle(c, video, CLIPS, output="latents")  # compiled (or loaded) and, with graphs, recorded here
    graphs_before = dynamo_utils.counters["stats"]["unique_graphs"]
    for s, want in zip(sets, expected):
        adapters.use(s)
        torch.testing.assert_close(restyle(c, video, CLIPS, output="latents"), want, rtol=0, atol=1e-5)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs_before  # no compile after the first
