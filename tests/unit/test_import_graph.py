"""src/feddmmr imports form no cycle and point only down the layers (the README's Layout):
every module can be read (and imported) on its own terms, with only what sits below it."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """feddmmr modules a module imports, at the top or inside functions (not for type checkers)."""
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if type_checking_block(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            found.add(node.module)
            found.update(
                f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules
            )
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SRC / "feddmmr").rglob("*.py")}
    return {name: imported(ast.parse(path.read_text()), set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"feddmmr.train", "feddmmr.flower.server_app"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Bottom to top. A module may import its own layer's modules and those below, never above
# (imports for type checkers only are not counted). A package stands for all its modules.
LAYERS = [
    {"feddmmr", "atomic", "errors", "streams", "config_rules", "progress"},  # no feddmmr imports
    {"checkpoint", "data", "features", "model", "memory"},  # files, data, the models
    {"federated", "evaluation", "provenance", "run_directory"},  # rounds' parts, metrics, run folders
    {"engines"},  # local training of many clients
    {"config", "config_files"},  # the settings (names the registered engines); presets, config.json
    {"rounds", "run_state", "centralized", "callbacks", "trackers"},  # one round, a run's state
    {"run_setup", "train"},  # the run loop
    {"flower"},  # the Flower app, which runs the loop on a federation
    {"best_model", "recommend", "export", "report", "summary"},  # using what was trained
    {"cli", "__main__"},
]


def unit(module: str) -> str:
    """feddmmr.federated.privacy -> federated; feddmmr.train -> train; feddmmr -> feddmmr."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports_pointing_up(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    level = {name: index for index, layer in enumerate(layers) for name in layer}
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if level[unit(target)] > level[unit(module)]
    )


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    assert {unit(module) for module in import_graph()} <= layered


def test_no_import_points_up_a_layer():
    assert imports_pointing_up(import_graph(), LAYERS) == []


def test_the_layer_check_finds_an_import_pointing_up():
    graph = {"feddmmr.model.sasrec": {"feddmmr.train"}, "feddmmr.train": {"feddmmr.model.sasrec"}}
    assert imports_pointing_up(graph, LAYERS) == ["feddmmr.model.sasrec -> feddmmr.train"]
