"""Step-level continuous batching: clips of different strengths, step counts, guidance, schedulers and lengths share
forwards, and each clip's result is what it gives alone (bit for bit in batch-invariant mode)."""

import time

import numpy as np
import pytest
import torch

from v2v.model.continuous import StepBatcher, fill_order, run_all
from v2v.model.loading import make_scheduler
from v2v.model.sampler import ClipSettings, SamplerInputError, restyle


def _frames(b, f=8, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, f, 64, 64, 3), dtype=np.uint8))


# strengths 0.4-0.9, 3 to 8 steps each, guidance off and on at different scales: no two clips alike
MIXED = [ClipSettings("a fox", seed=1, strength=0.6, num_inference_steps=8, guidance_scale=7.0),
         ClipSettings("ink", seed=2, negative_prompt="blur", strength=0.9, num_inference_steps=5, guidance_scale=12.0),
         ClipSettings("oil", seed=3, strength=0.5, num_inference_steps=6, guidance_scale=1.0),
         ClipSettings("", seed=4, strength=0.4, num_inference_steps=10, guidance_scale=15.0),
         ClipSettings("chalk", seed=5, strength=0.75, num_inference_steps=8, guidance_scale=1.0),
         ClipSettings("neon", seed=6, strength=0.8, num_inference_steps=5, guidance_scale=3.0)]


def _alone(tiny, frames, clip, scheduler=None):
    return restyle(tiny, frames[None], [clip], scheduler=scheduler, output="latents")


FRAMES = _frames(len(MIXED), seed=1)


@pytest.fixture(scope="module")
def alone(tiny):
    """Each MIXED clip's final latents, restyled alone by the sampler."""
    return [_alone(tiny, FRAMES[i], c) for i, c in enumerate(MIXED)]


@pytest.mark.parametrize("capacity", [2, 6])
def test_mixed_clips_in_flight_equal_each_clip_alone_bit_for_bit(tiny, alone, capacity):
    out = run_all(StepBatcher(tiny, capacity, batch_invariant=True), [(i, FRAMES[i], c) for i, c in enumerate(MIXED)])
    for i in range(len(MIXED)):
        assert torch.equal(out[i], alone[i]), f"clip {i} differs in flight"
    assert (out[0] - out[1]).abs().max() > 1e-3  # and the clips really differ


def test_batched_forwards_equal_each_clip_alone_to_rounding_and_share_forwards(tiny, alone):
    batcher = StepBatcher(tiny, 4)
    out = run_all(batcher, [(i, FRAMES[i], c) for i, c in enumerate(MIXED)])
    for i in range(len(MIXED)):  # latents of magnitude ~4; batched kernels round differently
        assert (out[i] - alone[i]).abs().max() <= 1e-4, f"clip {i}"
    steps = sum(int(c.num_inference_steps * c.strength) for c in MIXED)
    assert batcher.clip_steps == steps
    # One stream (guidance off runs as pairs beside guided clips), clips admitted as slots free: fewer forwards than
    # grouping the clips by (steps, strength, guidance), one forward per step of each group, would run (here every
    # clip its own group): one per round, as many rounds as the clip-steps need at 4 a round, and a few.
    assert batcher.forwards <= steps // 4 + 4
    groups = {(c.num_inference_steps, c.strength, c.guidance_scale > 1) for c in MIXED}
    assert batcher.forwards < sum(int(n * s) for n, s, _ in groups) == steps


def test_a_slot_freed_is_taken_by_the_next_clip_at_once(tiny):
    frames = _frames(3, seed=3)
    short = ClipSettings("a", seed=1, strength=0.5, num_inference_steps=4)  # 2 steps
    long = ClipSettings("b", seed=2, strength=1.0, num_inference_steps=6)  # 6 steps
    batcher = StepBatcher(tiny, 2)
    batcher.admit("short", frames[0], short)
    batcher.admit("long", frames[1], long)
    rounds = 0
    finished = []
    queue = [("late", frames[2], short)]
    while batcher.active:
        done, failed = batcher.step()
        rounds += 1
        assert not failed
        finished += [(c.key, rounds) for c in done]
        for c in done:  # its share of the model's time lies inside its time in the model (the index's columns)
            assert 0 < c.model_s <= time.time() - c.admitted_at
        while queue and batcher.free:
            batcher.admit(*queue.pop(0))
    # the late clip ran beside the long one: all three done in the long clip's 6 rounds
    assert finished == [("short", 2), ("late", 4), ("long", 6)]
    assert batcher.forwards == 6 and batcher.clip_steps == 10


