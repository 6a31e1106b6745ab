"""The package's import graph: every `oracle_jax` module's imports of other `oracle_jax`
modules, at module level and inside functions, form no cycle (data flows one way); no
module uses another's private (`_name`) names; configs are data (they import no
`oracle_jax` module)."""
import ast
import pathlib

import oracle_jax

PACKAGE = pathlib.Path(oracle_jax.__file__).parent
REPO = PACKAGE.parent


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
  assert 'oracle_jax.data.streamed' in graph['oracle_jax.data.pipeline']  # inside a function


def test_package_has_no_import_cycle():
  cycle = _cycle(import_graph())
  assert cycle is None, f'import cycle: {cycle}'


def _is_private(name):
  return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def private_uses(source, label, modules, own=None):
  """'label:line name' for each private name of an `oracle_jax` module other than `own`
  that `source` imports (`from oracle_jax.train import _x`) or reads off a module it
  imported (`train._x`, `oracle_jax.train._x`)."""
  tree = ast.parse(source, label)
  aliases, found = {}, []  # local name → the oracle_jax module it names
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name in modules:
          aliases[a.asname or a.name.split('.')[0]] = a.asname and a.name or a.name.split('.')[0]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('oracle_jax'):
      for a in node.names:
        if f'{node.module}.{a.name}' in modules:
          aliases[a.asname or a.name] = f'{node.module}.{a.name}'
        elif _is_private(a.name) and node.module != own:
          found.append((node.lineno, f'{node.module}.{a.name}'))
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _is_private(node.attr):
      base = node.value
      dotted = []
      while isinstance(base, ast.Attribute):
        dotted.insert(0, base.attr)
        base = base.value
      if isinstance(base, ast.Name) and base.id in aliases:
        module = '.'.join([aliases[base.id], *dotted])
        if module in modules and module != own:
          found.append((node.lineno, f'{module}.{node.attr}'))
  return [f'{label}:{line} {name}' for line, name in sorted(found)]


def test_private_name_finder_sees_imports_and_attributes():
  source = ('from oracle_jax import train\nfrom oracle_jax.steps import _hidden, eval_step\n'
            'import oracle_jax.population\ntrain._model_meta(1)\ntrain.fit(2)\n'
            'oracle_jax.population._x\nself._y\ntrain.__name__\n')
  modules = set(import_graph())
  assert private_uses(source, 'probe.py', modules) == [
      'probe.py:2 oracle_jax.steps._hidden', 'probe.py:4 oracle_jax.train._model_meta',
      'probe.py:6 oracle_jax.population._x']
  assert private_uses(source, 'train.py', modules, own='oracle_jax.train') == [
      'train.py:2 oracle_jax.steps._hidden', 'train.py:6 oracle_jax.population._x']


def test_no_module_uses_another_modules_private_names():
  modules = set(import_graph())
  files = [*PACKAGE.rglob('*.py'), *(REPO / 'launch').glob('*.py'),
           *(REPO / 'benchmarks').glob('*.py')]
  found = [use for path in sorted(files) for use in private_uses(
      path.read_text(), str(path.relative_to(REPO)), modules,
      _module_name(path) if path.is_relative_to(PACKAGE) else None)]
  assert not found, 'private names used across modules: ' + '; '.join(found)


def test_configs_import_no_oracle_jax_module():
  found = []
  for path in sorted((REPO / 'configs').glob('*.py')):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level else [])
      found += [f'{path.name}:{node.lineno} {n}' for n in names
                if n == 'oracle_jax' or n.startswith('oracle_jax.')]
  assert not found, 'configs/ must be data (ml_collections and its own helpers): ' + '; '.join(found)


def test_one_checkpoint_not_found_error():
  """Every reader raises errors.CheckpointNotFoundError; no module defines its own."""
  defined = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob('*.py')
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, (ast.ClassDef, ast.Assign)) and 'CheckpointNotFoundError' in (
                 [node.name] if isinstance(node, ast.ClassDef) else
                 [t.id for t in node.targets if isinstance(t, ast.Name)])]
  assert defined == ['errors.py'], defined
