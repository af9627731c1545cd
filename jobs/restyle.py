"""Entry point: restyle the videos of a manifest.

    python -m jobs.restyle --manifest videos.csv --output out/ [--model tiny] [--config job.yaml] ...
    ray job submit --working-dir . -- python -m jobs.restyle --manifest s3://b/m.parquet --output s3://b/out

Runs on the Ray cluster it finds (RAY_ADDRESS, as `ray job submit` sets it) or starts a local one.
Exit code: 0 when failures stay within --max-failures, 1 otherwise, 2 for unusable input or settings, 130 when
interrupted (Ctrl-C) and 143 when stopped (SIGTERM: `ray job stop`, a preempted head): the clips finished by then
are kept, and running the same command resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import typing

from v2v.config import ConfigError, JobConfig, SpeedSettings

SPEED_SWITCHES = [f.name for f in dataclasses.fields(SpeedSettings)]

HELP = {
    "manifest": "manifest URI: Parquet, CSV or JSON Lines file, folder or glob (local, s3://, gs://, ...)",
    "output": "output root URI (clips/, videos/, index/, job.json)",
    "model": "'tiny' (embedded), a diffusers folder, an fsspec URI of one, or a hub id",
    "prompt": "default prompt for rows without one",
    "negative_prompt": "default negative prompt",
    "strength": "default strength in (0, 1]: how far from the input the result may move",
    "steps": "default num_inference_steps (strength x steps UNet steps run)",
    "guidance_scale": "default classifier-free guidance scale (<= 1 turns it off)",
    "seed": "job seed: rows without a seed get a stable hash of (seed, id, clip index)",
    "eta": "DDIM eta (noise in each step); other schedulers ignore it",
    "scheduler": "ddim, dpm, euler, euler_a, pndm, lms, unipc, heun (default: the model's own)",
    "clip_skip": "skip the last N CLIP layers for the prompt",
    "clip_frames": "frames per clip (default: the model's native count)",
    "clip_stride": "frames between clip starts (default: clip-frames; smaller overlaps)",
    "min_frames": "shortest trailing clip kept (default: half a clip); shorter remainders are 'skipped'",
    "fps": "select frames at this rate (default: the source's)",
    "width": "clip width, a multiple of 8 (default: the model's)",
    "height": "clip height, a multiple of 8 (default: the model's)",
    "resize": "cover (scale + center-crop), pad (letterbox) or stretch",
    "max_clips": "at most this many clips per video",
    "codec": "h264, h265, av1 or ffv1 (lossless, .mkv)",
    "crf": "encoder quality, lower is better: h264 and h265 0-51 (defaults 18, 23), av1 0-63 (35)",
    "preset": "encoder speed preset",
    "audio": "copy each clip's segment of the source audio",
    "stitch": "also write videos/<id> from each video's clips (overlaps cross-faded)",
    "device": "auto, cuda or cpu (auto: cuda when the cluster has GPUs or its autoscaler can add GPU nodes)",
    "gpu_wait_s": "with cuda: how long to wait for a GPU node to join before stopping (exit 2)",
    "batch_size": "clips per UNet forward in an actor",
    "num_actors": "most restyle actors (default: one per GPU the cluster has or can reach, or 1 on CPUs)",
    "num_gpus_per_actor": "GPUs per actor (default: 1 if the cluster has GPUs, else 0)",
    "cpus_per_task": "CPUs per planning (probe) and stitching task",
    "actor_memory_gib": "host memory (GiB) Ray reserves per restyle actor (default: none; ~4.1 for a 576w GPU actor)",
    "dtype": "auto, float32, float16 or bfloat16 (auto: bfloat16 on GPU, float16 before Ampere, float32 on CPU)",
    "vae_chunk": "frames per VAE call (bounds memory)",
    "allow_pickle": "load pickled .bin weights (only checkpoints you trust)",
    "batch_invariant": "one UNet forward per clip: results independent of batching (default: on for CPU)",
    "shared_compile_cache": "URI all machines reach (s3://, a shared folder) where actors share stored compiled "
                            "parts: a new machine fetches them instead of compiling",
    "max_failures": "failed clips allowed before the exit code is 1: a count, or a fraction when < 1",
    "retry_failed": "also retry clips that failed in an earlier run",
    "dry_run": "plan and report how much work there is; load no model",
    "lease_ttl_s": "a crashed job's lease on the output expires this long after its last heartbeat",
}


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.restyle", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of settings (same names as the flags); flags override it")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)")
    p.add_argument("--speed", action="append", default=[], metavar="NAME=on|off|auto",
                   help="for experts: a speed-layer switch (repeatable, or comma-separated), e.g. "
                        f"--speed temporal_layers=off; switches: {', '.join(SPEED_SWITCHES)}")
    hints = typing.get_type_hints(JobConfig)
    for f in dataclasses.fields(JobConfig):
        if f.name in ("labels", "speed"):
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP[f.name])
        else:
            p.add_argument(flag, type=tp, default=None, help=HELP[f.name])
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[JobConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    cfg = JobConfig()
    if args.config:
        import fsspec

        with fsspec.open(args.config, "r") as f:
            text = f.read()
        try:
            cfg = JobConfig.from_yaml(text)
        except ConfigError as e:
            raise ConfigError(f"--config {args.config}: {e}") from None
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(JobConfig)
                 if f.name not in ("labels", "speed") and getattr(args, f.name) is not None}
    if args.speed:
        overrides["speed"] = SpeedSettings.parse(args.speed, cfg.speed)
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg, args = config_from_args(argv)
    except ConfigError as e:
        print(f"v2v: {e}", file=sys.stderr)
        return 2
    from v2v.job.pipeline import Interrupted

    signal.signal(signal.SIGTERM, _stop)
    try:
        return _run(cfg, args.ray_address)
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"v2v: interrupted: {getattr(e, 'saved', 0)} clips saved; run the same command to resume",
              file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))


def _stop(signum, frame):
    """SIGTERM handled as Ctrl-C is: unwind, keeping what is finished."""
    from v2v.job.pipeline import Interrupted

    raise Interrupted(signum)


def _run(cfg: JobConfig, ray_address: str | None) -> int:
    import ray

    from v2v.core.lease import LeaseError
    from v2v.core.manifest import ManifestError
    from v2v.job.pipeline import run_job
    from v2v.model.loading import ModelError

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=ray_address, log_to_driver=True,
             runtime_env={"env_vars": {"V2V_CACHE": os.environ["V2V_CACHE"]}} if "V2V_CACHE" in os.environ else None)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    signal.signal(signal.SIGTERM, _stop)  # again: connecting to Ray installed Ray's own handler, which exits at once
    try:
        summary = run_job(cfg)
    except (ManifestError, ConfigError, ModelError, LeaseError) as e:
        print(f"v2v: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
