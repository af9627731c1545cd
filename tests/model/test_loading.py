"""Model loading: the diffusers layout from a folder, an fsspec URI and `tiny`; safetensors only by default."""

import shutil

import fsspec
import pytest
import torch

from v2v.model.loading import ModelError, load_components, model_fingerprint, scheduler_class
from v2v.model.tiny import build_tiny_components, save_components


def test_tiny_loads_through_the_folder_layout(tiny):
    assert (tiny.folder / "model_index.json").exists()
    assert (tiny.folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert type(tiny.unet).__name__ == "UNet3DConditionModel"
    assert (tiny.width, tiny.height, tiny.frames) == (64, 64, 8)
    assert tiny.vae_scale_factor == 8
    # weights are the fixed-seed ones: building again gives the same tensors
    fresh = build_tiny_components()["unet"].state_dict()
    for k, v in tiny.unet.state_dict().items():
        assert torch.equal(v, fresh[k]), k


def test_text_to_video_folder_loads_too(tmp_path):
    save_components(build_tiny_components(), tmp_path / "m", pipeline_class="TextToVideoSDPipeline")
    c = load_components(str(tmp_path / "m"), scheduler="euler")
    assert type(c.scheduler).__name__ == "EulerDiscreteScheduler"
    assert c.scheduler.config.beta_end == 0.012  # built from the folder's config


def test_fsspec_uri_is_copied_once_into_cache(tiny, tmp_path):
    fs = fsspec.filesystem("memory")
    fs.put(str(tiny.folder), "/models/tiny", recursive=True)
    c = load_components("memory://models/tiny", cache_dir=tmp_path / "cache", dtype="bfloat16")
    assert c.folder.is_relative_to(tmp_path / "cache")
    assert c.unet.dtype == torch.bfloat16
    assert model_fingerprint(c.folder) == model_fingerprint(tiny.folder)
    assert load_components("memory://models/tiny", cache_dir=tmp_path / "cache").folder == c.folder  # not again
    # the model replaced at the same URI (another file, or one rewritten): another version, fetched again
    fs.pipe("/models/tiny/unet/extra.txt", b"a new file")
    again = load_components("memory://models/tiny", cache_dir=tmp_path / "cache").folder
    assert again != c.folder and (again / "unet" / "extra.txt").exists()
    fs.rm("/models/tiny", recursive=True)  # the store lost it (or cannot be read): the copy fetched last
    assert load_components("memory://models/tiny", cache_dir=tmp_path / "cache").folder == again


# One of several restyle actors starting together on a machine: each fetches the model (or a LoRA) as it starts.
_FETCH = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from v2v.model.adapters import fetch
from v2v.model.loading import resolve_model
print("READY", flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
got = resolve_model(sys.argv[2]) if sys.argv[1] == "model" else fetch(sys.argv[2])
print("GOT", got, flush=True)
"""


@pytest.mark.parametrize("kind", ["model", "adapter"])
def test_the_actors_of_one_machine_fetch_a_remote_file_once(tiny, tmp_path, s3_endpoint, kind):
    """Four processes fetch the same model folder (or LoRA file) on an S3-compatible server at the same moment into
    one cache: one fetches it (a 30 GB model fetched once per GPU would multiply the download and fill the disk),
    the others wait and use its copy."""
    import os
    import subprocess
    import sys

    import s3fs

    from tests.helpers import REPO

    s3 = s3fs.S3FileSystem()
    s3.mkdir(f"v2v-{kind}s")
    if kind == "model":
        s3.put(str(tiny.folder), f"v2v-{kind}s/tiny", recursive=True)
        uri = f"s3://v2v-{kind}s/tiny"
    else:
        s3.put_file(str(tiny.folder / "unet" / "diffusion_pytorch_model.safetensors"), f"v2v-{kind}s/ink.safetensors")
        uri = f"s3://v2v-{kind}s/ink.safetensors"
    go = tmp_path / "go"
    env = {**os.environ, "V2V_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _FETCH, kind, uri, str(go)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:  # every one imported and waiting: then all start at once
        assert p.stdout.readline().strip() == "READY"
    go.touch()
    outs = [(p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(code == 0 for _, code in outs), [err[-2000:] for (_, err), _ in outs]
    got = {ln.split(" ", 1)[1] for (out, _), _ in outs for ln in out.splitlines() if ln.startswith("GOT")}
    assert len(got) == 1 and got.pop().startswith(str(tmp_path / "cache"))
    assert sum(err.count("fetching it into") for (_, err), _ in outs) == 1
    assert not list((tmp_path / "cache").rglob(".build-*")) and not list((tmp_path / "cache").rglob("*.part"))


def test_fingerprint_is_cached_until_a_file_changes(tiny, tmp_path):
    import shutil as sh

    m = tmp_path / "m"
    sh.copytree(tiny.folder, m)
    first = model_fingerprint(m, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c" / "fingerprints").iterdir())) == 1
    assert model_fingerprint(m, cache_dir=tmp_path / "c") == first
    (m / "scheduler" / "scheduler_config.json").write_text("{}")  # changed content: hashed again
    assert model_fingerprint(m, cache_dir=tmp_path / "c") != first


def test_missing_component_is_named(tiny, tmp_path):
    shutil.copytree(tiny.folder, tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(ModelError, match=r"missing component\(s\) \['vae'\]"):
        load_components(str(tmp_path / "m"))


def test_pickled_weights_refused_unless_allowed(tiny, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(tiny.folder, m)
    sd = tiny.unet.state_dict()
    (m / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, m / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickled weights"):
        load_components(str(m))
    c = load_components(str(m), allow_pickle=True)
    assert torch.equal(c.unet.state_dict()["conv_in.weight"], sd["conv_in.weight"])


def test_unknown_model_and_scheduler(tmp_path):
    with pytest.raises(ModelError, match="no such folder"):
        load_components(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="scheduler 'warp' is unknown"):
        scheduler_class("warp")
    with pytest.raises(ModelError, match="not fetchable"):
        load_components("someorg/somemodel", cache_dir=tmp_path)  # HF_HUB_OFFLINE=1 in tests


def test_check_model_refuses_what_no_actor_could_load(tiny, tmp_path):
    """The driver's check before a job runs: no weights read, nothing downloaded."""
    from v2v.model.loading import check_model

    for ok in ("tiny", str(tiny.folder), f"file://{tiny.folder}", "someorg/somemodel"):
        check_model(ok, "dpm")
    with pytest.raises(ModelError, match="no such folder"):
        check_model(str(tmp_path / "typo"))
    with pytest.raises(ModelError, match="no model_index.json there"):
        check_model(str(tmp_path))  # a folder, but not a diffusers one
    with pytest.raises(ModelError, match="scheduler 'dpm2' is unknown"):
        check_model("tiny", "dpm2")


def test_the_model_index_picks_the_family_and_its_schedulers(tmp_path):
    """`--model` picks the backbone from the folder's model_index.json: a Wan folder loads as WanComponents (with
    its geometry and the job's parts), and schedulers are checked against the family at the driver."""
    from v2v.model.loading import WAN, ZEROSCOPE, check_model, make_scheduler, model_geometry, model_version
    from v2v.model.tiny import TINY_WAN_FRAMES, TINY_WAN_SIZE, tiny_wan_dir
    from v2v.model.wan import WanComponents

    folder = tiny_wan_dir(tmp_path)
    assert check_model(str(folder)) is WAN and check_model("tiny-wan", "flow-euler") is WAN
    assert check_model("tiny", "unipc") is ZEROSCOPE
    assert model_version("tiny-wan") != model_version("tiny")  # a rebuilt tiny-wan renders its clips again
    assert model_geometry(str(folder)) == model_geometry("tiny-wan") == (TINY_WAN_SIZE, TINY_WAN_SIZE, TINY_WAN_FRAMES)
    (folder / "v2v.json").unlink()  # without it: the family's own, 832x480, 81 frames
    assert model_geometry(str(folder)) == (832, 480, 81)
    with pytest.raises(ModelError, match=r"scheduler 'ddim' \(DDIMScheduler\) cannot run a wan model .*'flow-euler'"):
        check_model(str(folder), "ddim")
    with pytest.raises(ModelError, match=r"scheduler 'flow-euler' .* cannot run a zeroscope model"):
        check_model("tiny", "flow-euler")
    c = load_components(str(folder), scheduler="flow-euler")
    assert isinstance(c, WanComponents) and c.family is WAN and (c.width, c.height, c.frames) == (832, 480, 81)
    assert type(c.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and c.scheduler.config.shift == 3.0
    assert c.sha256 == model_fingerprint(folder) and c.dtype == torch.float32
    dpm = make_scheduler(c.scheduler, "dpm")  # back to a multistep solver: flow sigmas and the shift carry over
    assert dpm.config.use_flow_sigmas and dpm.config.flow_shift == 3.0
    assert dpm.config.prediction_type == "flow_prediction"
    with pytest.raises(ModelError, match=r"Wan models load from safetensors only"):
        load_components(str(folder), allow_pickle=True)
    shutil.rmtree(folder / "transformer")
    with pytest.raises(ModelError, match=r"missing component\(s\) \['transformer'\]; a wan model needs"):
        load_components(str(folder))


def test_job_stops_at_a_mistyped_model_before_it_runs(tmp_path):
    """Before: the path passed the driver (planned with the zeroscope geometry) and failed in every actor."""
    from v2v.config import JobConfig
    from v2v.job.pipeline import run_job

    cfg = JobConfig(manifest=str(tmp_path / "absent.csv"), output=str(tmp_path / "out"), model=str(tmp_path / "typo"))
    with pytest.raises(ModelError, match="typo'?: no such folder"):
        run_job(cfg, log=lambda m: None)
    assert not (tmp_path / "out").exists()
