"""The package's floors run one way: every import of every module, those made inside functions included, goes
to the module's own floor or one below it, and no module reaches itself again through its imports."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "ds_distil"

# The floors, lowest first. A module may import from its own floor and from the floors below it, never from one
# above. Packages on one floor (distill and finetune) do not import each other.
LAYERS = [
    ["ds_distil"],  # the package itself: its version
    ["ds_distil.core"],  # config library, errors, io, collectives, signals, run directories, progress, ...
    ["ds_distil.schema"],  # the typed configs of every command and the CLI's parser: no torch
    ["ds_distil.data"],  # shards, manifest, samples, masking, stream, tokenizer, vocabulary choice, tasks
    ["ds_distil.model"],  # building models, the masked-positions forward, surgery, trimming, checks
    ["ds_distil.runtime"],  # DeepSpeed engine, metrics, FLOPs: what every training run needs
    ["ds_distil.distill", "ds_distil.finetune"],  # distillation (objectives, teacher signals, step, loop, ...); finetuning
    ["ds_distil.reporting"],  # the report of finetuning results, the paper's tables
    ["ds_distil.study"],  # whole studies: plan, stage keys, runner
    ["ds_distil.cli"],  # the command line: the parser of schema/, each command handed to its layer
    ["ds_distil.__main__"],  # `python -m ds_distil`
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """The ds_distil modules `path` imports, at module level or inside functions (a name imported from a
    package counts as its submodule when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ds_distil"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ds_distil":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def layer(module: str) -> tuple[int, str]:
    """(floor, the package of LAYERS holding `module`): the longest prefix wins."""
    best = None
    for i, packages in enumerate(LAYERS):
        for pkg in packages:
            if (module == pkg or module.startswith(pkg + ".")) and (best is None or len(pkg) > len(best[1])):
                best = (i, pkg)
    assert best is not None, f"{module} is on no floor of LAYERS: add it"
    return best


GRAPH = {m: {i for i in imports(p) if i != m} for m, p in MODULES.items()}


def test_every_module_is_on_a_floor():
    for m in MODULES:
        layer(m)


def test_no_import_goes_up_a_floor_or_across_to_a_sibling_package():
    wrong = []
    for m, targets in GRAPH.items():
        (floor, pkg) = layer(m)
        for t in targets:
            assert t in MODULES, f"{m} imports {t}, which does not exist"
            (t_floor, t_pkg) = layer(t)
            if t_floor > floor or (t_floor == floor and t_pkg != pkg):
                wrong.append(f"{m} (floor {floor}) imports {t} (floor {t_floor}, {t_pkg})")
    assert not wrong, "imports against the floors:\n" + "\n".join(wrong)


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(GRAPH):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    code = "def f():\n    from ds_distil.core import rundir\n    import ds_distil.cli\n"
    (tmp_path / "m.py").write_text(code)
    assert imports(tmp_path / "m.py") == {"ds_distil.core.rundir", "ds_distil.cli"}
    assert layer("ds_distil.core.rundir")[0] < layer("ds_distil.cli")[0]
