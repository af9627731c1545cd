"""cluster/: each file parses, matches the project's Ray, and its entrypoint is accepted by the real CLI."""

import os
import re
import shlex

import ray
import yaml

from jobs.restyle import config_from_args
from tests.helpers import REPO

CLUSTER = os.path.join(REPO, "cluster")


def _load(name):
    with open(os.path.join(CLUSTER, name)) as f:
        return yaml.safe_load(f)


def test_rayjob_manifest():
    job = _load("rayjob.yaml")
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1  # a preempted head's job is retried on a new cluster, and resumes
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__  # pinned to the project's Ray
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    # the GPU group scales between its bounds: only with KubeRay's autoscaler on
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True and group["minReplicas"] < group["maxReplicas"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # the cache the image's V2V_CACHE names (models, compiled kernels) is on the node's disk
    with open(os.path.join(CLUSTER, "Dockerfile")) as f:
        cache = re.search(r"V2V_CACHE=(\S+)", f.read()).group(1)
    pod = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    mount = next(m for m in workers["volumeMounts"] if m["mountPath"] == cache)
    assert next(v for v in pod["volumes"] if v["name"] == mount["name"])["hostPath"]["path"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.restyle"]
    cfg, _ = config_from_args(argv[3:])  # the real parser and validation
    assert cfg.manifest.startswith("s3://") and cfg.model.startswith("s3://") and cfg.max_failures == 0.01
    assert cfg.shared_compile_cache.startswith("s3://")  # nodes the autoscaler adds fetch what one compiled


def test_cluster_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load("aws.yaml")
    validate_config(prepare_config(cfg))  # fills defaults as `ray up` does, then raises on schema errors
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}


def test_runtime_env_and_dockerfile():
    env = _load("runtime_env.yaml")
    assert env["working_dir"] == "." and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    # the compile cache stays where the image and the RayJob's node volume put it
    assert "V2V_CACHE" not in env["env_vars"]
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation of the fields
    text = open(os.path.join(CLUSTER, "Dockerfile")).read()
    base = re.search(r"^FROM rayproject/ray:(\S+)", text, re.M).group(1)
    assert base.startswith(ray.__version__ + "-")
    repo = os.path.dirname(CLUSTER)
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert os.path.exists(os.path.join(repo, path)), path


def test_grafana_dashboard_plots_every_metric_the_actors_report():
    import json

    from v2v.job import metrics

    with open(os.path.join(CLUSTER, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    queries = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    reported = re.findall(r"^    (v2v_\w+)\{", metrics.__doc__, re.M)
    assert len(reported) == 5
    for name in reported:  # Prometheus sees them with Ray's prefix; a counter with _total, a histogram's buckets
        assert re.search(rf"ray_{name}(_total|_bucket)?\b", queries), name
