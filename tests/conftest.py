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
    from v2v.model.loading import load_components

    return load_components("tiny", cache_dir=cache_dir)


@pytest.fixture(autouse=True)
def _no_lasting_s3_faults(request):
    yield
    if "s3_network" in request.fixturenames:
        request.getfixturevalue("s3_network").clear()


@pytest.fixture(scope="session")
def s3_endpoint(s3_network):
    """The S3-compatible server's URL, as the jobs reach it (AWS_ENDPOINT_URL)."""
    return s3_network.url


@pytest.fixture(scope="session")
def s3_network():
    """A real S3-compatible server (moto in server mode) on localhost, reached through a proxy where tests can
    inject faults (tests.helpers.FaultyNetwork), credentials in the standard AWS environment variables. Started
    before the Ray cluster so that Ray's workers inherit them. The AWS client's own retries are off
    (AWS_MAX_ATTEMPTS=1): what rides out a fault here is v2v's own retrying. Tests inject faults through the
    returned tests.helpers.FaultyNetwork (cleared after each test)."""
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.helpers import FaultyNetwork, free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    network = FaultyNetwork(url)
    os.environ.update(AWS_ENDPOINT_URL=network.url, AWS_ACCESS_KEY_ID="v2v-test-key-id",
                      AWS_SECRET_ACCESS_KEY="v2v-test-secret-do-not-log", AWS_DEFAULT_REGION="us-east-1",
                      AWS_MAX_ATTEMPTS="1")
    yield network
    network.close()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster(cache_dir, s3_endpoint, tmp_path_factory):
    """One real Ray cluster for the session; this process joins it as a driver."""
    import tempfile

    import ray

    from tests.helpers import start_head, stop

    head = start_head(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a limit
    ray.init(address=head["address"], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield head
    ray.shutdown()
    stop()
