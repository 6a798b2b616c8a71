"""The architecture as the import graph: layers only point down (config -> data -> models/losses -> methods ->
train -> eval -> api -> cli; the package's ``__init__`` re-exports the API on top) and no module imports itself
back through others. Read from the source with ``ast``, so a back-arrow or a circle fails here, not in a
reviewer's head."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "declip"
# A module may import its own layer and any layer with a smaller number, never a larger one.
LAYERS = {
    "version": 0, "errors": 0, "vocab": 0, "presets": 0, "metric_names": 0, "checkpoint_file": 0.5,
    "storage": 0.5,  # object storage (s3://, gs://, http(s)://): a leaf on errors that every data reader uses
    "config_parse": 1, "model_ref": 1.5,  # reading a checkpoint / resolving a model reference: config reads both
    "device": 1.5, "recipes": 1.5,  # they read strings with config_parse's helpers; config uses recipes
    "docs_pages": 1.5,
    "config_model": 1.75, "config_method": 1.75,  # the model and method sections; config gathers them
    "config": 2, "distributed": 2, "data": 3, "models": 4, "losses": 4, "methods": 5, "train": 6, "eval": 6,
    "export": 7, "plot": 7, "loading": 7.25, "api": 7.5, "cli_data": 8, "cli_eval": 8, "cli": 9,
    # the package's face: ``import declip`` re-exports the API (lazily, so the CLI does not load it)
    "__init__": 10,
}
# Evaluation runs inside training (zero-shot every eval.every steps): train -> eval is the one allowed
# sideways arrow between the two layer-5 packages; eval never imports train.
SIDEWAYS = {("train", "eval")}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["declip", *parts])


def imports(path: Path, modules: frozenset[str] = frozenset()) -> set[str]:
    """Project modules imported by ``path`` (top-level and function-level imports alike). ``from pkg import mod``
    of a submodule (one of ``modules``) imports that submodule, not the package: a package's ``__init__`` runs
    before any of its submodules anyway, so counting it would make ``declip``'s API face every module's
    dependency."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if mod.startswith("declip"):
                named = {f"{mod}.{a.name}" for a in node.names}
                found.update(named)
                if not named <= modules:
                    found.add(mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("declip"))
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in imports(p, frozenset(files)) if i in files and i != m} for m, p in files.items()}


def layer(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    return top, LAYERS[top]


def test_every_module_has_a_layer():
    assert all(layer(m) for m in graph())


def test_layers_only_point_down():
    back = []
    for mod, deps in graph().items():
        (top, level) = layer(mod)
        for dep in deps:
            dtop, dlevel = layer(dep)
            if dlevel > level or (dlevel == level and dtop != top and (top, dtop) not in SIDEWAYS):
                back.append(f"{mod} -> {dep}")
    assert not back, back


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
