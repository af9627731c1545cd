"""Restyle the videos of a manifest.

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
    "manifest": "manifest URI: Parquet, CSV, JSON Lines or JSON array file, folder or glob (local, s3://, gs://, ...)",
    "output": "output root URI (clips/, videos/, index/, job.json)",
    "model": "'tiny' or 'tiny-wan' (embedded), a diffusers folder (zeroscope / ModelScope or Wan 2.1, read off its "
             "model_index.json), an fsspec URI of one, or a hub id",
    "prompt": "default prompt for rows without one (default: none: every row needs a prompt)",
    "negative_prompt": "default negative prompt",
    "strength": "default strength in (0, 1]: how far from the input the result may move",
    "steps": "default num_inference_steps (strength x steps UNet steps run)",
    "guidance_scale": "default classifier-free guidance scale (<= 1 turns it off)",
    "seed": "job seed: rows without a seed get a stable hash of (seed, id, clip index)",
    "eta": "DDIM eta (noise in each step); other schedulers ignore it",
    "scheduler": "ddim, dpm, euler, euler_a, pndm, lms, unipc or heun; a Wan model: unipc, dpm or flow-euler "
                 "(default: the model's own)",
    "clip_skip": "skip the last N CLIP layers for the prompt (default: none skipped)",
    "lora": "LoRA files for rows without a `lora` column value, as JSON: '[{\"uri\": \"s3://b/ink.safetensors\", "
            "\"scale\": 0.8}]' (default: none)",
    "embeddings": "textual-inversion files for rows without an `embeddings` value, as JSON: "
                  "'[{\"uri\": \"ink.safetensors\", \"token\": \"<ink>\"}]' (default: none)",
    "clip_frames": "frames per clip (default: the model's native count)",
    "clip_stride": "frames between clip starts (default: clip-frames; smaller overlaps)",
    "min_frames": "shortest trailing clip kept (default: half a clip); shorter remainders are 'skipped'",
    "last_clip": "overlap: a video's trailing remainder restyled as a whole clip ending at the video's end, "
                 "the frames before it as context, cut from the output; short: the remainder alone, a shorter clip",
    "fps": "select frames at this rate (default: the source's)",
    "width": "clip width, a multiple of 8 (default: the model's)",
    "height": "clip height, a multiple of 8 (default: the model's)",
    "resize": "cover (scale + center-crop), pad (letterbox) or stretch",
    "max_clips": "at most this many clips per video (default: no limit)",
    "codec": "h264, h265, av1 or ffv1 (lossless, .mkv)",
    "crf": "encoder quality, lower is better: h264 and h265 0-51, av1 0-63 (default: the codec's: 18, 23, 35)",
    "preset": "encoder speed preset (default: the encoder's)",
    "audio": "copy each clip's segment of the source audio",
    "stitch": "also write videos/<id> from each video's clips (overlaps cross-faded)",
    "preview": "also write previews/<id>.jpg (source frames above the restyled ones) and previews/index.html, a "
               "page of every video with its status, settings, errors and quality signals",
    "preview_frames": "frames in each preview strip",
    "device": "auto, cuda or cpu (auto: cuda when the cluster has GPUs or its autoscaler can add GPU nodes)",
    "gpu_wait_s": "with cuda: how long to wait for a GPU node to join before stopping (exit 2)",
    "batch_size": "clips per UNet forward in an actor",
    "num_actors": "most restyle actors (default: one per GPU the cluster has or can reach, or 1 on CPUs)",
    "num_gpus_per_actor": "GPUs per actor (default: 1 if the cluster has GPUs, else 0)",
    "cpus_per_task": "CPUs per planning (probe) and stitching task",
    "actor_memory_gib": "host memory (GiB) Ray reserves per restyle actor (default: none reserved; a 576w GPU "
                        "actor uses ~4.1)",
    "dtype": "auto, float32, float16 or bfloat16 (auto: bfloat16 on GPU, float16 before Ampere, float32 on CPU)",
    "vae_chunk": "frames per VAE call (bounds memory)",
    "allow_pickle": "load pickled .bin weights (only checkpoints you trust)",
    "batch_invariant": "one UNet forward per clip: results independent of batching (default: on for CPU)",
    "shared_compile_cache": "URI all machines reach (s3://, a shared folder) where actors share stored compiled "
                            "parts: a new machine fetches them instead of compiling (default: none: each machine "
                            "compiles its own)",
    "max_failures": "failed clips allowed before the exit code is 1: a count, or a fraction when < 1",
    "retry_failed": "also retry clips that failed in an earlier run for their own sake (a rerun retries those the "
                    "store or a lost actor failed anyway)",
    "dry_run": "plan and report how much work there is; load no model",
    "drop_unlisted": "remove the index rows and files of earlier runs' clips that this run does not plan: of videos "
                     "this manifest does not list (clips, videos, previews), or no longer in a video's plan "
                     "(default: keep them as they were)",
    "lease_ttl_s": "a crashed job's lease on the output expires this long after its last heartbeat",
    "strict_columns": "a manifest column v2v does not use, but whose name is close to one it does, is an error "
                      "(default: a warning)",
}

METAVARS = {"manifest": "URI", "output": "URI", "model": "URI", "shared_compile_cache": "URI", "scheduler": "NAME",
            "dtype": "TYPE", "resize": "MODE", "last_clip": "MODE", "codec": "CODEC", "preset": "NAME",
            "device": "DEVICE", "gpu_wait_s": "S", "lease_ttl_s": "S", "actor_memory_gib": "GIB", "lora": "JSON",
            "embeddings": "JSON"}

# --help shows the settings in these groups, in this order.
GROUPS = {
    "input and output (manifest and output are required, here or in --config)": [
        "manifest", "output", "dry_run", "strict_columns", "drop_unlisted"],
    "model and sampling (a manifest row's own value wins)": [
        "model", "prompt", "negative_prompt", "strength", "steps", "guidance_scale", "seed", "eta", "scheduler",
        "clip_skip", "lora", "embeddings", "dtype", "allow_pickle"],
    "clips": ["clip_frames", "clip_stride", "min_frames", "last_clip", "fps", "width", "height", "resize",
              "max_clips"],
    "encoding": ["codec", "crf", "preset", "audio", "stitch", "preview", "preview_frames"],
    "cluster": ["device", "gpu_wait_s", "batch_size", "num_actors", "num_gpus_per_actor", "cpus_per_task",
                "actor_memory_gib", "vae_chunk", "batch_invariant", "shared_compile_cache", "lease_ttl_s"],
    "failures": ["max_failures", "retry_failed"],
}


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """One line naming the problem (and the flag meant, for a mistyped one), then a pointer to --help."""
        import difflib

        hint = ""
        if message.startswith("unrecognized arguments:"):
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            given = message.split(":", 1)[1].split()[0].split("=")[0]
            close = difflib.get_close_matches(given, flags, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
        self.exit(2, f"{self.prog}: {message}{hint}\n(python -m jobs.restyle --help lists every setting)\n")


def _default_text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if value == "" else str(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m jobs.restyle", usage="%(prog)s --manifest URI --output URI [settings]",
                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", metavar="YAML", help="file of settings (same names as the flags); flags override it")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show Ray's own start-up and progress lines and the model loaders' progress bars")
    hints = typing.get_type_hints(JobConfig)
    fields = {f.name: f for f in dataclasses.fields(JobConfig)}
    defaults = JobConfig()
    for title, names in GROUPS.items():
        group = p.add_argument_group(title)
        for name in names:
            flag = "--" + name.replace("_", "-")
            tp = _base_type(hints[name])
            value = getattr(defaults, name)
            text = HELP[name] if value is None or "(default:" in HELP[name] else \
                f"{HELP[name]} (default: {_default_text(value)})"
            if name in ("manifest", "output"):
                text = HELP[name]
            metavar = METAVARS.get(name) or {int: "N", float: "X", str: "TEXT"}.get(tp)
            if tp is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            else:
                group.add_argument(flag, type=tp, default=None, help=text, metavar=metavar)
        if title == "cluster":
            group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                               help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
            group.add_argument("--speed", action="append", default=[], metavar="NAME=on|off|auto",
                               help="for experts: a speed-layer switch (repeatable, or comma-separated), e.g. "
                                    f"--speed temporal_layers=off; switches: {', '.join(SPEED_SWITCHES)}")
    missing = set(fields) - {n for names in GROUPS.values() for n in names} - {"labels", "speed"}
    assert not missing, f"settings missing from --help's groups: {sorted(missing)}"
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[JobConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    cfg = JobConfig()
    if args.config:
        import fsspec

        try:
            with fsspec.open(args.config, "r") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:  # missing, a folder, unreadable, not text
            raise ConfigError(f"--config {args.config}: cannot be read ({type(e).__name__}: {e})") from None
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
    for noisy in ("botocore", "aiobotocore", "s3fs"):  # "Found credentials in environment variables." and the like
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg, args = config_from_args(argv)
    except ConfigError as e:
        print(f"v2v: {e}", file=sys.stderr)
        return 2
    from v2v.job.pipeline import Interrupted

    _handle_stops()
    try:
        return _run(cfg, args.ray_address, args.verbose)
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"\nv2v: interrupted: {getattr(e, 'saved', 0)} clips saved; run the same command to resume",
              file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))


def _handle_stops() -> None:
    """SIGINT and SIGTERM both unwind the run, keeping what is finished. SIGINT set here too, not left to Python:
    a driver started in the background by a shell or a CI runner inherits SIGINT ignored, and Python then installs
    no handler of its own, so Ctrl-C (or `kill -INT`) would do nothing."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)


