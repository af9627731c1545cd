"""The job's one typed config: settings checked by name, the YAML file, and the speed section."""

import math

import pytest

from v2v.config import JobConfig


@pytest.mark.parametrize("field,value,want", [
    ("batch_size", 0, ">= 1"), ("clip_skip", -1, ">= 0"), ("strength", 1.5, r"in \(0, 1\]"),
    ("guidance_scale", math.inf, "finite"), ("width", 100, "a multiple of 8"), ("codec", "mpeg2", "h264, h265"),
    ("seed", -1, r"in \[0, 2\*\*63\)"),
])
def test_job_settings_are_checked_before_anything_runs(field, value, want):
    from v2v.config import ConfigError

    with pytest.raises(ConfigError, match=f"^{field} must be {want}.*got {value!r}"):
        JobConfig(manifest="x", output="y", **{field: value}).validate()
    JobConfig(manifest="x", output="y").validate()  # the defaults pass


def test_config_file_is_read_and_checked_setting_by_setting(tmp_path):
    """`--config job.yaml`: flags override it; a wrong type or name is a ConfigError naming the setting (it was a
    TypeError from deep in the checks)."""
    from jobs.restyle import config_from_args
    from v2v.config import ConfigError

    good = tmp_path / "good.yaml"
    good.write_text("manifest: m.csv\noutput: out\nbatch-size: 4\nstrength: 1\nnum_actors: null\n"
                    "speed: {compile: true, temporal_layers: false}\nlabels: {run: nightly}\n")
    cfg, _ = config_from_args(["--config", str(good), "--batch-size", "2"])
    assert (cfg.batch_size, cfg.strength, cfg.num_actors, cfg.labels) == (2, 1, None, {"run": "nightly"})
    assert (cfg.speed.compile, cfg.speed.temporal_layers, cfg.speed.cuda_graphs) == (True, False, None)
    for line, match in [("batch_size: four", "batch_size must be int, got 'four'"),
                        ("strength: '0.5'", "strength must be float, got '0.5'"),
                        ("speed: {compile: 1}", "speed.compile must be true or false, got 1"),
                        ("speed: {turbo: true}", r"unknown speed switch\(es\) \['turbo'\]"),
                        ("speed: fast", "speed must be a mapping"),
                        ("compile: true", r"unknown setting\(s\) \['compile'\]"),  # a switch, not a setting
                        ("batch_size: true", "batch_size must be int, got True"),
                        ("batchsize: 4", r"unknown setting\(s\) \['batchsize'\] \('batchsize': did you mean "
                                         r"'batch_size'\?\)"),
                        ("strength: [0.5", r"(?s)bad\.yaml: the config file is not valid YAML: .*line 3")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"manifest: m.csv\noutput: out\n{line}\n")
        with pytest.raises(ConfigError, match=match):
            config_from_args(["--config", str(bad)])


def test_speed_switches_come_from_one_flag_over_the_config_file(tmp_path):
    """`--speed name=value` (repeatable, comma-separated) sets the speed section's switches over the config file's;
    `auto` gives a switch back to the device's default; a mistyped name or value is a ConfigError naming it."""
    from jobs.restyle import config_from_args
    from v2v.config import ConfigError, SpeedSettings

    conf = tmp_path / "job.yaml"
    conf.write_text("manifest: m.csv\noutput: out\nspeed: {compile: false, temporal_layers: false}\n")
    cfg, _ = config_from_args(["--config", str(conf), "--speed", "compile=on,cuda_graphs=off",
                               "--speed", "temporal_layers=auto"])
    assert cfg.speed == SpeedSettings(compile=True, cuda_graphs=False)
    assert config_from_args(["--manifest", "m", "--output", "o"])[0].speed == SpeedSettings()
    resolved = cfg.speed.resolved("cuda")
    assert (resolved.compile, resolved.cuda_graphs, resolved.temporal_layers, resolved.precompile) == (
        True, False, True, True)
    assert not any(getattr(SpeedSettings().resolved("cpu"), f) for f in ("compile", "temporal_layers", "precompile"))
    for bad, match in [("temporal_layer=off", r"unknown speed switch\(es\) \['temporal_layer'\]"),
                       ("compile=maybe", "want name=on|off|auto"), ("compile", "want name=on|off|auto")]:
        with pytest.raises(ConfigError, match=match):
            config_from_args(["--manifest", "m", "--output", "o", "--speed", bad])
