"""The library's import graph: every import goes to the same or a lower layer, the units
(top-level modules and subpackages) import each other without a cycle, Ray is joined only by the
Ray's own first use, and README's module map names every module there is."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "platform" / "npalign"
# Lowest first. A unit is a top-level module or a subpackage of npalign.
LAYERS = [
    {"files", "registry", "pretrained", "stores", "access", "runtime_env"},
    {"config"},
    {"data"},
    {"models"},
    {"train", "evaluation", "inference", "export", "active"},
    {"recipes"},
    {"serving", "sweep"},
    {"cli"},
]


def modules() -> dict[str, Path]:
    """Dotted name → file, for every module of the package but its __init__ files."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            out[".".join(parts)] = path
    return out


def import_arrows() -> set[tuple[str, str]]:
    """(importer, imported) module pairs, function-level imports included."""
    known = modules()
    arrows = set()
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module in known:
                arrows.add((name, node.module))
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in known:
                        arrows.add((name, f"{node.module}.{alias.name}"))
            elif isinstance(node, ast.Import):
                arrows |= {(name, a.name) for a in node.names if a.name in known}
    return {(a, b) for a, b in arrows if a != b}


def unit(module: str) -> str:
    return module.split(".")[1]


def layer(module: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit(module) in units)


def test_every_unit_has_a_layer_and_no_import_runs_up():
    arrows = import_arrows()
    assert {unit(m) for m in modules()} == set().union(*LAYERS)
    upward = sorted((a, b) for a, b in arrows if layer(b) > layer(a))
    assert upward == []


def test_units_import_each_other_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for a, b in import_arrows():
        if unit(a) != unit(b):
            graph.setdefault(unit(a), set()).add(unit(b))
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' → '.join((*path, node))}"
        if node not in done:
            for nxt in graph.get(node, ()):
                visit(nxt, (*path, node))
            done.add(node)

    for node in list(graph):
        visit(node, ())


def test_the_library_never_starts_ray_and_makes_no_http_calls():
    for name, path in modules().items():
        text = path.read_text()
        assert "ray.init(" not in text, name
        assert not re.search(r"^\s*import requests|^\s*from requests", text, re.M), name


def test_readme_map_names_every_module_and_only_modules_that_exist():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## How it works") :]
    section = section[: section.index("\n## ", 4)]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", table))
    files = {str(p.relative_to(PACKAGE)) for p in modules().values()}
    assert files <= named, f"not in README's map: {sorted(files - named)}"
    assert named <= files, f"in README's map but not in the package: {sorted(named - files)}"


def test_the_registries_point_up_only_by_name_to_their_home_modules():
    """registry.py imports each family's home module when a name is first looked up: the one
    import that points up, written as a string, so the static graph above cannot see it."""
    from npalign.registry import DATA_SOURCES, POLICY_MODELS, REWARD_MODELS

    known = modules()
    for registry in (REWARD_MODELS, POLICY_MODELS, DATA_SOURCES):
        assert registry.home in known and layer(registry.home) > layer("npalign.registry")
    users = [n for n, p in known.items() if "import_module(" in p.read_text()]
    assert users == ["npalign.registry"]