def test_clips_of_another_scheduler_and_another_length_run_beside_each_other(tiny):
    frames = _frames(2, seed=4)
    short = _frames(1, f=5, seed=5)[0]
    euler = make_scheduler(tiny.scheduler, "euler_a")
    batcher = StepBatcher(tiny, 3, batch_invariant=True)
    batcher.admit("ddim", frames[0], MIXED[0])
    batcher.admit("euler", frames[1], MIXED[1], scheduler=euler)
    batcher.admit("short", short, MIXED[0])
    out = {}
    while batcher.active:
        done, _ = batcher.step()
        out.update({c.key: c for c in done})
    assert torch.equal(out["ddim"].latents, _alone(tiny, frames[0], MIXED[0]))
    assert torch.equal(out["euler"].latents, _alone(tiny, frames[1], MIXED[1], scheduler=euler))
    assert torch.equal(out["short"].latents, _alone(tiny, short, MIXED[0]))
    assert out["short"].latents.shape[2] == 5
    # frames: what the sampler gives for the clip alone
    assert torch.equal(batcher.finish(out["ddim"]).cpu(), restyle(tiny, frames[:1], [MIXED[0]])[0])


def test_bad_clip_is_refused_at_admission_and_others_go_on(tiny):
    frames = _frames(2, seed=6)
    bad = ClipSettings("x", seed=1, strength=0.1, num_inference_steps=4)  # leaves no step
    out = run_all(StepBatcher(tiny, 2), [("bad", frames[0], bad), ("good", frames[1], MIXED[2])])
    assert isinstance(out["bad"], SamplerInputError) and "leaves no denoising step" in str(out["bad"])
    assert isinstance(out["good"], torch.Tensor)
    with pytest.raises(RuntimeError, match="all 1 slots of its stream are in use"):
        b = StepBatcher(tiny, 1)
        b.admit("a", frames[0], MIXED[2])
        b.admit("b", frames[1], MIXED[2])


