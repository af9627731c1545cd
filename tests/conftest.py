import os
import secrets
import warnings

import pytest

# Tests never touch the network: hub lookups must come from the local cache or fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray reads its auth settings when first imported: set them before anything imports ray.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
warnings.filterwarnings("ignore", message=".*VideoToVideoSDPipeline has been deprecated.*")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2v-cache")
    os.environ["V2V_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny(cache_dir):
    from v2v.models import load_components

    return load_components("tiny", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def ray_cluster(cache_dir, tmp_path_factory):
    """One real Ray cluster for the session; this process joins it as a driver."""
    import ray

    from tests.cluster import start_head, stop_all

    import tempfile

    head = start_head(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a limit
    ray.init(address=head["address"], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield head
    ray.shutdown()
    stop_all()
