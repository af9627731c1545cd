"""Manifest checks: every problem found before any model loads, named by row and field; hostile input."""

import dataclasses
import json
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


@pytest.mark.parametrize("name", ["m.parquet", "m.csv", "m.jsonl"])
def test_a_seed_past_a_floats_53_bits_is_kept_exactly(tmp_path, name):
    """The index's derived seeds are 63-bit: one copied from it into a manifest row must run that clip again."""
    seeds = [2**63 - 1, 6498698291411534764, 2**53 + 1, 7]
    path = _write(tmp_path, [{"video": f"v{i}.mp4", "prompt": "p", "seed": s} for i, s in enumerate(seeds)], name)
    assert load_manifest(path, CFG)["seed"].to_pylist() == seeds


def test_identical_rows_get_distinct_ids(tmp_path):
    t = load_manifest(_write(tmp_path, [{"video": "v.mp4", "prompt": "p"}] * 2), CFG)
    a, b = t["id"].to_pylist()
    assert a != b and b == a + "-2"


@pytest.mark.parametrize("name, first", [("m.parquet", "m.parquet row {}"), ("m.csv", "m.csv line {}"),
                                         ("m.jsonl", "m.jsonl line {}")])
def test_every_bad_row_is_listed_at_once_where_its_user_sees_it(tmp_path, name, first):
    path = _write(tmp_path, [
        {"video": "ok.mp4", "prompt": "fine", "seed": 1, "strength": 0.5, "id": "a"},
        {"video": "v.mp4", "prompt": None, "seed": -3, "strength": 1.5, "id": "b"},
        {"video": None, "prompt": "x", "seed": 1, "strength": -0.5, "id": "c"},
        {"video": "v.mp4", "prompt": "y", "seed": 2, "strength": 0.5, "id": "a"},
    ], name)
    # Parquet rows count from 0, as pandas does; a CSV's header is its line 1, a JSON Lines file's first row is.
    at = {"m.parquet": lambda i: i, "m.csv": lambda i: i + 2, "m.jsonl": lambda i: i + 1}[name]
    where = [first.format(at(i)) for i in range(4)]
    with pytest.raises(ManifestError) as e:
        load_manifest(path, CFG)
    msg = str(e.value)
    for expected in [f"{where[1]} (id 'b'): prompt: missing", f"{where[1]} (id 'b'): seed: -3",
                     f"{where[1]} (id 'b'): strength: 1.5 is out of range: strength must be in (0, 1]",
                     f"{where[2]} (id 'c'): video: missing", f"{where[2]} (id 'c'): strength",
                     f"{where[0]}, {where[3]}: duplicate id 'a'"]:
        assert expected in msg, (expected, msg)
    assert "nothing was run" in msg


def test_a_json_file_may_hold_one_array_of_rows(tmp_path):
    """`.json` holds JSON Lines or one array of row objects (what most tools write); the array's rows are named by
    their place in it, a key that only a later row has is a column, and a column of mixed types is checked row by
    row, not refused whole."""
    rows = [{"video": "a.mp4", "prompt": "ink", "seed": 2**63 - 1, "lora": [{"uri": "s.safetensors"}]},
            {"video": "b.mp4", "prompt": "oil", "seed": 3.0, "strength": 0.4}]
    (tmp_path / "m.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in rows))  # the same rows, one a line
    t = load_manifest(str(tmp_path / "m.json"), CFG)
    assert t.select(["video", "seed", "strength", "lora"]).to_pylist() == load_manifest(
        str(tmp_path / "lines.jsonl"), CFG).select(["video", "seed", "strength", "lora"]).to_pylist()
    assert t["seed"].to_pylist() == [2**63 - 1, 3]  # 3.0 beside it did not make the column floats
    assert json.loads(t["lora"][0].as_py())[0]["uri"].endswith("s.safetensors")
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "a.mp4", "prompt": "p", "seed": "soon"},
                                                   {"video": "b.mp4", "prompt": "p", "seed": 4, "strength": 2}]))
    with pytest.raises(ManifestError) as e:
        load_manifest(str(tmp_path / "bad.json"), CFG)
    assert "bad.json [0]: seed: 'soon' is not an integer" in str(e.value)
    assert "bad.json [1]: strength: 2 is out of range" in str(e.value)
    (tmp_path / "junk.json").write_text(json.dumps([{"video": "a.mp4", "prompt": "p"}, "b.mp4"]))
    with pytest.raises(ManifestError, match=r"junk.json: cannot be read as json \(item\(s\) \[1\] are not objects"):
        load_manifest(str(tmp_path / "junk.json"), CFG)


