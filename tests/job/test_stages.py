"""The restyle stage alone (no Ray): how it answers a GPU that runs out of memory or breaks."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.helpers import REPO
from v2v.config import JobConfig
from v2v.job.resources import resources
from v2v.job.stages import DEVICE_FAILURE_TRIES, EXIT_DEVICE_FAILURE, Restyle, device_failed
from v2v.speed.fixed_shapes import FixedBatch

FRAMES = np.random.default_rng(0).integers(0, 256, (2, 8, 64, 64, 3), dtype=np.uint8)


def _batch(n: int = 2, first: int = 0) -> dict:
    k = slice(first, first + n)
    return {"id": np.array(["a", "b"][k], object), "clip_index": np.array([0, 0][k]),
            "prompt": np.array(["a fox", "ink"][k], object), "negative_prompt": np.array(["", ""][k], object),
            "seed": np.array([1, 2][k]), "strength": np.array([0.6, 0.6][k]), "num_inference_steps": np.array([4, 4][k]),
            "guidance_scale": np.array([9.0, 9.0][k]), "frames": FRAMES[k], "error": np.array([None] * n, object)}


@pytest.fixture
def actor(cache_dir):
    cfg = JobConfig(manifest="-", output="-", steps=4, batch_size=2, batch_invariant=False)
    return Restyle(cfg, resources(cfg, {"CPU": 2}))


def _fits_at_most(actor, latents: int, calls: list):
    """The UNet as a compiled one sits in the actor (FixedBatch: every call padded to the 2-clip batch of 4
    latents) on a GPU that holds at most `latents` latents in one forward."""
    plain = actor.components.unet.forward

    def forward(sample, *a, **k):
        calls.append(sample.shape[0])
        if sample.shape[0] > latents:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return plain(sample, *a, **k)

    actor.components.unet.forward = FixedBatch(forward, 4, eager=forward)


def test_a_batch_out_of_memory_is_retried_clip_by_clip_at_its_own_size(actor):
    alone = [actor(_batch(1, first=i))["frames"][0] for i in range(2)]
    calls = []
    _fits_at_most(actor, 2, calls)  # one guided clip fits, a padded batch does not
    out = actor(_batch())
    assert list(out["error"]) == [None, None]
    assert np.array_equal(out["frames"][0], alone[0]) and np.array_equal(out["frames"][1], alone[1])
    assert calls[0] == 4 and set(calls[1:]) == {2}  # the batch once, then each clip unpadded


def test_a_clip_out_of_memory_even_alone_is_a_failed_row(actor):
    _fits_at_most(actor, 1, [])
    out = actor(_batch())
    assert all(e.startswith("restyle: out of GPU memory even alone") for e in out["error"])


def test_a_clip_with_context_frames_is_restyled_whole_and_cut_to_its_own_frames(actor):
    """A last clip restyled whole (last_clip=overlap): the model sees its context frames and its own, as one clip of
    the model's length; the row keeps its own frames only, its quality signals taken against its own source frames."""
    from v2v.model.quality import signals

    whole = actor(_batch(1))
    with_context = {**_batch(1), "context_frames": np.array([3])}
    cut = actor(with_context)
    assert cut["error"][0] is None and cut["frames"][0].shape == (5, 64, 64, 3)
    assert np.array_equal(cut["frames"][0], whole["frames"][0][3:])
    own = signals(torch.from_numpy(whole["frames"][0][3:]).float() / 255, torch.from_numpy(FRAMES[0][3:]))
    for k, v in own.items():
        if isinstance(v, float):
            assert abs(cut[k][0] - v) < 1e-2, k
    assert abs(cut["source_ssim"][0] - whole["source_ssim"][0]) > 0  # not the whole clip's


