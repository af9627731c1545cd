"""The compiled restyle actor, for real on the CPU (torch.compile with inductor, the tiny model): it compiles once,
serves short batches without a second compile, stores its compiled parts, and later starts (or other machines,
through a shared cache on a real S3-compatible server) load them instead of tracing."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers import CLIPS, REPO, random_video, speed_only
from v2v.config import SpeedSettings
from v2v.model.loading import load_components
from v2v.model.sampler import restyle, to_uint8
from v2v.speed import apply_speed_settings
from v2v.speed.fixed_shapes import DenoiserCall, FixedBatch

# The child builds the job's restyle actor with --compile (which compiles the UNet and the VAE's encoder and
# decoder and warms them up in its constructor), restyles a full batch of 2 clips, a short batch of 1 and a
# shorter clip, and reports outputs, torch's compile counters and, with precompile, what each part's stored
# compiled form did. Frame attention comes with compile by default: on the CPU its op is SDPA, traced
# into the graphs.
_ACTOR = """
import dataclasses, json, sys, time
import numpy as np, torch
from torch._dynamo.utils import counters
from v2v.config import JobConfig, SpeedSettings
from v2v.job.resources import resources
from v2v.job.stages import Restyle
from v2v.model.sampler import ClipSettings, restyle, takes_pairs

t0 = time.perf_counter()
cfg = JobConfig(manifest="-", output="-", batch_size=2, batch_invariant=False,
                speed=SpeedSettings(compile=True, precompile=sys.argv[2] == "pre", background_compile=False),
                shared_compile_cache=sys.argv[3] or None)
actor = Restyle(cfg, resources(cfg, {"CPU": 2}))
ready_s = time.perf_counter() - t0
graphs_after_start = counters["stats"]["unique_graphs"]
video = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 8, 64, 64, 3), dtype=np.uint8))
clips = [ClipSettings("a red fox", seed=1, num_inference_steps=4), ClipSettings("ink", seed=2, num_inference_steps=4)]
two = restyle(actor.components, video, clips, output="latents")
one = restyle(actor.components, video[1:], clips[1:], output="latents")
short = restyle(actor.components, video[1:, :5], clips[1:], output="latents")  # a shorter last clip: eager
frames = restyle(actor.components, video, clips)  # through the compiled VAE decoder
plain = [dataclasses.replace(c, guidance_scale=1.0) for c in clips]
unguided = restyle(actor.components, video, plain, output="latents")  # no guidance: the same compiled graph
np.save(sys.argv[1], torch.cat([two, one, unguided]).numpy())
np.save(sys.argv[1] + ".frames.npy", frames.numpy())
np.save(sys.argv[1] + ".short.npy", short.numpy())
print("RESULT " + json.dumps({"ready_s": ready_s, "start_s": actor.start_s, "report": actor.start_report(),
                              "graphs_after_start": graphs_after_start,
                              "takes_pairs": takes_pairs(actor.components.unet),
                              "graphs_at_end": counters["stats"]["unique_graphs"],
                              "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
                              "cache_misses": counters["inductor"]["fxgraph_cache_miss"],
                              "temporal": sorted({type(m).__name__ for m in actor.components.unet.modules()
                                                  if "Temporal" in type(m).__name__}),
                              "frame_attention": sum(type(getattr(m, "processor", None)).__name__
                                                     == "FrameAttnProcessor" for m in actor.components.unet.modules()),
                              "norms": sorted({type(m).__name__ for m in actor.components.unet.modules()
                                               if isinstance(m, torch.nn.GroupNorm)}),
                              "upsamplers": [sorted({type(m).__name__ for m in model.modules()
                                                     if "Upsample" in type(m).__name__})
                                             for model in (actor.components.unet, actor.components.vae)],
                              "stored": {k: {"built": len(a.built), "fetched": len(a.fetched), "loaded": len(a.runners),
                                             "failed": a.failed} for k, a in actor.stored.items()}}))
