"""The package's import graph: every `oracle_jax` module's imports of other `oracle_jax`
modules, at module level and inside functions, form no cycle (data flows one way)."""
import ast
import pathlib

import oracle_jax

PACKAGE = pathlib.Path(oracle_jax.__file__).parent


def _module_name(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imported(node, module, is_package, modules):
  """The `oracle_jax` modules an import statement names (a package's submodules
  included: `from oracle_jax import data` imports `oracle_jax.data`)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name in modules]
  base = module if is_package else module.rpartition('.')[0]
  for _ in range(node.level - 1):
    base = base.rpartition('.')[0]
  source = (f'{base}.{node.module}' if node.module else base) if node.level else node.module
  names = [f'{source}.{a.name}' for a in node.names]
  found = [n for n in names if n in modules]
  if len(found) < len(names) and source in modules:
    found.append(source)
  return found


def import_graph():
  """{module: set of oracle_jax modules it imports}, a package's `__init__` as the package."""
  files = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
  graph = {}
  for module, path in files.items():
    is_package = path.name == '__init__.py'
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        targets.update(_imported(node, module, is_package, files))
    # Naming its own package is no edge: a submodule only runs once its package's
    # __init__ has started, so that import just reads the package already loading.
    graph[module] = {t for t in targets if t != module and not module.startswith(t + '.')}
  return graph


def _cycle(graph):
  """One cycle as 'a -> b -> a', or None (depth-first search, colours)."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return ' -> '.join(stack[stack.index(nxt):] + [nxt])
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_cycle_finder_reports_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == 'a -> b -> c -> a'
  assert _cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def test_graph_sees_module_and_function_level_imports():
  graph = import_graph()
  assert graph['oracle_jax.interop.torch_import'] >= {'oracle_jax.models', 'oracle_jax.checkpoints'}
  assert 'oracle_jax.data.specs' in graph['oracle_jax.data']  # `from oracle_jax.data.specs …`
  assert 'oracle_jax.data.imagenet' in graph['oracle_jax.data.pipeline']  # inside a function


def test_package_has_no_import_cycle():
  cycle = _cycle(import_graph())
  assert cycle is None, f'import cycle: {cycle}'
