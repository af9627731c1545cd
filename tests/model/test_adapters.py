"""Adapters against the seed pipeline: a LoRA equals diffusers' VideoToVideoSDPipeline on the weights with it merged
in, an embedding equals the seed after its own load_textual_inversion (float32, CPU, tiny model, <= 1e-4)."""

import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth_img2img import (
    VideoToVideoSDPipeline,
)
from safetensors.torch import save_file

from v2v.model.adapters import AdapterError, Adapters, EmbeddingRef, LoraRef, load_lora
from v2v.model.loading import load_components
from v2v.model.sampler import ClipSettings, restyle

CLIP = ClipSettings("a <ink> fox", seed=7, negative_prompt="blurry", strength=0.7, num_inference_steps=6,
                    guidance_scale=7.5)
TARGETS = {"unet": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
                    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
                    "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_out.0"],
           "text_encoder": ["text_model.encoder.layers.0.self_attn.q_proj",
                            "text_model.encoder.layers.1.mlp.fc1"]}


def _components(cache_dir):
    return load_components("tiny", cache_dir=cache_dir)  # fresh objects: adapters change them


def _frames(seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (1, 8, 64, 64, 3), dtype=np.uint8))


def _reference(c, clip: ClipSettings, frames):
    pipe = VideoToVideoSDPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                  scheduler=c.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda: pipe(clip.prompt, video=(frames[0].numpy().astype(np.float32) / 255)[None],
                              strength=clip.strength, num_inference_steps=clip.num_inference_steps,
                              guidance_scale=clip.guidance_scale, negative_prompt=clip.negative_prompt,
                              generator=torch.Generator().manual_seed(clip.seed), output_type="np").frames[0]


def _text_encoder_name(name: str, c) -> str:
    """transformers 5 keeps CLIPTextModel's parts on the model itself, 4.x under .text_model."""
    return name if hasattr(c.text_encoder, "text_model") else name.removeprefix("text_model.")


def make_lora(path, c, rank=4, alpha=2.0, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for component, names in TARGETS.items():
        for name in names:
            name = _text_encoder_name(name, c) if component == "text_encoder" else name
            out_f, in_f = getattr(c, component).get_submodule(name).weight.shape
            tensors[f"{component}.{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * 0.3
            tensors[f"{component}.{name}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.3
            tensors[f"{component}.{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return tensors


def test_a_lora_equals_the_seed_pipeline_on_merged_weights(cache_dir, tmp_path):
    ours = _components(cache_dir)
    tensors = make_lora(tmp_path / "style.safetensors", ours)
    clip = ClipSettings(**{**CLIP.__dict__, "prompt": "a watercolor fox"})
    frames = _frames()
    base = restyle(ours, frames, [clip])[0].numpy()
    adapters = Adapters(ours)
    adapters.use([LoraRef(str(tmp_path / "style.safetensors"), 0.7)])
    styled = restyle(ours, frames, [clip])[0].numpy()

    ref = _components(cache_dir)
    with torch.no_grad():  # W + scale * alpha / rank * B @ A
        for key in [k for k in tensors if k.endswith("lora_A.weight")]:
            component, name = key.split(".", 1)[0], key.split(".", 1)[1].removesuffix(".lora_A.weight")
            a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
            getattr(ref, component).get_submodule(name).weight += 0.7 * 2.0 / 4 * (b @ a)
    _, run = _reference(ref, clip, frames)
    assert np.abs(styled - run()).max() <= 1e-4
    assert np.abs(styled - base).max() > 1e-2  # the LoRA does change the clip
    adapters.use([])  # back to the base, bit for bit (restored from the kept weights, not subtracted)
    assert np.array_equal(restyle(ours, frames, [clip])[0].numpy(), base)
    adapters.use([LoraRef(str(tmp_path / "style.safetensors"), 0.7)])  # and again: no drift
    assert np.array_equal(restyle(ours, frames, [clip])[0].numpy(), styled)


def test_an_embedding_equals_the_seed_pipeline_after_its_own_load_textual_inversion(cache_dir, tmp_path):
    ours = _components(cache_dir)
    hidden = ours.text_encoder.get_input_embeddings().weight.shape[1]
    path = tmp_path / "ink.safetensors"
    save_file({"<ink>": torch.randn(2, hidden, generator=torch.Generator().manual_seed(3))}, str(path))
    frames = _frames(1)
    adapters = Adapters(ours)
    prompt = adapters.prompt(CLIP.prompt, [EmbeddingRef(str(path), "<ink>")])
    mine = restyle(ours, frames, [ClipSettings(**{**CLIP.__dict__, "prompt": prompt})])[0].numpy()

    ref = _components(cache_dir)
    pipe, run = _reference(ref, CLIP, frames)
    pipe.load_textual_inversion(str(path), token="<ink>")
    assert np.abs(mine - run()).max() <= 1e-4
    plain = restyle(_components(cache_dir), frames, [ClipSettings(**{**CLIP.__dict__, "prompt": "a  fox"})])
    assert np.abs(mine - plain[0].numpy()).max() > 1e-3


def test_two_files_may_claim_the_same_token(cache_dir, tmp_path):
    c = _components(cache_dir)
    hidden = c.text_encoder.get_input_embeddings().weight.shape[1]
    for i in range(2):
        save_file({"<s>": torch.randn(1, hidden, generator=torch.Generator().manual_seed(i))},
                  str(tmp_path / f"e{i}.safetensors"))
    adapters = Adapters(c)
    first = adapters.prompt("a <s>", [EmbeddingRef(str(tmp_path / "e0.safetensors"), "<s>")])
    second = adapters.prompt("a <s>", [EmbeddingRef(str(tmp_path / "e1.safetensors"), "<s>")])
    assert first != second and c.tokenizer.convert_tokens_to_ids(first.split()[1]) != \
        c.tokenizer.convert_tokens_to_ids(second.split()[1])


@pytest.mark.parametrize("bad, says", [
    (lambda p, t: p.with_suffix(".bin").write_bytes(b"pickle"), "from .safetensors files only"),
    (lambda p, t: save_file({"unet.down_blocks.0.nope.lora_A.weight": torch.zeros(2, 4),
                             "unet.down_blocks.0.nope.lora_B.weight": torch.zeros(4, 2)}, str(p)),
     "unet.down_blocks.0.nope: the model has no such module"),
    (lambda p, t: save_file({f"unet.{t}.lora_A.weight": torch.zeros(2, 5), f"unet.{t}.lora_B.weight":
                             torch.zeros(4, 2)}, str(p)), "do not fit its weight"),
    (lambda p, t: save_file({f"unet.{t}.lora_A.weight": torch.zeros(2, 5)}, str(p)), "needs both lora_A and lora_B"),
    (lambda p, t: p.write_bytes(b"\0" * 64), "not a readable safetensors file"),
    (lambda p, t: None, "not found"),
])
def test_bad_adapters_are_refused_naming_the_file(cache_dir, tmp_path, bad, says):
    c = _components(cache_dir)
    path = tmp_path / "bad.safetensors"
    bad(path, TARGETS["unet"][0])
    target = path.with_suffix(".bin") if says.startswith("from") else path
    with pytest.raises(AdapterError, match=says) as e:
        load_lora(str(target), c)
    assert str(target) in str(e.value)