"""


def _start_actor(tmp_path, name, cache, mode="jit", shared=""):
    out = tmp_path / f"{name}.npy"
    env = {**os.environ, "V2V_COMPILE_CACHE": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _ACTOR, str(out), mode, shared], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    return (json.loads(line[7:]), torch.from_numpy(np.load(out)), torch.from_numpy(np.load(f"{out}.short.npy")),
            torch.from_numpy(np.load(f"{out}.frames.npy")))


def _assert_matches_eager(tiny, got, short, frames):
    """What a compiled actor restyled (see _ACTOR) against the eager tiny model on the same inputs."""
    video = random_video(2)
    plain = [dataclasses.replace(c, guidance_scale=1.0) for c in CLIPS]
    want = torch.cat([restyle(tiny, video, CLIPS, output="latents"),
                      restyle(tiny, video[1:], CLIPS[1:], output="latents"),
                      restyle(tiny, video, plain, output="latents")])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # inductor's fused kernels round differently
    torch.testing.assert_close(short, restyle(tiny, video[1:, :5], CLIPS[1:], output="latents"), rtol=0, atol=1e-4)
    torch.testing.assert_close(frames, restyle(tiny, video, CLIPS), rtol=0, atol=1e-3)


@pytest.mark.slow
def test_compiled_actor_matches_eager_compiles_once_and_restarts_from_the_cache(tiny, tmp_path):
    cache = tmp_path / "inductor"
    first, got, short, frames = _start_actor(tmp_path, "first", cache)
    # three graphs (UNet, VAE encoder, VAE decoder), compiled in the constructor; the 1-clip batch was padded
    # onto the UNet's, the 5-frame clip's UNet calls ran eager and its VAE chunks were padded: none compiled again
    assert first["graphs_after_start"] == 3 and first["graphs_at_end"] == 3, first
    assert first["stored"] == {}, first
    # compile brings the temporal layers of v2v.speed.temporal with it (the eager model below keeps diffusers')
    assert first["temporal"] == ["TemporalConvFrames", "TransformerTemporalFrames"], first
    assert first["frame_attention"] > 0, first  # the default (on with compile) reached the model
    assert first["norms"] == ["ChannelStatsGroupNorm"], first  # so did per-channel GroupNorm statistics
    # and the UNet's upsamplers by output phase (the VAE's stay diffusers')
    assert first["upsamplers"] == [["PhaseUpsample2D"], ["Upsample2D"]], first
    assert first["takes_pairs"], first  # and the guided step's shared prefix (the unguided batch: no new graph)
    assert first["cache_misses"] >= 1 and any(cache.iterdir())
    # the start's phases, each timed once: they add up to (at most) the whole start
    assert list(first["start_s"]) == ["imports", "load", "switches", "compile_parts", "warm_up_unet",
                                      "warm_up_vae_encoder", "warm_up_vae_decoder", "fingerprint"], first
    assert 0 < sum(first["start_s"].values()) <= first["ready_s"]
    _assert_matches_eager(tiny, got, short, frames)

    second, again, _, _ = _start_actor(tmp_path, "second", cache)
    assert second["cache_hits"] >= 1 and second["cache_misses"] == 0, second  # no kernel compiled again
    assert second["ready_s"] < first["ready_s"], (first, second)
    torch.testing.assert_close(again, got, rtol=0, atol=1e-6)


# The compiled parts stored as torch.compile's saved functions (dynamo traces each part on the first start only).
# Each start is told of a shared compile cache on a real S3-compatible server, which the first start fills.
@pytest.mark.slow
def test_stored_compiled_actor_matches_eager_and_its_later_starts_trace_nothing(tiny, tmp_path, s3_endpoint):
    import tarfile

    mode, folder, pattern, graphs_first = "pre", "precompiled", "*.dynamo", 3

    import s3fs

    s3 = s3fs.S3FileSystem()
    s3.mkdir(f"v2v-compile-{mode}")
    shared = f"s3://v2v-compile-{mode}/cache"
    cache = tmp_path / "compiled"
    first, got, short, frames = _start_actor(tmp_path, "first", cache, mode, shared)
    # each part compiled once at start and stored in the cache, and put in the shared cache
    built = {"built": 1, "fetched": 0, "loaded": 1, "failed": None}
    assert first["stored"] == {"unet": built, "vae_encoder": built, "vae_decoder": built}, first
    assert first["graphs_after_start"] == first["graphs_at_end"] == graphs_first, first  # none mid-job
    assert first["frame_attention"] > 0, first  # compiled with the op in the UNet
    assert len(list((cache / folder).glob(pattern))) == 3
    archives = s3.ls(shared)
    assert sorted(os.path.basename(a).split("-")[0] for a in archives) == ["unet", "vae_decoder", "vae_encoder"]
    assert ("stored parts: unet built" in first["report"]
            and "shared compile cache: stored 3 archives" in first["report"]), first
    _assert_matches_eager(tiny, got, short, frames)

    second, again, _, _ = _start_actor(tmp_path, "second", cache, mode, shared)
    loaded = {"built": 0, "fetched": 0, "loaded": 1, "failed": None}
    assert second["stored"] == {"unet": loaded, "vae_encoder": loaded, "vae_decoder": loaded}, second
    assert second["graphs_at_end"] == 0, second  # dynamo traced nothing: the stored parts ran
    assert second["start_s"]["warm_up_unet"] < first["start_s"]["warm_up_unet"] / 5, (first, second)
    torch.testing.assert_close(again, got, rtol=0, atol=0)  # the same kernels on the same weights

    # another machine (an empty compile cache of its own): its parts come from the shared cache, nothing compiles
    other = tmp_path / "other-machine"
    third, elsewhere, _, _ = _start_actor(tmp_path, "third", other, mode, shared)
    fetched = {"built": 0, "fetched": 1, "loaded": 1, "failed": None}
    assert third["stored"] == {"unet": fetched, "vae_encoder": fetched, "vae_decoder": fetched}, third
    assert third["graphs_at_end"] == 0, third
    assert "shared compile cache: fetched 3 archives" in third["report"], third
    assert third["start_s"]["warm_up_unet"] < first["start_s"]["warm_up_unet"] / 5, (first, third)
    torch.testing.assert_close(elsewhere, got, rtol=0, atol=0)
    # what it ran came whole from the archives: its cache holds their files and nothing it wrote itself
    held = set()
    for a in archives:
        with s3.open(a, "rb") as f, tarfile.open(fileobj=f) as tar:
            held |= set(tar.getnames())
    from v2v.speed.shared_cache import SharedCache

    assert SharedCache(shared, other).files() == held


# A machine's first start with background_compile (the default with precompile): the actor is ready eager while a
# subprocess compiles and stores the parts; a stream of clips takes them up between two steps once stored.
_BACKGROUND = """
import json, sys, time
import numpy as np, torch
from torch._dynamo.utils import counters
from v2v.config import JobConfig, SpeedSettings
from v2v.job.resources import resources
from v2v.job.stages import Restyle
from v2v.model.sampler import ClipSettings, restyle

