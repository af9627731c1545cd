"""The preview page at a night's size, in a real headless Chromium over HTTP (as from a bucket's website)."""

import functools
import http.server
import threading

import numpy as np
from PIL import Image

from tests.helpers import browser_dom, free_port
from v2v.core.preview import PREVIEW_DIR, page


def test_a_page_of_many_videos_fetches_only_the_strips_near_the_view(tmp_path):
    """A night's page lists thousands of videos: the browser fetches the strips in and near the view, not every
    one of them (gigabytes at a night's size), and those it fetched load."""
    folder = tmp_path / PREVIEW_DIR
    folder.mkdir()
    n = 600
    strip = Image.fromarray(np.full((128, 192, 3), 90, np.uint8))
    videos = []
    for i in range(n):
        strip.save(folder / f"v{i}.jpg", quality=85)
        videos.append({"id": f"v{i}", "strip": f"{PREVIEW_DIR}/v{i}.jpg", "status": "ok", "clips": "2 ok",
                       "prompt": "ink", "strength": 0.6, "steps": 40, "guidance": 15.0, "seed": i, "errors": [],
                       "flicker": 1.0, "ssim": 0.5, "blank": 0})
    (folder / "index.html").write_text(page(videos, "night"))

    fetched = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # each request counted, not printed
            if self.path.endswith(".jpg"):
                fetched.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()),
                                             functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # as a browser with a window does: headless Chromium turns lazy loading off unless told, and lays out (where
        # the view is) only with every compositor stage run
        dom = browser_dom(f"http://127.0.0.1:{server.server_address[1]}/index.html",
                          flags=("--blink-settings=lazyLoadEnabled=true", "--run-all-compositor-stages-before-draw",
                                 "--window-size=1280,800"))
    finally:
        server.shutdown()
    assert dom.count("<img ") == n and 'data-broken-images="0"' in dom
    assert 0 < len(fetched) < n / 4, len(fetched)
    assert "/v0.jpg" in fetched and f"/v{n - 1}.jpg" not in fetched