def test_json_lines_are_read_line_by_line(tmp_path):
    """A JSON Lines file's lines are each their own row: a line that is not a JSON object is named by its number
    (blank lines counted, as an editor counts them); a column whose type changes between lines is checked row by
    row, not refused whole."""
    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4", "prompt": "p"}\n\n{"video": "b.mp4", prompt: "q"}\n'
                                      '["c.mp4"]\n{"video": "d.mp4", "prompt": "r"}\n')
    with pytest.raises(ManifestError) as e:
        load_manifest(str(tmp_path / "m.jsonl"), CFG)
    assert "m.jsonl: cannot be read as json (line 3: not JSON (" in str(e.value)
    assert "line 4: a list, not an object" in str(e.value) and "line 5" not in str(e.value)
    (tmp_path / "mixed.jsonl").write_text('{"video": "a.mp4", "prompt": "p", "strength": "0.25"}\n'
                                          '{"video": "b.mp4", "prompt": "q", "strength": 0.5}\n'
                                          '{"video": "c.mp4", "prompt": "r", "strength": "half"}\n')
    with pytest.raises(ManifestError) as e:
        load_manifest(str(tmp_path / "mixed.jsonl"), CFG)
    assert "mixed.jsonl line 3: strength: 'half' is not a number" in str(e.value)
    assert "line 1" not in str(e.value) and "line 2" not in str(e.value)
    (tmp_path / "mixed.jsonl").write_text('{"video": "a.mp4", "prompt": "p", "strength": "0.25"}\n'
                                          '{"video": "b.mp4", "prompt": "q", "strength": 0.5}\n')
    assert load_manifest(str(tmp_path / "mixed.jsonl"), CFG)["strength"].to_pylist() == [0.25, 0.5]


def test_a_partitioned_folder_gives_its_partition_values_as_columns(tmp_path):
    """A manifest folder written by Spark or pyarrow with partition folders (`night=.../style=.../part-0.parquet`):
    each row gets its folders' values as columns (unescaped; Hive's null placeholder as null), a file's own column
    of the same name wins, and the writer's marker files are not manifests."""
    root = tmp_path / "manifest"
    for style, rows in {"ink": [{"video": "/v/a.mp4", "prompt": "ink wash"}],
                        "oil%20paint": [{"video": "/v/b.mp4", "prompt": "oil"}, {"video": "/v/c.mp4", "prompt": "oil"}],
                        "__HIVE_DEFAULT_PARTITION__": [{"video": "/v/d.mp4", "prompt": "plain"}]}.items():
        folder = root / "night=2026-12-08" / f"style={style}"
        folder.mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(folder / "part-00000-1234.snappy.parquet")
    own = root / "night=2026-12-08" / "style=ink" / "extra.csv"
    own.write_text("video,prompt,style\n/v/e.mp4,ink,sumi-e\n")
    (root / "_SUCCESS").write_text("")
    t = load_manifest(str(root), CFG)
    got = sorted(zip(t["video"].to_pylist(), t["style"].to_pylist(), t["night"].to_pylist()))
    assert got == [("/v/a.mp4", "ink", "2026-12-08"), ("/v/b.mp4", "oil paint", "2026-12-08"),
                   ("/v/c.mp4", "oil paint", "2026-12-08"), ("/v/d.mp4", None, "2026-12-08"),
                   ("/v/e.mp4", "sumi-e", "2026-12-08")]