t0 = time.perf_counter()
cfg = JobConfig(manifest="-", output="-", batch_size=2, batch_invariant=False, speed=SpeedSettings(compile=True))
actor = Restyle(cfg, resources(cfg, {"CPU": 2}))
ready = {"ready_s": time.perf_counter() - t0, "report": actor.start_report(), "start_s": dict(actor.start_s),
         "stored": sorted(actor.stored), "background": actor.background is not None}
video = np.random.default_rng(0).integers(0, 256, (2, 8, 64, 64, 3), dtype=np.uint8)
rows = lambda: [dict(id="v", clip_index=i, frames=video[i], prompt=p, seed=i + 1, strength=0.6, num_inference_steps=4,
                     guidance_scale=15.0, error=None) for i, p in enumerate(["a red fox", "ink"])]
eager = [r["frames"] for r in actor.stream(rows())]
compiling_after_eager = actor.background is not None
actor.background.wait()  # stored now; the stream below takes the parts up before its first step
later = [r["frames"] for r in actor.stream(rows())]
clips = [ClipSettings("a red fox", seed=1, num_inference_steps=4), ClipSettings("ink", seed=2, num_inference_steps=4)]
np.save(sys.argv[1], restyle(actor.components, torch.from_numpy(video), clips, output="latents").numpy())
np.save(sys.argv[1] + ".frames.npy", np.stack(eager + later))
print("RESULT " + json.dumps({**ready, "compiling_after_eager": compiling_after_eager,
                              "at_end": actor.start_report(), "graphs_at_end": counters["stats"]["unique_graphs"],
                              "stored_at_end": {k: {"built": len(a.built), "loaded": len(a.runners)}
                                                for k, a in actor.stored.items()}}))
