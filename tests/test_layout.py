"""The package's layout: sub-packages import downwards only, public names and entry points stay put."""
from __future__ import annotations

import ast
import configparser
import importlib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "espnet_snac"
ROOT_MODULES = {"registry", "cli", "__main__"}  # top-level modules a sub-package could reach up to


def module_names() -> dict:
    names = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def owner(module: str) -> str:
    """The sub-package a module belongs to, or ``<top>`` for the package's own top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) else "<top>"


def imported(path: Path, known: dict) -> set:
    """Our modules that ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import; use absolute espnet_snac imports"
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known)
    return found


def package_graph() -> dict:
    known = module_names()
    graph = defaultdict(set)
    for module, path in known.items():
        for target in imported(path, known):
            a, b = owner(module), owner(target)
            if a != b:
                graph[a].add((b, module, target))
    return graph


def test_sub_packages_form_no_cycle():
    graph = package_graph()
    edges = {a: {b for b, _, _ in links} for a, links in graph.items()}

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [a for a in edges if a in reachable(a)]
    assert not cycles, {a: sorted((m, t) for _, m, t in graph[a]) for a in cycles}


def test_no_sub_package_reaches_up_except_entry_points():
    upward = []
    for package, links in package_graph().items():
        if package in {"<top>", "bin"}:
            continue  # the entry points register the codec in their own process
        upward += [(m, t) for b, m, t in links if b == "<top>" and t.rsplit(".", 1)[-1] in ROOT_MODULES]
    assert not upward, upward


def test_io_and_model_sit_at_the_bottom():
    graph = package_graph()
    assert {b for b, _, _ in graph.get("io", ())} == set()
    assert {b for b, _, _ in graph.get("model", ())} <= {"io"}


def test_public_names_and_entry_points_unchanged():
    import espnet_snac

    assert {"SNAC", "SNACTokenizer", "SNAC_24KHZ"} <= set(dir(espnet_snac))
    from espnet_snac import SNAC, SNACTokenizer  # noqa: F401
    from espnet_snac.model import SNAC as model_snac

    assert model_snac is SNAC
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "espnet-snac = espnet_snac.cli:main" in cfg["options.entry_points"]["console_scripts"]
    for tool in ["gan_codec_train", "gan_codec_inference", "extract_tokens", "prepare_data", "score",
                 "plan_training", "learning_curve", "lm_data", "lm_decode"]:
        assert importlib.util.find_spec(f"espnet_snac.bin.{tool}") is not None, tool
    assert (PKG / "registry.py").is_file()  # the start-up hook imports espnet_snac.registry by name


def test_kernel_sources_ship_with_the_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    data = cfg["options.package_data"]
    from espnet_snac.model import kernels

    package = kernels.__name__.rsplit(".", 1)[0]
    assert package in data and "csrc/*.c" in data[package]
    assert sorted(p.name for p in kernels.CSRC.iterdir() if p.suffix in {".c", ".h"}) == [
        "exact.c", "snake.c", "tiles.h"]