def _stop(signum, frame):
    """A stop signal handled as Ctrl-C is: unwind, keeping what is finished."""
    from v2v.job.pipeline import Interrupted

    raise Interrupted(signum)


def _run(cfg: JobConfig, ray_address: str | None, verbose: bool = False) -> int:
    from v2v.core.lease import LeaseError
    from v2v.core.manifest import ManifestError
    from v2v.job.pipeline import preflight, run_job
    from v2v.model.loading import ModelError

    try:  # a typo in the manifest, the model or the output is reported before Ray starts
        manifest = preflight(cfg)
    except (ManifestError, ConfigError, ModelError) as e:
        print(f"v2v: {e}", file=sys.stderr)
        return 2
    _start_ray(ray_address, verbose)
    _handle_stops()  # again: connecting to Ray installed Ray's own handler, which exits at once
    try:
        summary = run_job(cfg, manifest=manifest, live=sys.stdout.isatty())
    except (ManifestError, ConfigError, ModelError, LeaseError) as e:
        print(f"v2v: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    return summary.exit_code


def _start_ray(address: str | None, verbose: bool) -> None:
    """Join (or start) the Ray cluster. Unless verbose, Ray's own start-up, plan and progress lines stay in its log
    files: a run prints v2v's lines and real warnings."""
    import ray

    if not verbose:
        # Each of these says nothing a v2v user acts on: that Ray's default token auth is on, that Ray Data's bars
        # are off (v2v prints its own progress).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, log_to_driver=True, logging_level=logging.INFO if verbose else logging.WARNING,
             runtime_env={"env_vars": {"V2V_CACHE": os.environ["V2V_CACHE"]}} if "V2V_CACHE" in os.environ else None)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = verbose and sys.stderr.isatty()
    if not verbose:  # Ray Data's console lines (each dataset's start, plan and end) at WARNING; its log file keeps all
        for handler in logging.getLogger("ray.data").handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
