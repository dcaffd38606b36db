"""Tests of the package's shape (no module of its own: srdl_timm as a whole). Every srdl_timm module's imports,
read with ``ast`` (function-level imports included), form an acyclic graph, and no module imports or reads a
``_private`` name of another srdl_timm module."""
import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import srdl_timm

ROOT = Path(srdl_timm.__file__).resolve().parent
PACKAGE = 'srdl_timm'


def _module_names() -> Dict[str, Path]:
    """Every module of the package: dotted name -> file (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(ROOT.rglob('*.py')):
        parts = (PACKAGE,) + path.relative_to(ROOT).with_suffix('').parts
        if parts[-1] == '__init__':
            parts = parts[:-1]
        modules['.'.join(parts)] = path
    return modules


MODULES = _module_names()


def _private(name: str) -> bool:
    return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def _outside_private_module(module: str, target: str) -> bool:
    """Whether ``target`` lies in a private module or package (``pkg._name``) that ``module`` is not part of
    (a private module is its own package's business)."""
    parts = target.split('.')
    for i, part in enumerate(parts):
        if _private(part):
            owner = '.'.join(parts[:i])
            return not (module == owner or module.startswith(owner + '.'))
    return False


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute name of the module a ``from ... import`` statement of ``module`` reads from."""
    if not node.level:
        return node.module or ''
    package = module if MODULES[module].name == '__init__.py' else module.rpartition('.')[0]
    for _ in range(node.level - 1):
        package = package.rpartition('.')[0]
    return f'{package}.{node.module}' if node.module else package


def _analyse() -> Tuple[Dict[str, Set[str]], List[str]]:
    """``(imports, private)``: for each srdl_timm module the srdl_timm modules it imports (the named submodule
    for ``from pkg import sub``, else the module read from), and ``'module: what'`` for each private name of
    another srdl_timm module it imports or reads as ``alias._name`` and each private module (``pkg._name``)
    outside its own package that it imports from."""
    graph: Dict[str, Set[str]] = {}
    private: List[str] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: Set[str] = set()
        aliases: Dict[str, str] = {}  # local name -> srdl_timm module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES:
                        edges.add(alias.name)
                        if alias.asname:
                            aliases[alias.asname] = alias.name
                        if _outside_private_module(module, alias.name):
                            private.append(f'{module}: import {alias.name}')
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                if source not in MODULES:
                    continue
                if _outside_private_module(module, source):
                    private.append(f'{module}: from {source} import ...')
                for alias in node.names:
                    sub = f'{source}.{alias.name}'
                    if sub in MODULES:
                        edges.add(sub)
                        aliases[alias.asname or alias.name] = sub
                    else:
                        edges.add(source)
                    if _private(alias.name):
                        private.append(f'{module}: from {source} import {alias.name}')
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr)
                    and aliases.get(node.value.id, module) != module):
                private.append(f'{module}: {aliases[node.value.id]}.{node.attr}')
        edges.discard(module)
        graph[module] = edges
    return graph, sorted(set(private))


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH, PRIVATE = _analyse()
CYCLES = _cycles(GRAPH)
STRICT_PREFIXES = (f'{PACKAGE}.ops', f'{PACKAGE}.layers', f'{PACKAGE}.training')


def _in(name: str, prefixes: Tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def test_layout_analysis_sees_the_imports_it_checks():
    """The analysis itself: it finds modules' relative and absolute imports, function-level ones included
    (so an empty result below means no cycle, not an analysis that reads nothing)."""
    assert 'srdl_timm.ops.dispatch' in GRAPH['srdl_timm.layers.car']
    assert 'srdl_timm.ops.chunked' in GRAPH['srdl_timm.ops.dispatch']
    assert 'srdl_timm.training.loop' in GRAPH['srdl_timm.training.run']
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_ops_layers_and_training_have_no_cycle_and_no_private_import():
    """srdl_timm/ops, srdl_timm/layers and srdl_timm/training: no import cycle runs through them and none of their
    modules imports (or reads as ``module._name``) a private name of another srdl_timm module."""
    cycles = [c for c in CYCLES if any(_in(m, STRICT_PREFIXES) for m in c)]
    private = [p for p in PRIVATE if _in(p.partition(':')[0], STRICT_PREFIXES)]
    assert cycles == [], cycles
    assert private == [], '\n'.join(private)


def test_package_has_no_cycle_and_no_private_import():
    """The whole package: the srdl_timm-internal import graph is acyclic and no module imports (or reads as
    ``module._name``) a private name of another srdl_timm module."""
    assert CYCLES == [], CYCLES
    assert PRIVATE == [], '\n'.join(PRIVATE)
