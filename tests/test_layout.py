"""The layout a reader walks into: the story and the programs at the top (at most 7 files), the plumbing in the
imgpt package, imports running one way (no cycle; the package never imports a top-level file), every module
short enough to read in one sitting, the package's module list true; and checkpoints written before the moves
still load."""
import ast
import glob
import os

import torch

from conftest import ROOT

STORY = {"model.py", "data.py", "loss.py", "metrics.py", "train.py", "eval.py", "sample.py"}
MAX_LINES = 510  # about 500, one sitting; a module earns its place by an idea, not by staying under a cap


def modules() -> dict[str, str]:
    """module name -> path, for the top level and the package."""
    paths = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "imgpt", "*.py"))
    return {os.path.relpath(p, ROOT)[:-3].replace(os.sep, "."): p for p in paths}


def imports(path: str, known: dict[str, str]) -> set[str]:
    """The project modules a file imports, at any depth of the file (a function's own imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return found


def test_the_top_level_holds_the_story_and_the_programs_only():
    top = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert top == STORY, f"top level: {sorted(top)}; plumbing belongs in imgpt/, programs of our own in scripts/"
    assert len(top) <= 7


def test_the_package_never_imports_a_top_level_file_and_no_import_cycles():
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    upward = sorted((m, d) for m, ds in graph.items() if m.startswith("imgpt.")
                    for d in ds if not d.startswith("imgpt"))
    assert not upward, f"the package imports top-level files: {upward}"
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path[path.index(d):] + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_every_module_is_short_enough_to_read():
    paths = list(modules().values()) + glob.glob(os.path.join(ROOT, "scripts", "**", "*.py"), recursive=True)
    sizes = {os.path.relpath(p, ROOT): open(p, encoding="utf-8").read().count("\n") for p in paths}
    long = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_the_packages_module_list_names_every_module_and_no_other():
    listed = set()
    for line in open(os.path.join(ROOT, "imgpt", "__init__.py"), encoding="utf-8").read().split('"""')[1].splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            listed.add(line.split()[0])
    present = {m.split(".", 1)[1] for m in modules() if m.startswith("imgpt.") and m != "imgpt.__init__"}
    assert listed == present, f"imgpt/__init__.py lists {sorted(listed - present)} that do not exist and misses " \
                              f"{sorted(present - listed)}"


def test_a_checkpoint_written_before_the_layout_moved_still_loads_and_gives_its_logits():
    """tests/fixtures/ckpt-5d0e1bd.torch (and the run's best.pt beside it; not named .pt, which .gitignore keeps out
    of git): a 2-step run of the tiny model (1 layer, 4 wide) saved by the code before the move to imgpt/; its
    logits on 'K2=dolu' were recorded then."""
    from model import load_model
    recorded = [0.014821422286331654, 0.0298470389097929, 0.014404569752514362, 0.06799381226301193,
                0.019202981144189835, -0.016934990882873535]
    for name in ("ckpt-5d0e1bd.torch", "best-5d0e1bd.torch"):
        model, tok = load_model(os.path.join(ROOT, "tests", "fixtures", name))
        ids = torch.tensor([tok.encode("K2=dolu")])
        assert tok.encode("K2=dolu") == [75, 50, 61, 100, 111, 108, 117]
        assert torch.allclose(model(ids)[0, -1, :6], torch.tensor(recorded), atol=1e-6), name


def test_scripts_are_grouped_by_audience_and_run_as_modules_without_path_patching():
    """scripts/ holds one folder per audience (experiments, bench, course, maint, tools), each program run from the
    root as `python -m scripts.<folder>.<name>`: no script patches sys.path, and scripts import each other as
    package modules (budget and sweep import compare as scripts.experiments.compare)."""
    audiences = {"experiments", "bench", "course", "maint", "tools"}
    paths = glob.glob(os.path.join(ROOT, "scripts", "**", "*.py"), recursive=True)
    folders = {os.path.relpath(p, os.path.join(ROOT, "scripts")).split(os.sep)[0] for p in paths}
    assert folders == audiences | {"__init__.py"}, sorted(folders)
    for p in paths:
        tree = ast.parse(open(p, encoding="utf-8").read())
        patched = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("insert", "append")
                   and isinstance(n.value, ast.Attribute) and n.value.attr == "path"]
        assert not patched, f"{os.path.relpath(p, ROOT)}:{patched[0]}: patches sys.path"
        siblings = {"compare", "report", "sweep", "budget", "prompt_weight", "kit", "exercises", "check"}
        bare = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module in siblings]
        bare += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name in siblings]
        assert not bare, f"{os.path.relpath(p, ROOT)} imports {bare} as top-level modules"
    for name in ("budget", "sweep"):
        text = open(os.path.join(ROOT, "scripts", "experiments", f"{name}.py"), encoding="utf-8").read()
        assert "from scripts.experiments import compare" in text, name