"""


@pytest.mark.slow
def test_first_start_is_ready_eager_and_takes_the_parts_up_once_compiled_in_the_background(tiny, tmp_path):
    cache = tmp_path / "compiled"
    out = tmp_path / "background.npy"
    env = {**os.environ, "V2V_COMPILE_CACHE": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _BACKGROUND, str(out)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    # ready before anything compiled: no warm-up, no part, the compile still running after the first clips
    assert r["background"] and r["stored"] == [] and r["compiling_after_eager"], r
    assert not any(k.startswith("warm_up") for k in r["start_s"]), r
    assert "eager while the parts compile in the background" in r["report"], r
    # then the stream took up what the subprocess stored: every part loaded, none built or traced in the actor
    assert r["stored_at_end"] == {k: {"built": 0, "loaded": 1} for k in ("unet", "vae_encoder", "vae_decoder")}, r
    assert r["graphs_at_end"] == 0, r
    assert "background_compile" in r["at_end"] and "eager while" not in r["at_end"], r
    assert len(list((cache / "precompiled").glob("*.dynamo"))) == 3
    # eager clips as the eager model restyles them; compiled ones within inductor's rounding (uint8 frames)
    frames = torch.from_numpy(np.load(f"{out}.frames.npy")).int()
    want = torch.from_numpy(to_uint8(restyle(tiny, random_video(2), CLIPS))).int()
    assert (frames[:2] - want).abs().max() <= 1 and (frames[2:] - want).abs().max() <= 1

    # the next start on this machine loads the same parts at once (no background compile) and computes the same
    second, got, _, _ = _start_actor(tmp_path, "second", cache, "pre")
    assert second["stored"] == {k: {"built": 0, "fetched": 0, "loaded": 1, "failed": None}
                                for k in ("unet", "vae_encoder", "vae_decoder")}, second
    assert "eager while" not in second["report"], second
    torch.testing.assert_close(torch.from_numpy(np.load(out)), got[:2], rtol=0, atol=0)


def test_a_torch_that_cannot_save_compiled_functions_gets_torch_compile_said_once(cache_dir, tmp_path, monkeypatch,
                                                                                   caplog):
    """An older torch has no saved compiled functions: precompile (on by default with compile) turns into
    plain torch.compile with one line in the log, instead of each part failing over with a warning at every start."""
    monkeypatch.setenv("V2V_COMPILE_CACHE", str(tmp_path))
    # apply_speed_settings points inductor at that cache in os.environ: recorded here, so restored after the test
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    for flag in ("TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(flag, os.environ.get(flag, "1"))
    on = speed_only(compile=True, precompile=True)
    have = apply_speed_settings(load_components("tiny", cache_dir=cache_dir), on)
    assert set(have) == {"unet"}  # this torch can: the UNet is a stored part (built lazily, at its first call)
    monkeypatch.delattr(torch.compiler, "load_compiled_function")  # as in a torch before the API
    c = load_components("tiny", cache_dir=cache_dir)
    with caplog.at_level("INFO", logger="v2v.speed"):
        assert apply_speed_settings(c, on) == {}
    assert [r.levelname for r in caplog.records] == ["INFO"] and "cannot save compiled functions" in caplog.text
    assert isinstance(c.unet.forward, FixedBatch) and not isinstance(c.unet.forward.forward, DenoiserCall)


def test_every_switch_that_changes_the_model_is_in_its_stored_parts_key(cache_dir, tmp_path, monkeypatch):
    """A stored part is found by its key, and apply_perf_settings lists the switches for it by hand: one that
    changes what the model computes but is left out would load a part built without it."""
    monkeypatch.setenv("V2V_COMPILE_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # set by apply_speed_settings: restored after
    for flag in ("TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(flag, os.environ.get(flag, "1"))
    # how a part is built, stored or called, not what it computes
    not_in_key = {"compile", "compile_vae", "precompile", "background_compile", "cuda_graphs", "cudnn_benchmark"}
    switches = [f.name for f in dataclasses.fields(SpeedSettings)]
    on = {n: True for n in switches if n not in not_in_key}
    assert len(on) >= 5
    stored = apply_speed_settings(load_components("tiny", cache_dir=cache_dir),
                                  SpeedSettings(compile=True, precompile=True, **on))
    for part in stored.values():  # built lazily, at their first call: nothing compiles here
        assert {k: v for k, v in part.base.items() if k in switches} == on, part.name


def test_a_shared_compile_cache_without_stored_parts_is_said_unused(cache_dir, caplog):
    """--shared-compile-cache holds stored compiled parts; an actor that stores none (no compile, as CPU actors by
    default, or --no-precompile) says so instead of ignoring the setting silently."""
    with caplog.at_level("WARNING", logger="v2v.speed"):
        assert apply_speed_settings(load_components("tiny", cache_dir=cache_dir), SpeedSettings(),
                                    shared_cache="s3://b/c") == {}
    assert "shared compile cache s3://b/c unused" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="v2v.speed"):  # --no-precompile on a Wan model: none stored either
        assert apply_speed_settings(load_components("tiny-wan", cache_dir=cache_dir),
                                    SpeedSettings(compile=True, precompile=False), shared_cache="s3://b/c") == {}
    assert "shared compile cache s3://b/c unused" in caplog.text


def test_cudnn_benchmark_setting_reaches_torch(cache_dir):
    """--speed cudnn_benchmark=off: the actor leaves each convolution's algorithm to cuDNN's heuristics (no timing
    search at start)."""
    from jobs.restyle import config_from_args
    from v2v.config import JobConfig
    from v2v.job.resources import resources
    from v2v.job.stages import Restyle

    cfg, _ = config_from_args(["--manifest", "m.csv", "--output", "out", "--speed", "cudnn_benchmark=off"])
    assert cfg.speed.cudnn_benchmark is False and JobConfig().speed.cudnn_benchmark is True
    was = torch.backends.cudnn.benchmark
    try:
        Restyle(cfg, resources(cfg, {"CPU": 2}))
        assert torch.backends.cudnn.benchmark is False
        apply_speed_settings(load_components("tiny", cache_dir=cache_dir), SpeedSettings())
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = was



def test_a_wan_actor_compiles_its_transformer_once_and_restyles_as_eager(cache_dir):
    """`compile` on a Wan model (tiny-wan, CPU inductor): the actor compiles the transformer at start-up at one fixed
    batch; full and short rounds, guided and unguided clips and two schedulers reuse that graph (no compile after
    start), a shorter clip runs eager, and every clip equals the eager model's."""
    from torch._dynamo.utils import counters

    from v2v.config import JobConfig
    from v2v.job.resources import resources
    from v2v.job.stages import Restyle
    from v2v.model import wan
    from v2v.model.loading import make_scheduler
    from v2v.model.sampler import ClipSettings

    cfg = JobConfig(manifest="-", output="-", model="tiny-wan", batch_size=2, batch_invariant=False,
                    speed=SpeedSettings(compile=True, precompile=False))
    actor = Restyle(cfg, resources(cfg, {"CPU": 2}))
    c, eager = actor.components, load_components("tiny-wan")
    assert isinstance(c.transformer.forward, FixedBatch) and "warm_up_transformer" in actor.start_s
    graphs = counters["stats"]["unique_graphs"]
    video = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 9, 32, 32, 3), dtype=np.uint8))
    clips = [ClipSettings("a red fox", seed=1, num_inference_steps=4, guidance_scale=5.0),
             ClipSettings("ink", seed=2, num_inference_steps=3, strength=0.9, guidance_scale=1.0)]
    flow = make_scheduler(c.scheduler, "flow-euler")
    for batch, sched in ((video, None), (video[1:], None), (video[:1], flow), (video[:1, :5], None)):
        n = batch.shape[0]
        got = wan.restyle(c, batch, clips[:n], scheduler=sched, output="latents")
        want = wan.restyle(eager, batch, clips[:n], scheduler=sched, output="latents")
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs  # every round above ran the start-up's graph, or eager


