import os
import warnings

import pytest

# Tests never touch the network: hub lookups must come from the local cache or fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
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
