"""Stored compiled parts (v2v.speed.stored) and the shared compile cache (v2v.speed.shared_cache) on a small module."""

import contextlib
import os
from pathlib import Path

import pytest
import torch


class _SmallHead(torch.nn.Module):
    """A 1x1 convolution to 4 channels: inductor writes a bias of 4 values into its kernel as literals."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return torch.nn.functional.silu(self.conv(x))


def _head_part(head, folder, shared=None):
    """`head` as a stored part kept in `folder`, no fallback. shared: a v2v.speed.shared_cache.SharedCache for it."""
    from v2v.speed.stored import StoredPart, part_tensors

    return StoredPart(head, part_tensors, "head", {"model": "a"}, folder, fallback=None, shared=shared)


def _stored_head(tmp_path, shared=None):
    """A small head, an input, the head as a stored part, its first call's output (which stored it) and the file it
    stored. shared: a v2v.speed.shared_cache.SharedCache for the part."""
    torch.manual_seed(0)
    head = _SmallHead().eval()
    x = torch.randn(2, 8, 4, 4)
    part = _head_part(head, tmp_path, shared)
    with torch.no_grad():
        first = part(x)
    (saved,) = tmp_path.glob("head-*.dynamo")
    return head, x, part, first, saved


@contextlib.contextmanager
def _machine(tmp_path, shared_uri: str):
    """Within: as on another machine, inductor's kernels go to a compile cache of their own (none of this process's
    compiled kernels kept in memory). Yields the folder for saved functions (`precompiled`, as the job puts them)
    and the machine's view of the shared cache."""
    from torch._inductor.utils import fresh_cache

    from v2v.speed.shared_cache import SharedCache

    with fresh_cache(dir=str(tmp_path), delete=False):
        root = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
        yield root / "precompiled", SharedCache(shared_uri, root)


def _members(archive) -> list[str]:
    import tarfile

    with tarfile.open(archive) as tar:
        return sorted(tar.getnames())


@pytest.mark.slow
def test_shared_cache_archive_is_completed_by_a_machine_that_fetched_part_of_it(tmp_path):
    """A machine whose cache already held some kernels puts an archive without them; the next machine fetches it,
    compiles what it lacked and puts the archive back whole, so the machine after that compiles nothing."""
    import tarfile

    shared = tmp_path / "shared"
    with _machine(tmp_path, str(shared)) as (folder, cache):
        head, x, part, first, saved = _stored_head(folder, cache)
        assert sorted(cache.files()) == _members(next(shared.glob("head-*.tar")))  # all it compiled for the part
    (archive,) = shared.glob("head-*.tar")
    whole = _members(archive)
    assert f"precompiled/{saved.name}" in whole and len(whole) > 1  # the saved function and its kernels
    with tarfile.open(archive) as tar, tarfile.open(tmp_path / "part.tar", "w") as cut:  # the function alone
        m = tar.getmember(f"precompiled/{saved.name}")
        cut.addfile(m, tar.extractfile(m))
    os.replace(tmp_path / "part.tar", archive)

    with _machine(tmp_path, str(shared)) as (folder, cache), torch.no_grad():
        b = _head_part(head, folder, cache)
        torch.testing.assert_close(b(x), first, rtol=0, atol=0)
    assert b.fetched and not b.built
    completed = _members(archive)  # put back with the kernels machine b compiled for it
    assert len(completed) > 1 and f"precompiled/{saved.name}" in completed

    with _machine(tmp_path, str(shared)) as (folder, cache), torch.no_grad():
        c = _head_part(head, folder, cache)
        torch.testing.assert_close(c(x), first, rtol=0, atol=0)
        assert c.fetched and sorted(cache.files()) == completed  # it wrote nothing of its own: nothing compiled
    assert _members(archive) == completed  # and, having compiled nothing, put nothing back


def _escaping_archive(path):
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        m = tarfile.TarInfo("../outside.py")
        m.size = 4
        tar.addfile(m, io.BytesIO(b"boom"))


@pytest.mark.parametrize("bad", ["cut short", "escapes the cache"])
def test_shared_cache_archive_that_cannot_be_used_costs_a_warning_and_a_compile(tmp_path, caplog, bad):
    shared = tmp_path / "shared"
    with _machine(tmp_path, str(shared)) as (folder, cache):
        head, x, _, first, _ = _stored_head(folder, cache)
    (archive,) = shared.glob("head-*.tar")
    if bad == "cut short":  # an interrupted copy into a shared folder
        archive.write_bytes(archive.read_bytes()[:3000])
    else:
        _escaping_archive(archive)
    with _machine(tmp_path, str(shared)) as (folder, cache), torch.no_grad(), caplog.at_level("WARNING"):
        b = _head_part(head, folder, cache)
        torch.testing.assert_close(b(x), first, rtol=0, atol=0)
        assert _members(archive) == sorted(cache.files())  # replaced by what machine b built
    assert archive.name in caplog.text and "compiling here instead" in caplog.text
    assert b.built and not b.fetched and not (tmp_path / "outside.py").exists()


