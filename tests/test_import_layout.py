"""The package's import layout: no import circle between exekutor's modules, and the command line and the worker
import nothing they do not use (no dashboard, Flask, Sentry, YAML or cron parsing unless asked for).

Module-level imports only: an import inside a function runs when the function does (a deliberate lazy import of
something heavy), so it cannot tie two modules at import time.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = Path(ROOT, "exekutor")

# Circles tolerated: a cycle all of whose modules are in one of these sets. None is left (issue 28 untied the last
# three); keep it that way.
KNOWN_CIRCLES = []

# Never imported by `exekutor-gevent --help` nor by the worker unless the application asks for them.
HEAVY_OPTIONAL = ("flask", "sentry_sdk", "exekutor.dashboard", "yaml", "cronsim")


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules():
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def top_level_imports(tree):
    """The import statements Python runs when it imports the module: not those in function bodies."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            pending.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(name, path, modules):
    """The exekutor modules `name` imports at module level (`from pkg import mod` counts as mod)."""
    targets = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{base}".rstrip(".")
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in targets if target in modules and target != name}


def import_graph():
    modules = all_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph):
    """Tarjan's algorithm, iteratively: the sets of modules that import each other, directly or not."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def a_cycle(graph, component):
    """One cycle through `component`, as a list of modules that starts and ends with the same one."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for child in sorted(graph[path[-1]] & component):
            if child == start:
                return [*path, start]
            if child not in seen:
                seen.add(child)
                paths.append([*path, child])
    return [start]


def circles(graph, known=()):
    found = [component for component in strongly_connected(graph) if len(component) > 1]
    return [component for component in found if not any(component <= allowed for allowed in known)]


def test_no_import_circle_between_exekutor_modules():
    graph = import_graph()
    assert "exekutor.cli.common" in graph and "exekutor.config" in graph  # the walk found the package
    unexpected = circles(graph, KNOWN_CIRCLES)
    assert not unexpected, "import circles: " + "; ".join(" -> ".join(a_cycle(graph, c)) for c in unexpected)


def all_imports(tree):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_no_circle_even_through_imports_in_functions(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "top_level_imports", all_imports)
    graph = import_graph()
    unexpected = circles(graph)
    assert not unexpected, "import circles: " + "; ".join(" -> ".join(a_cycle(graph, c)) for c in unexpected)


def test_the_circle_check_finds_a_circle():
    # The check itself, on a graph with a circle of three beside an allowed one and a tail.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(map(sorted, circles(graph))) == [["a", "b", "c"], ["d", "e"]]
    assert circles(graph, [{"d", "e"}]) == [{"a", "b", "c"}]
    assert a_cycle(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]


def test_the_circle_check_reads_module_level_imports_only(tmp_path):
    source = ("import os\nfrom exekutor import config\nfrom exekutor.db import connection\n"
              "class A:\n    from exekutor import display\n"
              "def f():\n    from exekutor import cli\n")
    path = tmp_path / "probe.py"
    path.write_text(source)
    modules = {"exekutor.config", "exekutor.db", "exekutor.db.connection", "exekutor.display", "exekutor.cli"}
    assert imported_modules("exekutor.probe", path, modules) == {"exekutor.config", "exekutor.db.connection",
                                                                 "exekutor.display"}


def test_the_command_line_package_imports_no_command_at_import_time():
    graph = import_graph()
    # The commands import cli.common; cli itself (the group) and cli.common import none of them.
    assert graph["exekutor.cli"] <= {"exekutor.cli.common", "exekutor.version"}
    assert not {name for name in graph["exekutor.cli.common"] if name.startswith("exekutor.cli")}


PROBE = """
import json, runpy, sys
{setup}
print(json.dumps(sorted(sys.modules)), file=sys.__stderr__)
"""


def loaded_modules(setup):
    """The modules a fresh interpreter has loaded after running `setup` (its stdout discarded)."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def heavy(modules):
    return sorted(name for name in modules if name.split(".")[0] in HEAVY_OPTIONAL or name.startswith(HEAVY_OPTIONAL))


@pytest.mark.timeout(120)
def test_help_imports_no_command_and_nothing_heavy():
    modules = loaded_modules("sys.argv = ['exekutor-gevent', '--help']\n"
                             "try:\n    runpy.run_module('exekutor', run_name='__main__')\n"
                             "except SystemExit:\n    pass")
    assert "exekutor.cli" in modules  # it ran
    assert not heavy(modules)
    assert not {name for name in modules if name.startswith("exekutor.cli.")} - {"exekutor.cli.common"}
    assert not {"psycopg2", "gevent", "exekutor.config"} & modules


@pytest.mark.timeout(120)
def test_what_start_imports_pulls_no_dashboard_flask_sentry_yaml_or_cron():
    # What `exekutor-gevent start` imports before it imports the application: its command module, the worker.
    modules = loaded_modules("import exekutor.cli.start, exekutor.daemon, exekutor.serialization\n"
                             "import exekutor.worker.process\n"
                             "from exekutor import Worker, config, hooks")
    assert "exekutor.worker.worker" in modules
    assert not heavy(modules)


@pytest.mark.timeout(120)
def test_the_lazy_public_api_gives_what_the_eager_one_gave():
    # `import exekutor` imports its API on first use: every name still resolves, and `exekutor.asynchronous` stays
    # the decorator once its submodule of the same name was imported (as the worker imports it).
    check = ("import exekutor\nimport exekutor.execution\n"
             "from exekutor.asynchronous import asynchronous\n"
             "assert exekutor.asynchronous is asynchronous, exekutor.asynchronous\n"
             "assert all(getattr(exekutor, name) is not None for name in exekutor.__all__)\n"
             "from exekutor import Worker, job, periodic, config\n"
             "assert config.__name__ == 'exekutor.config' and Worker.__name__ == 'Worker'\n")
    assert "exekutor.jobs" in loaded_modules(check)
