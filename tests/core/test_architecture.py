"""The layers stay apart: the core knows neither Ray, torch nor the speed layer; the model never imports the speed
layer or the job; only v2v.job imports Ray. Checked on the modules' import statements, lazy ones included."""

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

V2V = Path(REPO) / "v2v"


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("core", ("ray", "torch", "diffusers", "v2v.model", "v2v.speed", "v2v.job")),
    ("model", ("ray", "v2v.speed", "v2v.job")),
    ("speed", ("ray", "v2v.job")),
])
def test_a_layer_imports_nothing_above_it(package, forbidden):
    modules = sorted((V2V / package).glob("*.py"))
    assert len(modules) >= 3
    for path in modules:
        bad = {m for m in imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden)}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
    config = imports(V2V / "config.py")
    assert not {m for m in config if m.split(".")[0] in ("ray", "torch") or m.startswith("v2v.")}


def test_the_architecture_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from v2v.speed import apply_speed_settings\n    import ray.data\n")
    assert {"v2v.speed", "ray.data"} <= imports(bad)
