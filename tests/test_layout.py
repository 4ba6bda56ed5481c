"""The package's import graph runs one way: no module imports, directly or through
others, a module that imports it back (module-level and function-level imports alike);
and it runs down its layers (:data:`LAYERS`): no module imports a module of a higher layer."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vidmusician"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's own modules an import statement reads (``from .x import y``: ``x.y`` if a module, else ``x``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]
    out = set()
    for name in names:
        while name and name not in known:  # `import a.b.c` of a non-module attribute: its module
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: code that runs only when the module is the program."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                                   for c in test.comparators))


def _walk(tree: ast.AST, entry_points: bool):
    """ast.walk, without the ``__main__`` blocks unless ``entry_points``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if entry_points or not _is_main_block(child))


def import_graph(package: Path = PACKAGE, entry_points: bool = True) -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its body}, for every module under ``package``.

    ``entry_points=False`` leaves out what ``if __name__ == "__main__":`` blocks import.
    """
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    known = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for node in _walk(tree, entry_points):  # module level, functions, and `if TYPE_CHECKING:` blocks alike
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(node, module, path.name == "__init__.py", known)
        # A package's parent packages run first anyway: importing them closes no cycle.
        graph[module] = {m for m in edges if m != module and not module.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_imports_one_way():
    """Old names kept where they used to live (:data:`ALIASES`) are left out: each is read on
    first use, from a module that everything below it can import without it."""
    graph = import_graph()
    assert len(graph) > 40 and any(graph.values())  # the walk saw the package
    for module, other in ALIASES:
        graph[module].discard(other)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_planted_cycle_is_found(tmp_path):
    package = tmp_path / "vidmusician"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from ..c import other\n")
    (package / "c.py").write_text("import vidmusician.a\n")
    graph = import_graph(package)
    assert find_cycle(graph) == ["vidmusician.a", "vidmusician.sub.b", "vidmusician.c", "vidmusician.a"]
    (package / "c.py").write_text("from . import sub\n")  # the package, not a.py: no cycle
    assert find_cycle(import_graph(package)) is None


# The package's layers, lowest first: a module imports modules of its own layer or
# lower ones. A pattern is a module or a package with its modules ('pkg.*'); the most
# specific one places a module.
LAYERS = (
    # What everything may use: errors, number checks, devices, files, argument parsing,
    # progress bars, the table of visual encoders (data only), whether the Hugging Face Hub answers.
    ("foundation", ("vidmusician", "errors", "checks", "runtime", "fileio", "arguments", "progress",
                    "video.encoder_specs", "hub_reach")),
    # Configs and a backbone's shape: no model, no audiocraft.
    ("config", ("config", "backbone_spec")),
    # Building blocks: the adapter layers, video and audio I/O and features, the loss,
    # guidance math and the sampling parameters' bounds, rhythm analysis, adapter folders on disk.
    ("parts", ("adapter.*", "video.*", "audio_io", "muxing", "losses", "training.losses", "generation.guidance",
               "generation.limits",
               "evaluation.beats", "evaluation.onsets", "evaluation.visual_beats", "adapter_files")),
    # Backbones (real and for tests) and configs sized to them.
    ("backbones", ("sizing", "backbones", "random_backbones", "learned_base", "testing.random_backbones",
                   "testing.learned_base")),
    # Adapters wired into a backbone, the model object, generation, the Hub.
    ("assembly", ("adapter.wiring", "generation.*", "model", "model_card", "hub")),
    # What a user runs: the one-call pipeline, training, evaluation, the demo, test media.
    ("tasks", ("pipeline", "batch", "training.*", "evaluation.*", "demo.*", "testing.*")),
    # The command line, thin over everything below (its subcommands import the library
    # inside ``run``, so that `vidmusician -h` answers at once).
    ("cli", ("cli.*", "__main__")),
)
# The only imports up the layers: old names kept importable where they used to live,
# each read on first use only. {(module, module it imports): why}.
ALIASES = {
    ("vidmusician.config", "vidmusician.sizing"): "AdapterConfig.for_backbone, config.load_preset, "
                                                  "config.preset_names, ...: sizing's functions under their old names",
}


def layer_of(module: str, layers=LAYERS) -> int:
    """The index in ``layers`` of a module (``vidmusician.x.y``), by its most specific pattern."""
    name = module.removeprefix("vidmusician.") if module != "vidmusician" else module
    best = None
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if pattern == name:
                rank = (2, len(pattern))
            elif pattern.endswith(".*") and (name + ".").startswith(pattern[:-1]):  # the package and its modules
                rank = (1, len(pattern))
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, index)
    assert best is not None, f"{module} has no layer in tests/test_layout.py LAYERS: add it to the right one"
    return best[1]


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> dict[tuple[str, str], str]:
    """{(module, imported module): 'layer -> higher layer'} for each import up the layers."""
    out = {}
    for module, imported in sorted(graph.items()):
        low = layer_of(module, layers)
        for other in sorted(imported):
            high = layer_of(other, layers)
            if high > low:
                out[(module, other)] = f"{layers[low][0]} -> {layers[high][0]}"
    return out


def test_the_package_imports_down_its_layers():
    """Entry points (``if __name__ == "__main__":``, e.g. ``python -m vidmusician.training.prepare``
    handing its arguments to the CLI) are programs of their own, above every layer."""
    graph = import_graph(entry_points=False)
    upward = upward_imports(graph)
    unexpected = {edge: why for edge, why in upward.items() if edge not in ALIASES}
    assert not unexpected, "imports up the layers: " + "; ".join(f"{a} imports {b} ({why})"
                                                                   for (a, b), why in unexpected.items())
    assert set(upward) == set(ALIASES), f"ALIASES lists imports that are gone: {set(ALIASES) - set(upward)}"


def test_the_config_is_a_leaf():
    """The config knows no model: it imports only the foundation (and its aliases, on first use)."""
    graph = import_graph()
    config = graph["vidmusician.config"] - {other for module, other in ALIASES if module == "vidmusician.config"}
    assert all(layer_of(m) == 0 for m in config), config
    for spec in ("vidmusician.backbone_spec",):
        assert all(layer_of(m) == 0 for m in graph[spec]), graph[spec]


def test_an_import_up_the_layers_is_found(tmp_path):
    package = tmp_path / "vidmusician"
    (package / "adapter").mkdir(parents=True)
    for name in ("__init__.py", "adapter/__init__.py", "errors.py", "sizing.py"):
        (package / name).write_text("")
    (package / "config.py").write_text("from .errors import x\ndef f():\n    from .adapter.wiring import y\n")
    (package / "adapter" / "wiring.py").write_text("from ..config import z\n")
    (package / "cli.py").write_text("")
    (package / "model.py").write_text("if __name__ == '__main__':\n    from .cli import main\n")
    graph = import_graph(package, entry_points=False)
    assert upward_imports(graph) == {("vidmusician.config", "vidmusician.adapter.wiring"): "config -> assembly"}
    assert ("vidmusician.model", "vidmusician.cli") in upward_imports(import_graph(package))


def test_the_one_call_api_imports_audiocraft_only_with_a_model():
    """`vidmusician generate` answers a bad video or argument before audiocraft (and its
    xformers, transformers, ...) is imported: that import takes most of a model's start."""
    code = ("import sys, vidmusician.pipeline, vidmusician.cli.commands.generate; "
            "print('audiocraft' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr


# audiocraft's private API is used in one module, which says what to check on an upgrade.
INTERNALS = "vidmusician/adapter/audiocraft_internals.py"
# Where the project's Python lives: the package, its tests and its benchmarks.
PROJECT_DIRS = ("vidmusician", "tests", "benchmarks", "scripts")
# Private names audiocraft shares with torch.nn.Module, which audiocraft overrides as torch asks.
TORCH_HOOKS = {"_load_from_state_dict", "_save_to_state_dict"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def audiocraft_private_names() -> set[str]:
    """Private attribute and method names of audiocraft's classes (``def _x`` in a class, ``self._x = ...``)."""
    import importlib.util

    root = Path(importlib.util.find_spec("audiocraft").submodule_search_locations[0])
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_private(node.name):
                names.add(node.name)  # module-level private functions too: none is ours to call
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self" and _is_private(node.attr)):
                names.add(node.attr)
    return names - TORCH_HOOKS


def private_uses(names: set[str], root: Path = PACKAGE.parent, dirs=PROJECT_DIRS) -> dict[str, set[str]]:
    """{name: {'path:line', ...}} for each of ``names`` the project reads, sets, overrides or imports."""
    uses: dict[str, set[str]] = {}
    for folder in dirs:
        for path in sorted((root / folder).rglob("*.py")):
            where = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                found = []
                if isinstance(node, ast.Attribute):
                    found = [node.attr]
                elif isinstance(node, ast.ClassDef):  # an override of a private method
                    found = [f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("audiocraft"):
                    found = [alias.name for alias in node.names]
                elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
                    found = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                for name in found:
                    if name in names:
                        uses.setdefault(name, set()).add(f"{where}:{node.lineno}")
    return uses


def test_audiocraft_private_api_is_used_only_in_its_module():
    names = audiocraft_private_names()
    assert {"_streaming_state", "_prepare_tokens_and_attributes", "_codebook"} <= names  # the scan read audiocraft
    uses = private_uses(names)
    outside = {name: sorted(w for w in where if not w.startswith(INTERNALS + ":"))
               for name, where in sorted(uses.items())}
    outside = {name: where for name, where in outside.items() if where}
    assert not outside, f"audiocraft's private API outside {INTERNALS}: {outside}"
    # The module's docstring names each private name it uses (what to check on an upgrade).
    doc = ast.get_docstring(ast.parse((PACKAGE.parent / INTERNALS).read_text()))
    used = sorted(uses)
    print("audiocraft private names used in", INTERNALS, ":", ", ".join(used))
    unnamed = [name for name in used if not re.search(rf"(?<!\w){name}(?!\w)", doc)]
    assert used and not unnamed, f"{INTERNALS}'s docstring does not name {unnamed}"


def test_a_private_name_outside_the_internals_is_found(tmp_path):
    (tmp_path / "vidmusician").mkdir()
    (tmp_path / "vidmusician" / "a.py").write_text(
        "class M(Base):\n    def _load_base_model(self):\n        return self._streaming_state\n"
        "def f(m):\n    return getattr(m, '_is_streaming'), m.streaming\n")
    uses = private_uses({"_load_base_model", "_streaming_state", "_is_streaming"}, tmp_path, ("vidmusician",))
    assert uses == {"_load_base_model": {"vidmusician/a.py:1"}, "_streaming_state": {"vidmusician/a.py:3"},
                    "_is_streaming": {"vidmusician/a.py:5"}}


def test_info_for_a_preset_loads_no_model_code():
    """`vidmusician info PRESET` is data and arithmetic: audiocraft, open_clip and torch stay unloaded."""
    code = ("import sys; from vidmusician.cli import main; main(['info', 'musicgen-medium']); "
            "print(sorted({'audiocraft', 'open_clip', 'torch', 'transformers'} & set(sys.modules)))")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("\n[]"), out.stdout + out.stderr
    assert "QuickGELU" in out.stdout and "(21.58M)" in out.stdout  # the whole answer, not a shortcut


def test_info_for_an_adapter_folder_loads_no_torch(tmp_path):
    """`vidmusician info FOLDER` reads the config and, to refuse a half-saved folder, the weights' header alone."""
    import torch

    from vidmusician.adapter_files import write_adapter
    from vidmusician.config import AdapterConfig

    write_adapter(tmp_path / "adapter", AdapterConfig(dim=32, num_layers=4, rhythm_rank=None, encoder="tiny"),
                  {"w": torch.ones(2)})
    code = (f"import sys; from vidmusician.cli import main; main(['info', {str(tmp_path / 'adapter')!r}]); "
            "print(sorted({'audiocraft', 'numpy', 'open_clip', 'torch', 'transformers'} & set(sys.modules)))")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("\n[]"), out.stdout + out.stderr
    assert "adapter for facebook/musicgen-small (dim 32, 4 layers" in out.stdout
