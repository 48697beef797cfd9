"""The shape of the code (issue 18): no import cycles among archbench's modules, counting imports anywhere in a
module (a lazy import inside a function still ties two modules together), and no library function with more
than 8 parameters or longer than 60 lines (the typer command functions of cli.py excepted: their parameters
are the options; and the `__init__` of a transformers config class, whose fields transformers wants as
keyword parameters)."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_PARAMS, MAX_LINES = 8, 60


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted((SRC / "archbench").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """archbench modules `name` imports (a package's submodule counts as the submodule)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = name.split(".")[: -node.level] if not name.endswith("__init__") else name.split(".")
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, tree, set(mods)) for name, tree in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    # a family module imports its package for the `Family` type, and the package finds family modules by name
    # through importlib only: no static edge back
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _config_inits(tree: ast.Module) -> set[int]:
    """ids of the `__init__` nodes of classes deriving from a transformers config (PretrainedConfig)."""
    out = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        bases = {getattr(b, "id", getattr(b, "attr", "")) for b in cls.bases}
        if any(b.endswith("Config") for b in bases):
            out |= {id(f) for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"}
    return out


def test_functions_are_short_and_take_few_parameters():
    long, wide = [], []
    for name, tree in _modules().items():
        exempt = _config_inits(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
            lines = node.end_lineno - node.lineno + 1
            command = name == "archbench.cli" or id(node) in exempt
            if params > MAX_PARAMS and not command:
                wide.append(f"{name}.{node.name} ({params} parameters)")
            if lines > MAX_LINES and not command:
                long.append(f"{name}.{node.name} ({lines} lines)")
    assert wide == [] and long == []