def test_stored_part_runs_on_the_module_weights_and_is_keyed_by_the_model(tmp_path):
    from v2v.speed.stored import StoredPart, part_tensors

    head, x, part, first, saved = _stored_head(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(first, head(x))
        # it reads the module's own weight tensor (shared, not a copy): an in-place update shows
        head.conv.weight.mul_(2)
        torch.testing.assert_close(part(x), head(x))
        # a later start with the same key loads what was stored instead of compiling
        again = _head_part(head, tmp_path)
        torch.testing.assert_close(again(x), head(x))
        assert not again.built and again.failed is None
        # other weights (a fine-tune of the same architecture) are another model, another input shape another
        # call: each its own file
        head.conv.bias.add_(1)
        other = StoredPart(head, part_tensors, "head", {"model": "b"}, tmp_path, fallback=None)
        torch.testing.assert_close(other(x), head(x))
        torch.testing.assert_close(other(x[:1]), head(x[:1]))
    assert len(other.built) == 2 and len(list(tmp_path.glob("head-*.dynamo"))) == 3 and saved.exists()
    # readable like any file made here (the lock beside it follows the umask), not torch's private 0600
    assert saved.stat().st_mode & 0o777 == saved.with_suffix(".lock").stat().st_mode & 0o777 != 0o600


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x * 3  # a branch on values: a whole-graph trace cannot take it


def test_stored_part_that_cannot_be_traced_whole_runs_through_the_fallback(tmp_path, caplog):
    from v2v.speed.stored import StoredPart, part_tensors

    m = _DataDependent()
    part = StoredPart(m, part_tensors, "branchy", {"model": "a"}, tmp_path, fallback=m.forward)
    x = torch.ones(3)
    with caplog.at_level("WARNING"):
        assert torch.equal(part(x), x * 2) and torch.equal(part(-x), -x * 3)
    assert part.failed and "branchy" in caplog.text and "torch.compile instead" in caplog.text
    assert not list(tmp_path.glob("*.dynamo"))  # nothing half-written left behind


def test_stored_part_key_names_what_the_part_depends_on(tmp_path, monkeypatch):
    from v2v.speed.stored import part_key as package_key

    x = torch.zeros(2, 3)
    key = package_key({"model": "a"}, [x])
    assert package_key({"model": "b"}, [x]) != key  # other weights
    assert package_key({"model": "a"}, [torch.zeros(2, 4)]) != key  # another shape
    assert package_key({"model": "a"}, [torch.zeros(3, 2).t()]) != key  # same shape, another layout
    assert package_key({"model": "a"}, [x.half()]) != key  # another dtype
    assert package_key({"model": "a"}, [torch.ones(2, 3)]) == key  # values do not matter
    # inductor's variables: where its caches live and its threads are per machine; a tuning setting is another part
    for name, value in [("TORCHINDUCTOR_CACHE_DIR", str(tmp_path)), ("TORCHINDUCTOR_FX_GRAPH_CACHE", "0"),
                        ("TORCHINDUCTOR_COMPILE_THREADS", "1")]:
        monkeypatch.setenv(name, value)
    assert package_key({"model": "a"}, [x]) == key
    monkeypatch.setenv("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING", "1")
    assert package_key({"model": "a"}, [x]) != key


def test_stored_part_key_names_the_code_it_runs(tmp_path, monkeypatch):
    """A stored part keeps only its input guards: v2v code or a diffusers release that changes what it traces must
    give another key, or an upgraded fleet would run the old parts."""
    import ast

    import diffusers

    from v2v.speed import stored as aot

    # every v2v module the switches bring in is either traced (in the key) or named here as not traced
    not_traced = {"v2v.config": "the switches' settings", "v2v.model.loading": "the cache folder's default",
                  "v2v.speed.shared_cache": "where parts are shared", "v2v.model.sampler": "warm_up's timestep",
                  "v2v.speed.cuda_graph": "replays the part, outside it",
                  "v2v.model.wan": "the Wan warm-up's text length (no Wan part is stored)"}
    tree = ast.parse(Path(aot.__file__).with_name("__init__.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("v2v.")}
    imported |= {f"v2v.speed.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and n.module == "v2v.speed" for a in n.names}
    assert "v2v.speed.upsample" in imported and "v2v.speed.shared_prefix" in imported
    assert imported - set(aot.TRACED_MODULES) == set(not_traced)
    # a change to a traced module's source, and another diffusers, are other keys
    pkg = tmp_path / "tracedpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layer.py").write_text("def f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = aot.code_digest(("tracedpkg.layer",))
    (pkg / "layer.py").write_text("def f(x):\n    return x + 2\n")
    aot.code_digest.cache_clear()
    assert aot.code_digest(("tracedpkg.layer",)) != first
    # comments and docstrings alone are not code: the same key, nothing compiled again
    second = aot.code_digest(("tracedpkg.layer",))
    (pkg / "layer.py").write_text('"""A layer."""\n\n\ndef f(x):\n    """Adds two."""\n    return x + 2  # why\n')
    aot.code_digest.cache_clear()
    assert aot.code_digest(("tracedpkg.layer",)) == second
    x = torch.zeros(2, 3)
    key = aot.part_key({"model": "a"}, [x])
    monkeypatch.setattr(diffusers, "__version__", "0.0.1")
    aot.code_digest.cache_clear()
    assert aot.part_key({"model": "a"}, [x]) != key
    monkeypatch.undo()
    aot.code_digest.cache_clear()
    assert aot.part_key({"model": "a"}, [x]) == key


def test_precompiled_file_that_does_not_load_is_compiled_again(tmp_path, caplog):
    head, x, _, _, saved = _stored_head(tmp_path)
    with torch.no_grad():
        saved.write_bytes(saved.read_bytes()[:1000])  # cut short (a full disk, an interrupted copy)
        part = _head_part(head, tmp_path)
        with caplog.at_level("WARNING"):
            torch.testing.assert_close(part(x), head(x))
    assert part.built == [saved] and part.failed is None and saved.name in caplog.text
    assert "does not load" in caplog.text and saved.stat().st_size > 1000