# A Wan actor (tiny-wan) with the GPU's defaults (compile, precompile, background_compile) and a shared compile cache.
_WAN = """
import json, sys, time
import numpy as np, torch
from torch._dynamo.utils import counters
from v2v.config import JobConfig, SpeedSettings
from v2v.job.resources import resources
from v2v.job.stages import Restyle

cfg = JobConfig(manifest="-", output="-", model="tiny-wan", batch_size=2, batch_invariant=False,
                speed=SpeedSettings(compile=True), shared_compile_cache=sys.argv[2])
actor = Restyle(cfg, resources(cfg, {"CPU": 2}))
ready = {"report": actor.start_report(), "start_s": dict(actor.start_s), "background": actor.background is not None}
video = np.random.default_rng(0).integers(0, 256, (2, 9, 32, 32, 3), dtype=np.uint8)
rows = lambda: [dict(id="v", clip_index=i, frames=video[i], prompt=p, seed=i + 1, strength=0.6, num_inference_steps=4,
                     guidance_scale=g, error=None) for i, (p, g) in enumerate([("a red fox", 5.0), ("ink", 1.0)])]
first = [r["frames"] for r in actor.stream(rows())]
compiling_after_first = actor.background is not None
if actor.background is not None:
    actor.background.wait()  # stored now; the stream below takes the part up before its first step
later = [r["frames"] for r in actor.stream(rows())]
np.save(sys.argv[1], np.stack(first + later))
print("RESULT " + json.dumps({**ready, "compiling_after_first": compiling_after_first, "at_end": actor.start_report(),
                              "graphs_at_end": counters["stats"]["unique_graphs"],
                              "stored": {k: {"built": len(a.built), "fetched": len(a.fetched), "loaded": len(a.runners),
                                             "failed": a.failed} for k, a in actor.stored.items()}}))
"""


