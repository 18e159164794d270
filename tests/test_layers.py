"""Imports between core's parts go one way (docs/ARCHITECTURE.md): each module imports
only from its own part and the parts before it, at module level or in a function alike."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: core's parts in import order; a module may import from its own part and earlier ones.
ORDER = ["base", "data", "model", "training", "results", "top"]
BASE = {"atomic", "config", "errors", "settings"}


def part_of(module: str) -> str:
    """'core.data.images' -> 'data'; core.atomic/config/errors/settings -> 'base'; workflow, __main__ -> 'top'."""
    name = module.split(".")[1] if module.count(".") else ""
    if name in BASE:
        return "base"
    return name if name in ORDER else "top"


def imported_modules(path: Path) -> set[str]:
    """Every top-level package `path` imports, wherever the import statement sits."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
    return found


def core_imports(path: Path) -> set[str]:
    """Every `core...` module `path` imports, wherever the import statement sits."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "core":
            if node.module == "core":
                found |= {f"core.{alias.name}" for alias in node.names}
            elif node.module.count(".") == 1 and node.module.split(".")[1] in ORDER:
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "core"}
    return found


def test_core_imports_go_one_way_and_never_import_streamlit():
    wrong = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        assert "streamlit" not in imported_modules(path), f"{module} imports streamlit"
        mine = ORDER.index(part_of(module))
        for imported in core_imports(path):
            if ORDER.index(part_of(imported)) > mine:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "imports against the order " + " -> ".join(ORDER) + ":\n" + "\n".join(wrong)


def test_the_order_is_checked_on_the_real_tree():
    """The check above sees the parts: a guard against it passing on an empty tree."""
    parts = {part_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in (ROOT / "core").rglob("*.py")}
    assert set(ORDER) <= parts


def layer_name_constants() -> set[str]:
    """The names in `core/model/classifier.py`'s LAYER_NAMES tuple (read from its source)."""
    for node in ast.parse((ROOT / "core" / "model" / "classifier.py").read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["LAYER_NAMES"]:
            return {element.id for element in node.value.elts} | {"LAYER_NAMES"}
    raise AssertionError("core/model/classifier.py has no LAYER_NAMES")


def test_layers_are_looked_up_by_name_only_inside_core_model():
    """Outside core/model/ the model's parts come from a `Classifier`: no `get_layer(` and
    no use of the layer-name constants, in core, the pages, the app and the benchmarks."""
    constants = layer_name_constants()
    assert {"BACKBONE", "POOLING", "LOGITS"} <= constants
    files = [*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "streamlit_app.py",
             *(ROOT / "benchmarks").rglob("*.py")]
    wrong = []
    for path in files:
        if (ROOT / "core" / "model") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                    else None)
            if isinstance(node, ast.ImportFrom):
                wrong += [f"{path.relative_to(ROOT)} imports {a.name}" for a in node.names if a.name in constants]
            elif name == "get_layer":
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} calls get_layer")
            elif name in constants:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {name}")
    assert len(files) > 40 and not wrong, "\n".join(wrong)
