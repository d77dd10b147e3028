"""ddjax's XLA flag defaults (ddjax/infra/xla_flags.py): added once, a user's own value wins,
opt-out by environment; importing ddjax applies them before JAX's backend starts."""
import os
import subprocess
import sys

from ddjax.infra import xla_flags

YNN = '--xla_cpu_experimental_ynn_fusion_type'


def test_defaults_are_appended_once_and_a_users_value_wins():
  env = {'XLA_FLAGS': '--xla_backend_optimization_level=0'}
  assert xla_flags.apply_defaults(env) == [f'{YNN}=']
  assert env['XLA_FLAGS'].split() == ['--xla_backend_optimization_level=0', f'{YNN}=']
  assert xla_flags.apply_defaults(env) == []          # idempotent
  assert env['XLA_FLAGS'].count(YNN) == 1
  user = {'XLA_FLAGS': f'{YNN}=individual_dot'}
  assert xla_flags.apply_defaults(user) == []
  assert user['XLA_FLAGS'] == f'{YNN}=individual_dot'
  empty = {}
  xla_flags.apply_defaults(empty)
  assert empty['XLA_FLAGS'] == f'{YNN}='
  off = {xla_flags.OPT_OUT: '0'}
  assert xla_flags.apply_defaults(off) == [] and 'XLA_FLAGS' not in off


def test_importing_ddjax_sets_the_flags_before_jax_starts():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  code = ('import jax, ddjax, os; import jax.numpy as jnp; jnp.ones(2).block_until_ready(); '
          'print(os.environ["XLA_FLAGS"])')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == f'{YNN}='
