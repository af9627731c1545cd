"""The actor's whole call on a 4-clip batch, before and after the twenty-first session's two changes, in one process.

The changes: (1) the VAE's GroupNorms from per-channel statistics (the `channel_stats` switch now covers the VAE;
benchmarks/vae_probe.py measured the VAE alone), (2) the restyled frames converted to uint8 on the GPU and copied
to the host through pinned memory (`to_uint8_checked(restyle(..., output="device_frames"))`) where the actor copied
float32 frames into fresh pageable memory and converted them on the CPU (`to_uint8(restyle(...))`).

The UNet is loaded once with the job's GPU switches (bf16, temporal layers, frame kernel, channel statistics,
compiled, 8 latents a call); two VAE copies are compiled as the job compiles them (8 frames a call), one with torch's
GroupNorms and one with per-channel statistics, and swapped in turn. Per path: seconds per clip (median of
`--repeat` calls after one warm-up call per VAE), on the actor's 4 CPU threads. Also: whether the two uint8 paths
give the same bytes, and each VAE's decoded frames and encoder means against a float32 eager VAE on the same final
latents and pixels. OUT/actor_path_probe.json.

    python benchmarks/actor_path_probe.py OUT [--repeat N] [--rounds N] [--paths before,after]   # GPU, random-576w
    python benchmarks/actor_path_probe.py OUT --cpu            # smoke run, the tiny model, float32, eager
"""
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from vae_probe import _prepare  # noqa: E402

from v2v.bench import timed  # noqa: E402
from v2v.group_norm import ChannelStatsGroupNorm  # noqa: E402
from v2v.sampler import (ClipSettings, decode_frames, encode_posterior, frames_to_pixels, restyle,  # noqa: E402
                         to_uint8, to_uint8_checked)


def main(out: str, cpu: bool, repeat: int, rounds: int, which: set[str]) -> None:
    from jobs.benchmark import JOB_GPU_VARIANT, _load, _video, model_folder

    torch.set_num_threads(4)  # v2v.config.resources gives a GPU actor 4 threads
    device = "cpu" if cpu else "cuda"
    folder, _ = model_folder("tiny" if cpu else "random-576w", "/tmp/bench", device)
    variant = "float32" if cpu else JOB_GPU_VARIANT.replace("+vae", "")  # the VAE is compiled here, twice
    batch = 4
    c = _load(folder, device, variant, unet_batch=2 * batch)
    base_vae = copy.deepcopy(c.vae)
    # channel_stats swapped the loaded VAE's norms too (since this session): torch's back for the base copy. (The
    # first run of this probe missed that, so both of its VAEs had per-channel statistics: h200-twentyfirst/ap21.)
    for m in base_vae.modules():
        if type(m) is ChannelStatsGroupNorm:
            m.__class__ = torch.nn.GroupNorm
    vaes = {"torch norms": _prepare(base_vae, "default", compile=not cpu),
            "channel stats": _prepare(base_vae, "chanstats", compile=not cpu)}
    clips = [ClipSettings(f"style {i}", seed=i, strength=0.6, num_inference_steps=40, guidance_scale=15.0)
             for i in range(batch)]
    video = _video(batch, c.frames, c.height, c.width, seed=batch)
    paths = {"before: float32 frames to the host, uint8 on the CPU": lambda: to_uint8(restyle(c, video, clips)),
             "after: uint8 on the GPU, pinned copy": lambda: to_uint8_checked(
                 restyle(c, video, clips, output="device_frames"))[0]}
    paths = {k: v for k, v in paths.items() if k.split(":")[0] in which}
    rows, outputs, warm = [], {}, {}
    for round_ in range(rounds):  # the VAEs in turn, `rounds` times: drift shows as a difference between rounds
        for vae_name, vae in vaes.items():
            c.vae = vae
            if vae_name not in warm:
                t0 = time.perf_counter()
                with torch.no_grad():
                    list(paths.values())[0]()
                warm[vae_name] = time.perf_counter() - t0
            for path_name, fn in paths.items():
                with torch.no_grad():
                    s, times = timed(fn, repeat=repeat, warmup=0)
                    if len(paths) > 1:  # for the check that both paths give the same bytes
                        outputs[(vae_name, path_name)] = fn()
                rows.append({"round": round_, "vae": vae_name, "path": path_name, "s_per_clip": s / batch,
                             "times_s": times, "first_call_s": warm[vae_name]})
                print(f"round {round_} {vae_name:14s} | {path_name:55s} | {s / batch:.4f} s a clip "
                      f"({', '.join(f'{t:.3f}' for t in times)} s a batch; first call {warm[vae_name]:.1f} s)",
                      flush=True)
    same = {v: bool(np.array_equal(outputs[(v, list(paths)[0])], outputs[(v, list(paths)[-1])]))
            for v in vaes} if len(paths) > 1 else None
    print("uint8 frames identical on both paths:", same, flush=True)

    # Quality: each bf16 VAE against float32 eager on the same final latents and the same pixels.
    ref = copy.deepcopy(base_vae).float()
    with torch.no_grad():
        latents = restyle(c, video, clips, output="latents")
        pixels = frames_to_pixels(video[0]).to(c.device)
        want = decode_frames(ref, latents.float(), 8)
        want_mean = encode_posterior(ref, pixels, 8).mean
        quality = {}
        for vae_name, vae in vaes.items():
            got = decode_frames(vae, latents, 8)
            mean = encode_posterior(vae, pixels.to(vae.dtype), 8).mean.float()
            quality[vae_name] = {"frames_max_abs": float((got - want).abs().max()),
                                 "frames_mean_abs": float((got - want).abs().mean()),
                                 "frames_uint8_levels_differing": float(
                                     ((got * 255).round() != (want * 255).round()).float().mean()),
                                 "encoder_mean_rel": float((mean - want_mean).norm() / want_mean.norm())}
            print(f"{vae_name:14s} vs float32 eager: {quality[vae_name]}", flush=True)
    info = {"device": torch.cuda.get_device_name() if not cpu else "cpu", "torch": torch.__version__,
            "variant (UNet)": variant, "batch": batch, "repeat": repeat, "rounds": rounds, "command": " ".join(["python"] + sys.argv)}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "actor_path_probe.json").write_text(json.dumps({"info": info, "rows": rows, "identical": same,
                                                                "quality_vs_fp32": quality}, indent=1))


if __name__ == "__main__":
    args = sys.argv[1:]
    opt = {k: args[args.index(k) + 1] for k in ("--repeat", "--rounds", "--paths") if k in args}
    main(args[0], "--cpu" in args, int(opt.get("--repeat", 2)), int(opt.get("--rounds", 1)),
         set(opt.get("--paths", "before,after").split(",")))