def _start_wan_actor(tmp_path, name, cache, shared):
    out = tmp_path / f"{name}.npy"
    env = {**os.environ, "V2V_COMPILE_CACHE": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _WAN, str(out), shared], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:]), np.load(out)


@pytest.mark.slow
def test_a_wan_actor_is_ready_eager_while_its_transformer_compiles_and_other_machines_fetch_it(tmp_path, s3_endpoint):
    """Wan's transformer takes the start-up switches the UNet has: a machine's first start is ready eager while a
    subprocess compiles and stores the transformer (and puts it in the shared cache); the actor takes it up between
    two steps; another machine's first start fetches it, traces nothing and computes the same."""
    import s3fs

    from v2v.model import wan
    from v2v.model.sampler import ClipSettings

    s3fs.S3FileSystem().mkdir("v2v-compile-wan")
    shared = "s3://v2v-compile-wan/cache"
    first, frames = _start_wan_actor(tmp_path, "first", tmp_path / "machine-a", shared)
    assert first["background"] and first["compiling_after_first"], first
    assert "eager while the parts compile in the background" in first["report"], first
    assert not any(k.startswith("warm_up") for k in first["start_s"]), first
    taken_up = {"transformer": {"built": 0, "fetched": 0, "loaded": 1, "failed": None}}
    assert first["stored"] == taken_up and first["graphs_at_end"] == 0, first  # built by the subprocess, loaded here
    assert "background_compile" in first["at_end"] and "eager while" not in first["at_end"], first
    assert [os.path.basename(a).split("-")[0] for a in s3fs.S3FileSystem().ls(shared)] == ["transformer"]
    # the eager clips as the eager model restyles them; the compiled ones within inductor's rounding (uint8 frames)
    video = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 9, 32, 32, 3), dtype=np.uint8))
    clips = [ClipSettings("a red fox", seed=1, num_inference_steps=4, guidance_scale=5.0),
             ClipSettings("ink", seed=2, num_inference_steps=4, guidance_scale=1.0)]
    want = torch.from_numpy(to_uint8(wan.restyle(load_components("tiny-wan"), video, clips))).int()
    got = torch.from_numpy(frames).int()
    assert (got[:2] - want).abs().max() <= 1 and (got[2:] - want).abs().max() <= 1

    # another machine: ready compiled at once, its transformer from the shared cache, nothing traced
    second, again = _start_wan_actor(tmp_path, "second", tmp_path / "machine-b", shared)
    assert not second["background"] and "warm_up_transformer" in second["start_s"], second
    assert second["stored"] == {"transformer": {"built": 0, "fetched": 1, "loaded": 1, "failed": None}}, second
    assert second["graphs_at_end"] == 0 and "fetched 1 archive" in second["report"], second
    np.testing.assert_array_equal(again[:2], frames[2:])  # the same kernels on the same weights