def test_csv_lines_count_values_that_span_lines(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('video,prompt,strength\nv.mp4,"two\nlines",0.5\nw.mp4,p,7.5\n')
    with pytest.raises(ManifestError, match=r"m.csv line 4: strength: 7.5 is out of range"):
        load_manifest(str(path), CFG)


def test_a_column_named_close_to_a_known_one_is_flagged(tmp_path, caplog):
    path = _write(tmp_path, [{"video": "v.mp4", "prompt": "p", "sede": 3, "Strenght": 0.2, "style_tag": "x"}])
    with caplog.at_level("WARNING", logger="v2v"):
        t = load_manifest(path, CFG)
    warned = [r.getMessage() for r in caplog.records]
    assert any("column 'sede' is not used; did you mean 'seed'?" in m for m in warned), warned
    assert any("column 'Strenght' is not used; did you mean 'strength'?" in m for m in warned), warned
    assert not any("style_tag" in m for m in warned)  # a column of the user's own, not a near miss
    assert t["sede"].to_pylist() == [3] and t["seed"].to_pylist() == [None]  # passed through, not used
    strict = JobConfig(manifest="x", output="y", strict_columns=True)
    with pytest.raises(ManifestError, match=r"m.parquet: column 'sede' is not used; did you mean 'seed'\? "
                                            r"\(--strict-columns\)"):
        load_manifest(path, strict)


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


def test_adapter_columns_are_checked_and_resolved(tmp_path):
    lora = [{"uri": "styles/ink.safetensors", "scale": 0.8}]
    rows = [{"video": "v.mp4", "prompt": "a <ink> fox", "lora": json.dumps(lora),
             "embeddings": '[{"uri": "s3://b/ink.safetensors", "token": "<ink>"}]'},
            {"video": "v.mp4", "prompt": "plain", "lora": None, "embeddings": None}]
    t = load_manifest(_write(tmp_path, rows, "m.csv"), CFG).to_pylist()
    assert json.loads(t[0]["lora"]) == [{"uri": str(tmp_path / "styles/ink.safetensors"), "scale": 0.8}]
    assert json.loads(t[0]["embeddings"]) == [{"uri": "s3://b/ink.safetensors", "token": "<ink>"}]
    assert t[1]["lora"] == "" and t[1]["embeddings"] == ""
    # the job's flags fill rows that give none
    job = JobConfig(manifest="x", output="y", lora='[{"uri": "/a.safetensors"}]')
    t = load_manifest(_write(tmp_path, rows[1:], "m.csv"), job).to_pylist()
    assert json.loads(t[0]["lora"]) == [{"uri": "/a.safetensors", "scale": 1.0}]
    bad = [{"video": "v.mp4", "prompt": "p", "lora": "{not json"},
           {"video": "v.mp4", "prompt": "p", "lora": '[{"uri": "a.safetensors", "scale": "high"}]'},
           {"video": "v.mp4", "prompt": "p", "lora": '[{"path": "a.safetensors"}]'},
           {"video": "v.mp4", "prompt": "a fox", "embeddings": '[{"uri": "e.safetensors", "token": "<ink>"}]'}]
    with pytest.raises(ManifestError) as e:
        load_manifest(_write(tmp_path, bad, "m.jsonl"), CFG)
    for expected in ["m.jsonl line 1: lora: not JSON", 'm.jsonl line 2: lora: "scale" must be a finite number',
                     'm.jsonl line 3: lora: each item needs a "uri" string',
                     "m.jsonl line 4: embeddings: token '<ink>' is not in the prompt"]:
        assert expected in str(e.value), (expected, str(e.value))


def test_a_rows_scheduler_is_checked_and_named_by_its_class(tmp_path):
    rows = [{"video": "v.mp4", "prompt": "p", "scheduler": "dpm"},
            {"video": "v.mp4", "prompt": "q", "scheduler": "EulerAncestralDiscreteScheduler"},
            {"video": "v.mp4", "prompt": "r", "scheduler": None}]
    t = load_manifest(_write(tmp_path, rows, "m.csv"), CFG).to_pylist()
    assert [r["scheduler"] for r in t] == ["DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", None]
    bad = [{"video": "v.mp4", "prompt": "p", "scheduler": "dpm"}, {"video": "v.mp4", "prompt": "p", "scheduler": "ddpm"}]
    with pytest.raises(ManifestError, match=r"m.csv line 3: scheduler: 'ddpm' is unknown; choose one of \["):
        load_manifest(_write(tmp_path, bad, "m.csv"), CFG)


def test_a_rows_own_scheduler_is_in_its_work_key_and_rows_without_keep_theirs():
    from v2v.core.index import work_key

    clip = {"video": "v.mp4", "start_frame": 0, "num_frames": 8, "prompt": "p", "seed": 1, "strength": 0.6}
    job = {"model": "tiny", "scheduler": None}
    plain = work_key(clip, job)
    assert work_key({**clip, "scheduler": None}, job) == plain == work_key({**clip, "scheduler": ""}, job)
    dpm = work_key({**clip, "scheduler": "DPMSolverMultistepScheduler"}, job)
    assert dpm != plain and dpm != work_key({**clip, "scheduler": "DDIMScheduler"}, job)
