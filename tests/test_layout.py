"""The house: every module's imports, at the top and inside functions,
against the floors README.md's "Where things live" table states."""

import ast
import os
import re

from conftest import ROOT


def modules():
    """The project's modules: the .py files at the top level."""
    return sorted(name[:-3] for name in os.listdir(ROOT) if name.endswith(".py"))


def imported_modules(module, known, root=ROOT):
    """{imported project module: line} for every import in `module`'s source
    (in `root`), at the top level or inside a function."""
    with open(os.path.join(root, f"{module}.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            if name in known and name != module:
                found.setdefault(name, node.lineno)
    return found


def readme_floors():
    """{module: floor} from README.md's file table."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index("## Where things live"):]
    floors = {}
    for floor, files in re.findall(r"^\| *(\d+) *\| *(.+?) *\|", section, re.M):
        for name in re.findall(r"`(\w+)\.py`", files):
            floors[name] = int(floor)
    return floors


def test_the_readme_places_every_module_on_a_floor():
    floors = readme_floors()
    assert sorted(floors) == modules(), "every module (and only those) is in README.md's file table"


def test_every_import_goes_down_a_floor():
    floors = readme_floors()
    upward = [
        f"{module}.py:{line} imports {imported} (floor {floors[imported]} >= {floors[module]})"
        for module in modules()
        for imported, line in imported_modules(module, floors).items()
        if floors[imported] >= floors[module]
    ]
    assert not upward, upward


def test_no_import_cycle_even_through_imports_inside_functions():
    known = set(modules())
    edges = {module: set(imported_modules(module, known)) for module in known}

    def reaches(start, goal, seen):
        for step in edges[start]:
            if step == goal or (step not in seen and (seen.add(step) or reaches(step, goal, seen))):
                return True
        return False

    cycles = [module for module in sorted(known) if reaches(module, module, set())]
    assert not cycles, cycles


def test_the_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "low.py").write_text("import os\n\n\ndef later():\n    import high\n    from high import thing\n")
    (tmp_path / "high.py").write_text("import low\n")
    assert imported_modules("low", {"low", "high"}, root=tmp_path) == {"high": 5}
    assert imported_modules("high", {"low", "high"}, root=tmp_path) == {"low": 1}


def test_matplotlib_and_seaborn_only_in_visualize():
    others = {
        module: sorted(name for name in imported_modules(module, {"matplotlib", "seaborn"}))
        for module in modules()
        if module != "visualize"
    }
    assert not {module: names for module, names in others.items() if names}
