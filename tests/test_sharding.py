"""The mesh and the sharding rules as config strings: parsing, command-line overrides, errors."""

import os
import subprocess
import sys

import jax
import pytest

from feadapter_jax import cli
from feadapter_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, 'configs', 'synthetic.py')


def test_mesh_strings_and_pairs_parse_to_the_same_axes():
  assert sharding.parse_mesh('data=2, fsdp=4') == [('data', 2), ('fsdp', 4)]
  assert sharding.parse_mesh('fsdp=-1') == [('fsdp', -1)]
  # The form of the config.json of runs from before the string form.
  assert sharding.parse_mesh([['data', -1]]) == [('data', -1)]


@pytest.mark.parametrize(
    'spec, shape',
    [('data=-1', {'data': 8}), ('data=2,fsdp=-1', {'data': 2, 'fsdp': 4}), ('fsdp=8', {'fsdp': 8})],
)
def test_make_mesh_fills_in_the_minus_one_axis(spec, shape):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(spec)
  assert dict(mesh.shape) == shape
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    'spec, message',
    [
        ('data=3,fsdp=4', 'needs 12 devices, there are 8'),
        ('data=3,fsdp=-1', 'multiply to 3, which does not divide the 8 devices'),
        ('model=8', "unknown axis 'model'"),
        ('data=2,data=4', "'data' is given twice"),
        ('data=two', "the size of 'data' is not a positive int or -1"),
        ('data=0', "the size of 'data' is not a positive int or -1"),
        ('data=-1,fsdp=-1', 'only one axis may have size -1'),
        ('data', "'data' is not axis=size"),
        ('data=8,', "'' is not axis=size"),
    ],
)
def test_a_bad_mesh_names_the_field_and_the_fault(spec, message):
  with pytest.raises(ValueError, match=r'^config\.mesh=') as error:
    sharding.make_mesh(spec)
  assert message in str(error.value)


def test_rules_keep_the_commas_and_equal_signs_of_their_regexes():
  assert sharding.parse_rules('.*=fsdp') == [('.*', 'fsdp')]
  assert sharding.parse_rules('blocks_{1,2}/.*=replicate, a(?=b).*=fsdp, .*=fsdp') == [
      ('blocks_{1,2}/.*', 'replicate'),
      ('a(?=b).*', 'fsdp'),
      ('.*', 'fsdp'),
  ]
  assert sharding.parse_rules([('.*', 'replicate')]) == [('.*', 'replicate')]


@pytest.mark.parametrize(
    'spec, message',
    [
        ('.*=shard', "unknown strategy 'shard' for '.*'"),
        ('fsdp', "'fsdp' is not regex=strategy"),
        ('(=fsdp', "bad regex '('"),
        ('', "'' is not regex=strategy"),
    ],
)
def test_bad_rules_name_the_field_and_the_fault(spec, message):
  with pytest.raises(ValueError, match=r'^config\.sharding_rules=') as error:
    sharding.parse_rules(spec)
  assert message in str(error.value)


def test_the_mesh_and_rules_are_set_by_overrides_and_by_command_line_flags():
  config = cli.load_config(
      f'{SYNTHETIC}:quick', {'mesh': 'data=2,fsdp=4', 'sharding_rules': '.*=fsdp'}
  )
  assert sharding.parse_mesh(config.mesh) == [('data', 2), ('fsdp', 4)]
  assert sharding.parse_rules(config.sharding_rules) == [('.*', 'fsdp')]
  # config_flags, as every command reads its config; it reads the overrides from sys.argv.
  code = (
      'import sys\n'
      'from absl import flags\n'
      'from feadapter_jax import cli\n'
      'holder = cli.define_config()\n'
      'flags.FLAGS(sys.argv)\n'
      'print(repr(holder.value.mesh), repr(holder.value.sharding_rules))\n'
  )
  args = [
      f'--config={SYNTHETIC}:quick',
      '--config.mesh=fsdp=-1',
      '--config.sharding_rules=blocks_{1,2}/.*=replicate,.*=fsdp',
  ]
  out = subprocess.run(
      [sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert out.split() == ["'fsdp=-1'", "'blocks_{1,2}/.*=replicate,.*=fsdp'"]