def test_device_failures_are_told_from_other_errors():
    assert device_failed(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert device_failed(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
    assert not device_failed(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not device_failed(RuntimeError("shape mismatch"))
    assert not device_failed(ValueError("CUDA error"))


_BROKEN_GPU = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.job.test_stages import _batch
from v2v.config import JobConfig
from v2v.job.resources import resources
from v2v.job.stages import Restyle

cfg = JobConfig(manifest="-", output="-", steps=4, batch_size=2, batch_invariant=False)
actor = Restyle(cfg, resources(cfg, {"CPU": 2}))

def broken(*a, **k):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")

actor.components.unet.forward = broken
print("RESULT " + json.dumps(list(actor(_batch())["error"])))
"""


@pytest.mark.slow
def test_a_broken_gpu_exits_the_actor_and_a_clip_that_keeps_breaking_it_fails(cache_dir, tmp_path):
    """A CUDA error other than out-of-memory: the actor's process exits (the pool starts a fresh actor and the job
    redoes the batch in its next pass); the same clips breaking it DEVICE_FAILURE_TRIES times become failed rows
    instead of a restart loop."""
    env = {**os.environ, "V2V_CACHE": str(tmp_path), "PYTHONPATH": REPO}
    for attempt in range(DEVICE_FAILURE_TRIES):
        p = subprocess.run([sys.executable, "-c", _BROKEN_GPU, REPO], env=env, capture_output=True, text=True,
                           timeout=300)
        if attempt < DEVICE_FAILURE_TRIES - 1:
            assert p.returncode == EXIT_DEVICE_FAILURE, p.stderr[-2000:]
            assert "exiting so that a fresh actor takes over" in p.stderr
        else:
            assert p.returncode == 0, p.stderr[-2000:]
            errors = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
            assert errors.count(f"the GPU failed on this clip {DEVICE_FAILURE_TRIES} times") == 2, errors


def test_the_actor_writes_a_clip_while_it_restyles_the_next_and_yields_each_row_when_written(cache_dir, tmp_path):
    """ClipWorker: one clip in flight (batch size 1) over a call of five: clip 0 is written (on the encode thread)
    before the last clip leaves the model, not after the whole call; each row comes back as its clip is written;
    a clip the plan failed passes through."""
    from jobs.demo import make_video
    from v2v.job.stages import ClipWorker

    make_video(str(tmp_path / "v.mp4"), 32, 64, 64)
    cfg = JobConfig(manifest="-", output=str(tmp_path / "out"), steps=4, batch_size=1, codec="ffv1")
    worker = ClipWorker(cfg, resources(cfg, {"CPU": 2}))
    n = 5
    batch = {"id": np.array(["v"] * n, object), "clip_index": np.arange(n),
             "video": np.array([str(tmp_path / "v.mp4")] * n, object),
             "start_frame": np.array([0, 8, 16, 24, 0]), "num_frames": np.array([8] * n), "fps": np.array([24.0] * n),
             "start_s": np.arange(n) / 3, "end_s": np.arange(n) / 3 + 1 / 3, "width": np.array([64] * n),
             "height": np.array([64] * n), "prompt": np.array(["ink"] * n, object),
             "negative_prompt": np.array([""] * n, object), "seed": np.arange(n), "strength": np.array([0.6] * n),
             "num_inference_steps": np.array([4] * n), "guidance_scale": np.array([9.0] * n),
             "error": np.array([None, None, "planned: a failure", None, None], object)}
    yielded = list(worker(batch))  # one row per clip, yielded as soon as it is written
    assert [len(b["id"]) for b in yielded] == [1] * n
    out = {k: np.concatenate([b[k] for b in yielded]) for k in yielded[0]}
    order = np.argsort(out["clip_index"])
    out = {k: v[order] for k, v in out.items()}
    assert list(out["clip_index"]) == list(range(n)) and list(out["status"]) == ["ok", "ok", "failed", "ok", "ok"]
    assert out["error"][2] == "planned: a failure" and out["output"][2] is None
    written = os.stat(tmp_path / "out" / out["output"][0]).st_mtime
    assert written < out["restyle_finished_at"][4], "clip 0 was written only after the last clip left the model"
    assert all(out["decode_s"][i] > 0 and out["encode_s"][i] > 0 for i in (0, 1, 3, 4))


def test_the_actor_runs_shorter_last_clips_beside_the_full_ones(actor):
    """A video's shorter last clips (a stream of their own) join the clips in flight once a forward's worth of them
    waits, in a forward beside the full-length clips', rather than after those have drained."""
    rng = np.random.default_rng(1)
    keys = ["a", "s1", "b", "s2", "c", "d", "e", "f"]
    rows = [{"id": k, "clip_index": 0, "prompt": "ink", "negative_prompt": "", "seed": i, "strength": 0.6,
             "num_inference_steps": 4, "guidance_scale": 9.0, "error": None,
             "frames": rng.integers(0, 256, (5 if k.startswith("s") else 8, 64, 64, 3), dtype=np.uint8)}
            for i, k in enumerate(keys)]
    out = {r["id"]: r for r in actor.stream(rows)}
    assert set(out) == set(keys) and all(r["error"] is None for r in out.values())
    assert out["s1"]["frames"].shape[0] == 5 and out["a"]["frames"].shape[0] == 8
    # both shorter clips were in the model before the first full pair left it, and before the next pair came in
    for s in ("s1", "s2"):
        assert out[s]["restyle_started_at"] < out["a"]["restyle_finished_at"]
        assert out[s]["restyle_started_at"] < out["c"]["restyle_started_at"]


def test_a_finished_clip_is_read_out_once_the_next_round_is_queued(actor, monkeypatch):
    """The actor reads a finished clip's frames out a round late: its decode is queued before the next round's
    forward, and the host waits for it (and writes its row) while that forward runs, not before queuing it. Its
    restyle_s, its share of the rounds it was in, lies inside its time in the model."""
    from v2v.model.continuous import StepBatcher

    rounds = []  # (when the round was queued, the clips whose last step it was)
    step = StepBatcher.step

    def timed(self):
        t = time.time()
        done, failed = step(self)
        rounds.append((t, [c.key["id"] for c in done]))
        return done, failed

    monkeypatch.setattr(StepBatcher, "step", timed)
    rng = np.random.default_rng(3)
    rows = [{"id": f"v{i}", "clip_index": 0, "prompt": "ink", "negative_prompt": "", "seed": i, "strength": s,
             "num_inference_steps": 4, "guidance_scale": 9.0, "error": None,
             "frames": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)}
            for i, s in enumerate([0.5, 1.0, 0.5, 1.0, 0.5])]  # 2, 4, 2, 4, 2 steps in 2 slots
    out = {r["id"]: r for r in actor.stream(rows)}
    assert all(r["error"] is None for r in out.values()) and len(out) == 5
    followed = [k for i, (_, keys) in enumerate(rounds[:-1]) for k in keys]
    assert len(followed) >= 3  # most clips finish before the last round
    for i, (_, keys) in enumerate(rounds[:-1]):
        for k in keys:
            assert out[k]["restyle_finished_at"] > rounds[i + 1][0], f"{k} was read out before the next round"
    for r in out.values():
        assert 0 < r["restyle_s"] <= r["restyle_finished_at"] - r["restyle_started_at"]


def test_the_actor_starts_once_its_free_slots_can_be_filled_not_after_decoding_all_it_reads_ahead(actor):
    """The first forward waits for as many decoded clips as slots are free (2), not for the four the actor may hold
    waiting: the later rows join as decoding finishes them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from v2v.job.stages import Decoded

    rng = np.random.default_rng(2)
    rows = [{"id": f"v{i}", "clip_index": 0, "prompt": "ink", "negative_prompt": "", "seed": i, "strength": 0.6,
             "num_inference_steps": 4, "guidance_scale": 9.0, "error": None,
             "frames": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)} for i in range(6)]
    gate, released = threading.Event(), []

    def decode(row):  # the first two decode at once, the rest once the gate opens
        if row["id"] not in ("v0", "v1"):
            gate.wait()
        return row

    def open_later():
        time.sleep(3)
        released.append(time.time())
        gate.set()

    threading.Thread(target=open_later, daemon=True).start()
    with ThreadPoolExecutor(1) as pool:
        out = {r["id"]: r for r in actor.stream(Decoded(rows, decode, pool, ahead=6))}
    assert set(out) == {r["id"] for r in rows} and all(r["error"] is None for r in out.values())
    assert out["v0"]["restyle_started_at"] < released[0] and out["v1"]["restyle_started_at"] < released[0]
    assert all(out[f"v{i}"]["restyle_started_at"] >= released[0] for i in range(2, 6))


def test_decoding_stays_at_most_ahead_clips_ahead_of_the_stream():
    """However many rows a call holds, the decode thread holds at most `ahead` decoded clips the stream has not read
    (a clip is 13 MB of frames at 576x320x24), and keeps that many ready while the stream reads slowly."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from v2v.job.stages import Decoded

    decoded, lock = [], threading.Lock()

    def decode(row):
        with lock:
            decoded.append(row["id"])
        return row

    with ThreadPoolExecutor(1) as pool:
        rows = Decoded([{"id": i} for i in range(40)], decode, pool, ahead=3)
        read = []
        time.sleep(0.2)
        assert len(decoded) == 3  # not 40
        for row in rows:
            read.append(row["id"])
            time.sleep(0.02)  # the stream's work on the clip
            with lock:
                assert len(decoded) - len(read) <= 3
            if len(read) < 37:  # the next three are ready once the stream has worked a while
                assert rows.ready() and len(decoded) - len(read) == 3
    assert read == list(range(40)) and decoded == list(range(40))


def test_a_call_is_admitted_longest_first(cache_dir, tmp_path):
    """ClipWorker admits a call's clips in order of their denoising steps, most first (fill_order), whatever their
    order in the call, and each row comes back with its own clip's settings and frames."""
    from jobs.demo import make_video
    from v2v.job.stages import ClipWorker

    make_video(str(tmp_path / "v.mp4"), 32, 64, 64)
    cfg = JobConfig(manifest="-", output=str(tmp_path / "out"), steps=4, batch_size=1, codec="ffv1")
    worker = ClipWorker(cfg, resources(cfg, {"CPU": 2}))
    strengths = [0.25, 1.0, 0.5, 0.75]  # 1, 4, 2 and 3 of 4 steps
    n = len(strengths)
    batch = {"id": np.array(["v"] * n, object), "clip_index": np.arange(n),
             "video": np.array([str(tmp_path / "v.mp4")] * n, object),
             "start_frame": np.arange(n) * 8, "num_frames": np.array([8] * n), "fps": np.array([24.0] * n),
             "start_s": np.arange(n) / 3, "end_s": np.arange(n) / 3 + 1 / 3, "width": np.array([64] * n),
             "height": np.array([64] * n), "prompt": np.array(["ink"] * n, object),
             "negative_prompt": np.array([""] * n, object), "seed": np.arange(n), "strength": np.array(strengths),
             "num_inference_steps": np.array([4] * n), "guidance_scale": np.array([9.0] * n),
             "error": np.array([None] * n, object)}
    rows = [{k: v[0] for k, v in b.items()} for b in worker(batch)]
    assert all(r["status"] == "ok" for r in rows)
    admitted = sorted(rows, key=lambda r: r["restyle_started_at"])
    assert [r["clip_index"] for r in admitted] == [1, 3, 2, 0]
    assert [r["strength"] for r in admitted] == [1.0, 0.75, 0.5, 0.25]
    assert sorted(r["start_frame"] for r in rows) == [0, 8, 16, 24]


def test_the_clips_that_finish_together_are_written_side_by_side(cache_dir, tmp_path, monkeypatch):
    """A round's finished clips are encoded at once, not one after another: at a call's end the next call (and the
    GPU) waits for them."""
    import threading

    from jobs.demo import make_video
    from v2v.job import stages

    make_video(str(tmp_path / "v.mp4"), 32, 64, 64)
    cfg = JobConfig(manifest="-", output=str(tmp_path / "out"), steps=4, batch_size=2, codec="ffv1")
    worker = stages.ClipWorker(cfg, resources(cfg, {"CPU": 2}))
    lock, at_once, most = threading.Lock(), [0], [0]
    plain = stages.encode

    def slow_encode(row, cfg):
        with lock:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        time.sleep(0.5)
        try:
            return plain(row, cfg)
        finally:
            with lock:
                at_once[0] -= 1

    monkeypatch.setattr(stages, "encode", slow_encode)
    n = 4  # two pairs of clips of the same steps: each pair finishes in one round
    batch = {"id": np.array(["v"] * n, object), "clip_index": np.arange(n),
             "video": np.array([str(tmp_path / "v.mp4")] * n, object),
             "start_frame": np.arange(n) * 8, "num_frames": np.array([8] * n), "fps": np.array([24.0] * n),
             "start_s": np.arange(n) / 3, "end_s": np.arange(n) / 3 + 1 / 3, "width": np.array([64] * n),
             "height": np.array([64] * n), "prompt": np.array(["ink"] * n, object),
             "negative_prompt": np.array([""] * n, object), "seed": np.arange(n), "strength": np.array([0.5] * n),
             "num_inference_steps": np.array([4] * n), "guidance_scale": np.array([9.0] * n),
             "error": np.array([None] * n, object)}
    rows = [{k: v[0] for k, v in b.items()} for b in worker(batch)]
    assert [r["status"] for r in rows] == ["ok"] * n
    assert most[0] == 2, f"at most {most[0]} clip(s) encoded at once"


def test_a_call_holds_whole_batches_and_short_runs_give_each_actor_two_calls():
    from v2v.job.stages import ClipWorker

    most = 4 * ClipWorker.CALL_BATCHES
    assert ClipWorker.call_size(4, 50_000, 8) == most
    assert ClipWorker.call_size(4, 100, 2) == 24  # 25 a call would give each actor two; rounded down to batches
    assert ClipWorker.call_size(2, 6, 1) == 2  # not 3: a batch and a half would run half-filled in every call
    assert ClipWorker.call_size(4, 3, 1) == 4  # never under one batch
    for clips, actors in ((100, 2), (6, 1), (50_000, 8), (37, 3)):
        size = ClipWorker.call_size(4, clips, actors)
        assert size % 4 == 0 and 4 <= size <= most


def test_prompts_embedded_before_a_lora_is_merged_are_not_reused_after(actor, cache_dir, tmp_path):
    """The actor keeps its prompts' embeddings across calls (a night's styles are few); a LoRA that changes the text
    encoder makes them stale: a clip of the same prompt under it equals the clip on a fresh actor, and the plain
    clip after it equals the plain clip before."""
    import json

    from tests.model.test_adapters import make_lora

    make_lora(tmp_path / "style.safetensors", actor.components)
    lora = json.dumps([{"uri": str(tmp_path / "style.safetensors"), "scale": 0.8}])

    def call(with_lora: bool, on=actor) -> np.ndarray:
        batch = {**_batch(1), "lora": np.array([lora if with_lora else ""], object)}
        out = on(batch)
        assert out["error"][0] is None, out["error"][0]
        return out["frames"][0]

    plain = call(False)
    styled = call(True)
    assert actor.prompts.misses == 4  # "a fox" and "" before the LoRA, again under it
    again = call(False)
    assert actor.prompts.misses == 6  # and after it
    assert np.array_equal(call(False), plain) and actor.prompts.misses == 6  # the next call embeds nothing again
    fresh = Restyle(actor.cfg, resources(actor.cfg, {"CPU": 2}))
    assert np.array_equal(styled, call(True, on=fresh))
    assert np.array_equal(again, plain) and not np.array_equal(styled, plain)
