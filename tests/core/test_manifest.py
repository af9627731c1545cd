"""Manifest checks: every problem found before any model loads, named by row and field; hostile input."""

import dataclasses
import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v2v.config import JobConfig
from v2v.core.index import clip_path
from v2v.core.manifest import ManifestError, load_manifest
from v2v.core.storage import safe_name

CFG = JobConfig(manifest="x", output="y")


def _write(tmp_path, rows, name="m.parquet"):
    df = pd.DataFrame(rows)
    path = tmp_path / name
    {"parquet": df.to_parquet, "csv": lambda p: df.to_csv(p, index=False),
     "jsonl": lambda p: df.to_json(p, orient="records", lines=True)}[name.rsplit(".", 1)[1]](path)
    return str(path)


def test_normalizes_defaults_ids_and_relative_paths(tmp_path):
    t = load_manifest(_write(tmp_path, [{"video": "a/v.mp4", "prompt": "p", "tag": 1},
                                        {"video": "s3://b/w.mp4", "prompt": "q", "seed": 5, "strength": 0.3,
                                         "tag": 2}]), CFG)
    rows = t.to_pylist()
    assert rows[0]["video"] == str(tmp_path / "a/v.mp4") and rows[1]["video"] == "s3://b/w.mp4"
    assert rows[0]["strength"] == CFG.strength and rows[1]["strength"] == 0.3 and rows[1]["seed"] == 5
    assert rows[0]["id"].startswith("v-") and rows[1]["id"].startswith("w-") and rows[0]["tag"] == 1
    # stable: the same manifest gives the same ids, whatever the job's defaults for what the rows leave empty
    assert load_manifest(str(tmp_path / "m.parquet"), CFG)["id"].to_pylist() == t["id"].to_pylist()
    other_night = dataclasses.replace(CFG, guidance_scale=9.0, strength=0.5, steps=20, negative_prompt="blurry")
    assert load_manifest(str(tmp_path / "m.parquet"), other_night)["id"].to_pylist() == t["id"].to_pylist()
    # a row's own value is the row's identity
    moved = load_manifest(_write(tmp_path, [{"video": "a/v.mp4", "prompt": "p", "guidance_scale": 9.0, "tag": 1},
                                            {"video": "s3://b/w.mp4", "prompt": "q", "seed": 5, "strength": 0.3,
                                             "tag": 2}]), CFG)["id"].to_pylist()
    assert moved[0] != t["id"][0].as_py() and moved[1] == t["id"][1].as_py()


def test_identical_rows_get_distinct_ids(tmp_path):
    t = load_manifest(_write(tmp_path, [{"video": "v.mp4", "prompt": "p"}] * 2), CFG)
    a, b = t["id"].to_pylist()
    assert a != b and b == a + "-2"


def test_every_bad_row_is_listed_at_once(tmp_path):
    path = _write(tmp_path, [
        {"video": "ok.mp4", "prompt": "fine", "seed": 1, "strength": 0.5, "id": "a"},
        {"video": "v.mp4", "prompt": None, "seed": -3, "strength": 1.5, "id": "b"},
        {"video": None, "prompt": "x", "seed": 1, "strength": -0.5, "id": "c"},
        {"video": "v.mp4", "prompt": "y", "seed": 2, "strength": 0.5, "id": "a"},
    ])
    with pytest.raises(ManifestError) as e:
        load_manifest(path, CFG)
    msg = str(e.value)
    for expected in ["row 1 (id 'b'): prompt: missing", "row 1 (id 'b'): seed: -3", "row 1 (id 'b'): strength: 1.5",
                     "row 2 (id 'c'): video: missing", "row 2 (id 'c'): strength", "rows [0, 3]: duplicate id 'a'"]:
        assert expected in msg, expected
    assert "nothing was run" in msg


def test_missing_columns_and_default_prompt(tmp_path):
    with pytest.raises(ManifestError, match="'video' is missing"):
        load_manifest(_write(tmp_path, [{"prompt": "p"}]), CFG)
    path = _write(tmp_path, [{"video": "v.mp4"}], "m.csv")
    with pytest.raises(ManifestError, match="'prompt' is missing and no default prompt"):
        load_manifest(path, CFG)
    assert load_manifest(path, JobConfig(manifest="x", output="y", prompt="ink"))["prompt"].to_pylist() == ["ink"]
    with pytest.raises(ManifestError, match=r"column\(s\) \['status'\] are written by v2v"):
        load_manifest(_write(tmp_path, [{"video": "v.mp4", "prompt": "p", "status": "x"}]), CFG)


def test_ids_cannot_escape_the_output_root(tmp_path):
    hostile = ["../../etc/passwd", "/abs/path", "..%2F..%2Fx", "a/../../b", "%2e%2e", "..", "a\\..\\b", "\x00x"]
    for rid in hostile:
        rel = clip_path(rid, 0, "h264")
        assert rel.startswith("clips/") and ".." not in rel.split("/") and rel.count("/") == 2, (rid, rel)
    # two ids that map to the same folder are refused as duplicates
    with pytest.raises(ManifestError, match="map to the same folder"):
        load_manifest(_write(tmp_path, [{"video": "v.mp4", "prompt": "p", "id": "a/b"},
                                        {"video": "v.mp4", "prompt": "p", "id": "a_b"}]), CFG)


def test_huge_prompt_and_binary_junk_are_refused_clearly(tmp_path):
    with pytest.raises(ManifestError, match="prompt: 1000000 characters"):
        load_manifest(_write(tmp_path, [{"video": "v.mp4", "prompt": "x" * 1_000_000}]), CFG)
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"video,prompt\nv.mp4,\xff\xfe\x00\x81bad\n")
    with pytest.raises(ManifestError, match="junk.csv"):
        load_manifest(str(junk), CFG)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({
    "video": st.one_of(st.none(), st.text(max_size=30)),
    "prompt": st.one_of(st.none(), st.text(max_size=50)),
    "seed": st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(allow_nan=True)),
    "strength": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    "num_inference_steps": st.one_of(st.none(), st.integers(-5, 20000), st.floats()),
    "id": st.one_of(st.none(), st.text(max_size=20)),
}), min_size=1, max_size=6))
def test_fuzzed_rows_are_accepted_or_refused_clearly(tmp_path, rows):
    path = tmp_path / "fuzz.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True, default_handler=str)
    try:
        t = load_manifest(str(path), CFG)
    except ManifestError as e:
        assert "fuzz.jsonl" in str(e)
        return
    for r in t.to_pylist():  # what is accepted is valid
        assert 0 < r["strength"] <= 1 and r["num_inference_steps"] >= 1 and isinstance(r["prompt"], str)
        assert r["seed"] is None or 0 <= r["seed"] < 2**63
        assert not math.isnan(r["guidance_scale"])
        assert safe_name(r["id"], 120) not in ("", ".", "..")


@pytest.mark.slow
def test_million_row_manifest_plans_in_bounded_memory(tmp_path):
    """1,000,000 rows are checked in bounded memory: well under a GiB of Python objects on the driver."""
    import resource

    n = 1_000_000
    pd.DataFrame({"video": [f"v{i % 1000}.mp4" for i in range(n)], "prompt": "p",
                  "seed": range(n)}).to_parquet(tmp_path / "big.parquet")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = load_manifest(str(tmp_path / "big.parquet"), CFG)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert t.num_rows == n and len(set(t["id"].to_pylist()[:1000])) == 1000
    assert grown_mib < 2048, f"checking 1M rows grew the process by {grown_mib:.0f} MiB"