def test_a_forward_that_fails_is_retried_clip_by_clip_and_only_the_failing_clip_leaves(tiny, monkeypatch):
    frames = _frames(3, seed=7)
    clips = [ClipSettings(p, seed=i, strength=0.5, num_inference_steps=6) for i, p in enumerate(["a", "poison", "c"])]
    alone = {i: _alone(tiny, frames[i], c) for i, c in enumerate(clips)}
    batcher = StepBatcher(tiny, 3)
    poison = None
    plain = tiny.unet.forward
    calls = []

    def forward(sample, t, encoder_hidden_states, **kw):
        calls.append(sample.shape[0])
        if any(torch.equal(e, poison) for e in encoder_hidden_states):
            raise RuntimeError("an op this clip's input breaks")
        return plain(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    for i, c in enumerate(clips):
        batcher.admit(i, frames[i], c)
    poison = batcher.active[1].cond[0]
    monkeypatch.setattr(tiny.unet, "forward", forward)
    out, failed = {}, {}
    while batcher.active:
        done, bad = batcher.step()
        out.update({c.key: c.latents for c in done})
        failed.update({c.key: e for c, e in bad})
    assert list(failed) == [1] and "this clip's input breaks" in str(failed[1])
    assert calls[:4] == [6, 2, 2, 2]  # the batch of 3 guided clips, then each alone
    assert calls[4:] == [4, 4]  # then the two left, together again (not an out-of-memory: no `alone`)
    for i in (0, 2):
        assert (out[i] - alone[i]).abs().max() <= 1e-5


def test_a_programmer_error_in_a_forward_raises_and_a_fatal_one_too(tiny, monkeypatch):
    frames = _frames(1, seed=8)
    batcher = StepBatcher(tiny, 2, fatal=lambda e: "illegal memory access" in str(e))
    batcher.admit("a", frames[0], MIXED[2])

    def bug(*a, **k):
        raise TypeError("forward() got an unexpected keyword argument")

    monkeypatch.setattr(tiny.unet, "forward", bug)
    with pytest.raises(TypeError):
        batcher.step()

    def broken(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(tiny.unet, "forward", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        batcher.step()
    assert batcher.active and batcher.active[0].done == 0  # nothing changed for the clip


def _counting_rounds(batcher):
    rounds, step = [0], batcher.step

    def counted():
        rounds[0] += 1
        return step()

    batcher.step = counted
    return rounds


def test_shorter_clips_run_beside_the_full_stream_once_a_forward_of_them_waits(tiny):
    frames = _frames(6, seed=9)
    short = _frames(2, f=5, seed=10)
    clip = ClipSettings("a", seed=1, strength=0.5, num_inference_steps=8)  # 4 steps each
    items = [("full0", frames[0], clip), ("short0", short[0], clip), ("full1", frames[1], clip),
             ("short1", short[1], clip)] + [(f"full{i}", frames[i], clip) for i in range(2, 6)]
    batcher = StepBatcher(tiny, 2)
    assert batcher.stream_of(frames[0]) == (4, 8, 8, 8) and batcher.stream_of(short[0]) == (4, 5, 8, 8)
    # with none in flight, the main stream is the one most clips wait in
    assert batcher.admissible([(1,), (2,), (2,)]) == [1, 2]
    rounds, order = _counting_rounds(batcher), []
    out = run_all(batcher, items, as_actor=True, on_done=lambda b, c: order.append(c.key))
    assert set(out) == {k for k, _, _ in items} and all(isinstance(v, torch.Tensor) for v in out.values())
    # the two shorter clips ran in a forward of their own beside the first pair, taking none of its slots: every
    # forward carried 2 clips (32 clip-steps in 16 forwards), in the 12 rounds the 6 full clips need; drained
    # first and then run, they would have taken 4 rounds more
    assert batcher.clip_steps == 32 and batcher.forwards == 16 and rounds[0] == 12
    assert order[:4] == ["full0", "short0", "full1", "short1"]
    # and each clip is what it gives alone
    assert (out["short1"] - _alone(tiny, short[1], clip)).abs().max() <= 1e-4


def test_a_lone_shorter_clip_waits_for_the_end_of_the_input_then_runs_beside(tiny):
    frames = _frames(6, seed=11)
    short = _frames(1, f=5, seed=12)[0]
    clip = ClipSettings("a", seed=1, strength=0.5, num_inference_steps=8)
    items = [("full0", frames[0], clip), ("short", short, clip)] + [(f"full{i}", frames[i], clip) for i in range(1, 6)]
    batcher = StepBatcher(tiny, 2)
    rounds, order = _counting_rounds(batcher), []
    run_all(batcher, items, as_actor=True, on_done=lambda b, c: order.append(c.key))
    # one clip would cost a forward of its own each round: it waits while full clips come, then joins the last pair
    assert order == ["full0", "full1", "full2", "full3", "short", "full4", "full5"]
    assert rounds[0] == 12 and batcher.forwards == 16


def test_shorter_clips_of_many_lengths_set_aside_start_one_stream_when_crowded(tiny):
    frames = _frames(4, seed=13)
    clip = ClipSettings("a", seed=1, strength=0.5, num_inference_steps=8)
    lengths = {"s5": 5, "s6": 6, "s7": 7, "s3": 3}  # one clip of each: none makes a forward's worth
    items = ([("full0", frames[0], clip), ("full1", frames[1], clip)]
             + [(k, _frames(1, f=f, seed=f)[0], clip) for k, f in lengths.items()]
             + [("full2", frames[2], clip), ("full3", frames[3], clip)])
    batcher = StepBatcher(tiny, 2)
    streams = [batcher.stream_of(it[1]) for it in items[:6]]
    # read so far: 2 full clips and 4 set aside (2 x capacity): no more are read, and the oldest set-aside starts
    assert not batcher.wants(streams)
    assert batcher.admissible(streams) == [0, 1, 2]
    out = run_all(batcher, items, as_actor=True)
    assert all(isinstance(v, torch.Tensor) for v in out.values()) and len(out) == len(items)
    for k, f in lengths.items():
        assert out[k].shape[2] == f


def test_fill_order_admits_each_groups_longest_clips_first_and_keeps_the_groups_in_place():
    assert fill_order([2, 5, 3, 5, 1]) == [1, 3, 2, 0, 4]  # ties in their order
    # two runs of group "a" around a run of "b": each sorted, none moved across another
    assert fill_order([1, 3, 2, 4, 1, 5], ["a", "a", "b", "b", "a", "a"]) == [1, 0, 3, 2, 5, 4]
    assert fill_order([]) == []
    with pytest.raises(ValueError, match="groups"):
        fill_order([1, 2], ["a"])


def test_a_call_admitted_longest_first_keeps_its_slots_full_to_its_end(tiny):
    """A call of 16 clips of strengths 0.4-0.8 (4 to 8 steps) at 4 in flight, drained at its end as an actor's call
    is: admitted longest first, it runs the fewest forwards its clip-steps allow (every slot full but the last
    forward's); in the manifest's order a long clip admitted last runs its steps with empty slots beside it."""
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))[0]
    clips = [ClipSettings("ink", seed=i, strength=(0.4, 0.5, 0.6, 0.7, 0.8)[i % 5], num_inference_steps=10,
                          guidance_scale=9.0) for i in range(16)]
    steps = [int(c.strength * c.num_inference_steps) for c in clips]
    forwards = {}
    for how, order in (("manifest", list(range(16))), ("longest first", fill_order(steps))):
        batcher = StepBatcher(tiny, 4)
        out = run_all(batcher, [(i, latents, clips[i]) for i in order], as_actor=True)
        assert len(out) == 16 and batcher.clip_steps == sum(steps)
        forwards[how] = batcher.forwards
    assert forwards["longest first"] == -(-sum(steps) // 4)
    assert forwards["manifest"] > forwards["longest first"]


def test_an_actors_prompts_are_encoded_once_across_its_batchers_and_equal_a_fresh_encode(tiny):
    """A night's manifest: thousands of clips in a few styles. Each prompt and negative prompt goes through the text
    encoder once per actor (its batchers, one per call, share a PromptCache); every clip still equals itself alone."""
    from v2v.model.backbone import PromptCache

    clips = [ClipSettings("a fox", seed=s, negative_prompt="blur", strength=0.5, num_inference_steps=4,
                          guidance_scale=7.0) for s in range(3)]
    clips.append(ClipSettings("a fox", seed=9, strength=0.5, num_inference_steps=4, guidance_scale=1.0))
    clips.append(ClipSettings("blur", seed=8, negative_prompt="a fox", strength=0.5, num_inference_steps=4,
                              guidance_scale=5.0))  # the same texts in the other roles: embedded apart
    frames = _frames(len(clips), seed=3)
    encodes = []
    hook = tiny.text_encoder.register_forward_hook(lambda *_: encodes.append(1))
    try:
        prompts = PromptCache()
        items = [(i, frames[i], c) for i, c in enumerate(clips)]
        first = run_all(StepBatcher(tiny, 2, batch_invariant=True, prompts=prompts), items)
        assert len(encodes) == 4  # "a fox" and "blur", each as the prompt and as the negative
        again = run_all(StepBatcher(tiny, 2, batch_invariant=True, prompts=prompts), items)  # the actor's next call
        assert len(encodes) == 4 and prompts.hits == 5 + 9 and prompts.misses == 4  # 9 lookups a call
    finally:
        hook.remove()
    for i, c in enumerate(clips):
        assert torch.equal(first[i], _alone(tiny, frames[i], c)) and torch.equal(again[i], first[i]), f"clip {i}"
    prompts.clear()
    run_all(StepBatcher(tiny, 2, prompts=prompts), items[:1])
    assert prompts.misses == 6  # cleared (the text encoder's weights changed): encoded anew


def test_the_prompt_cache_keeps_the_most_recently_used_within_its_bytes():
    from v2v.model.backbone import PromptCache

    cache = PromptCache(max_bytes=3 * 400)  # three (100,) float32 embeddings
    made = []

    def encode(k):
        made.append(k)
        return torch.full((100,), float(k))

    for k in (1, 2, 3, 1, 4):  # 1 used again: 2 is the least recently used when 4 comes
        assert cache.get(("prompt", k), lambda: encode(k))[0] == k
    assert made == [1, 2, 3, 4] and cache.bytes == 1200
    assert [key[1] for key in cache.entries] == [3, 1, 4]
    cache.get(("prompt", 2), lambda: encode(2))
    assert made[-1] == 2 and [key[1] for key in cache.entries] == [1, 4, 2]
