"""The shared start-up and config loading of the commands, and the package's import structure."""

import ast
import os
import subprocess
import sys

import pytest

from feadapter_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, 'configs', 'synthetic.py')


def test_load_config_takes_args_and_overrides_and_rejects_unknown_fields():
  config = cli.load_config(
      f'{SYNTHETIC}:quick,method=aim',
      {'model.adapter.width': 8, 'data.data_dir': '/tmp/x y', 'data.crop_scale': (0.5, 1.0)},
  )
  assert config.method == 'aim' and config.model.adapter.kind == 'aim'
  assert config.init.checkpoint == '' and config.init.random_backbone  # quick: asked for
  assert config.model.adapter.width == 8 and config.data.data_dir == '/tmp/x y'
  assert tuple(config.data.crop_scale) == (0.5, 1.0)
  for typo in ('model.widht', 'modle.adapter.width'):
    with pytest.raises(KeyError, match=typo):
      cli.load_config(SYNTHETIC, {typo: 3})
  with pytest.raises(FileNotFoundError, match='missing.py'):
    cli.load_config('configs/missing.py')


def test_with_args_appends_and_a_later_arg_wins():
  assert cli.with_args('c.py') == 'c.py'
  assert cli.with_args('c.py', 'fold=2') == 'c.py:fold=2'
  assert cli.with_args('c.py:method=aim', 'fold=2', 'seed=1') == 'c.py:method=aim,fold=2,seed=1'
  config = cli.load_config(cli.with_args(f'{SYNTHETIC}:quick,seed=1', 'seed=4'))
  assert config.seed == 4


def test_reading_a_config_imports_neither_jax_nor_tensorflow():
  names = ['dfew', 'ferv39k', 'mafw', 'synthetic', 'synthetic_image', 'image_fer']
  code = (
      'import importlib, sys\n'
      f'for name in {names}:\n'
      '  importlib.import_module(f"configs.{name}").get_config()\n'
      "print(sorted(m for m in ('jax', 'tensorflow', 'flax', 'torch') if m in sys.modules))"
  )
  out = subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert out.strip() == '[]'


def _imports(path: str, modules: set[str]) -> set[str]:
  """The package modules the file imports, anywhere in its body: `from a import b` imports the
  module `a.b` when there is one, else `a`. (The package uses absolute imports only.)"""
  found = set()
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      assert not node.level, f'{path}: relative import'
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        found.add(sub if sub in modules else node.module)
  return found & modules


def import_graph() -> dict[str, set[str]]:
  """{module: the package modules it imports} over every module of feadapter_jax/.

  A module's own enclosing packages are left out: they are initialised before it, whatever it
  imports from them.
  """
  paths = {}
  for dirpath, _, files in os.walk(os.path.join(ROOT, 'feadapter_jax')):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        paths[rel.removesuffix('.__init__')] = path
  return {
      m: {i for i in _imports(p, set(paths)) if not m.startswith(i + '.') and i != m}
      for m, p in paths.items()
  }


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 40 and 'feadapter_jax.train' in graph['feadapter_jax.kfold']
  state = {}

  def visit(module, stack):
    state[module] = 'open'
    for dep in sorted(graph[module]):
      if state.get(dep) == 'open':
        raise AssertionError(' -> '.join(stack[stack.index(dep) :] + [dep]))
      if dep not in state:
        visit(dep, stack + [dep])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])


def test_evaluation_and_prediction_do_not_import_the_trainer():
  graph = import_graph()
  for module in ('feadapter_jax.evaluate', 'feadapter_jax.predict', 'feadapter_jax.models.builder'):
    assert 'feadapter_jax.train' not in graph[module], module
