"""Shipped configs give the same distilled sets as before the registry redesign.

tests/golden/<config>.npz hold the sets the pre-registry code (commit 39bbfea) distilled from the
tiny dataset of conftest with the overrides below, for one config per method and wrapper (FRePo +
ISA, KIP + ISA, RFAD with its learned Platt temperature, DM, and DSA on IDC's multi-formation with
both BiLP levels). A structural change must leave them equal to float tolerance; a deliberate
change of a method's behaviour regenerates its file (and says so in the commit).
"""
import os

import numpy as np
import pytest

from conftest import load_shipped_config, make_tiny_arrays
from ddjax.runtime import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, 'tests', 'golden')
# KIP's kernel solves amplify float reassociation: the XLA optimisation level the suite compiles at
# (conftest) moves kip_isa's set by 2.4e-4 on entries of size ~1.8; every other set by < 1e-6.
ATOL = {'kip_isa': 1e-3}
# Shipped defaults changed since a golden set was made, pinned to the values it was made with (a
# config value, not the method: frepo_isa's CPU image lr is now 1e-2; its golden set used 3e-3).
MADE_WITH = {'frepo_isa': {'lr': 3e-3}}


def _config(name, npz):
  cfg = load_shipped_config(name)
  cfg.data.name, cfg.data.dir = 'npz', npz
  cfg.model.width, cfg.model.depth = 8, 2
  cfg.eval.num_models = 0
  cfg.distill.steps = 4
  cfg.distill.batch_size = 24
  if cfg.distill.batch_per_class:
    cfg.distill.batch_per_class = 8
  cfg.checkpoint.every, cfg.log.every = 2, 1
  if cfg.dc.iterations:
    cfg.dc.iterations = 3
  cfg.frepo.num_models, cfg.frepo.max_online_updates = 2, 3
  for key, value in MADE_WITH.get(name, {}).items():
    setattr(cfg.distill, key, value)
  cfg.rfad.width, cfg.rfad.num_models = 8, 2
  cfg.bilp.score_trials, cfg.bilp.score_epochs, cfg.bilp.score_width = 1, 2, 4
  if cfg.bilp.adaptive_beta > 0:
    cfg.bilp.adaptive_every = 2
  return cfg


@pytest.fixture(scope='module')
def golden_npz(tmp_path_factory):
  x_tr, y_tr, x_te, y_te = make_tiny_arrays(per_class=40)
  path = str(tmp_path_factory.mktemp('golden') / 'tiny.npz')
  np.savez(path, x_train=(x_tr[..., 0] * 255).astype(np.uint8), y_train=y_tr,
           x_test=(x_te[..., 0] * 255).astype(np.uint8), y_test=y_te)
  return path


@pytest.mark.parametrize('name', ['frepo_isa', 'kip_isa', 'rfad', 'dm', 'bilp_idc'])
def test_shipped_config_distils_the_same_set_as_before(name, golden_npz, tmp_path):
  pipeline.run(_config(name, golden_npz), str(tmp_path / name))
  got = np.load(tmp_path / name / 'distilled.npz')
  want = np.load(os.path.join(GOLDEN, name + '.npz'))
  for key in ('x', 'y'):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=ATOL.get(name, 1e-5),
                               err_msg=key)
