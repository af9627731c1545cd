"""v2v.speed.cuda_graph on the CPU: the switch leaves a CPU actor's computation as it is, and a CPU tensor is refused
with a clear error. The graphs themselves are recorded and replayed in tests/gpu/."""


import pytest
import torch
import torch._inductor.config  # noqa: F401  (torch._inductor.config.patch below)

from tests.helpers import CLIPS, random_video, speed_only
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings
from v2v.speed.cuda_graph import GraphedCall


def test_graphed_call_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA tensor.*cpu"):
        GraphedCall(lambda x: x * 2)(torch.ones(3))


def test_cuda_graphs_switch_leaves_a_cpu_actor_as_it_is(cache_dir):
    want = restyle(load_components("tiny", cache_dir=cache_dir), random_video(2), CLIPS, output="latents")
    c = load_components("tiny", cache_dir=cache_dir)
    forward = c.unet.forward
    apply_speed_settings(c, speed_only(cuda_graphs=True))  # without compile, and on the CPU: nothing to record
    assert c.unet.forward == forward
    torch.testing.assert_close(restyle(c, random_video(2), CLIPS, output="latents"), want, rtol=0, atol=0)
