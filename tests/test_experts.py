"""Expert-trajectory buffers (ddjax.distill.experts), GSAM and PAD's FIEX (ddjax.scoring.fiex)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import tiny_config
from ddjax.distill import experts
from ddjax.scoring import fiex

EPOCHS = 3


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
  from conftest import make_tiny_arrays
  from ddjax.runtime.pipeline import load_data
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  path = tmp_path_factory.mktemp('data') / 'tiny.npz'
  np.savez(path, x_train=(x_tr[..., 0] * 255).astype(np.uint8), y_train=y_tr,
           x_test=(x_te[..., 0] * 255).astype(np.uint8), y_test=y_te)
  return load_data(tiny_config(str(path)))


def _cfg(directory, **expert):
  from ddjax.config import base_config
  cfg = base_config()
  cfg.data.name = 'npz'
  cfg.model.update(dict(depth=1, width=4, norm='instance'))
  cfg.expert.update(dict(dir=str(directory), num_experts=3, epochs=EPOCHS, batch_size=32,
                         lr=0.05))
  cfg.expert.update(expert)
  return cfg


def _reference_trajectories(cfg, data, epochs):
  """Each expert alone (no vmap), from the keys the module docstring documents."""
  from ddjax.augment.dsa import dsa, dsa_strategy_for
  from ddjax.models import from_config
  from ddjax.models.training import cross_entropy, epoch_batches, fresh_carry, make_train_step
  e = cfg.expert
  model = from_config(cfg.model, data.num_classes)
  opt = experts.make_optimizer(e.lr, e.momentum, e.weight_decay)
  strategy = dsa_strategy_for(str(data.dataset.name))
  step = jax.jit(make_train_step(model, opt, cross_entropy, lambda k, x: dsa(k, x, strategy)))
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train, jnp.int32)
  root = jax.random.fold_in(jax.random.PRNGKey(e.seed), 0)
  out = []
  for i in range(e.num_experts):
    k_init, k_data = jax.random.split(jax.random.fold_in(root, i))
    carry = fresh_carry(model, k_init, data.image_shape, opt)
    snaps = [ravel_pytree(carry[0])[0]]
    for ep in range(epochs):
      k_ep = jax.random.fold_in(k_data, ep)
      batches = epoch_batches(k_ep, len(y), e.batch_size)
      for b in range(batches.shape[0]):
        carry, _ = step(carry, x[batches[b]], y[batches[b]], jax.random.fold_in(k_ep, b + 1))
      snaps.append(ravel_pytree(carry[0])[0])
    out.append(np.stack(snaps))
  return np.stack(out)   # (E, epochs + 1, P)


@pytest.fixture(scope='module')
def trained(tiny_data, tmp_path_factory):
  cfg = _cfg(tmp_path_factory.mktemp('buf') / 'a')
  lines = []
  buf = experts.get_buffer(cfg, tiny_data, progress=lines.append)
  return cfg, buf, lines


def test_vmapped_experts_equal_separate_runs_and_snapshot_reads_the_row(tiny_data, trained,
                                                                       tmp_path):
  cfg, buf, lines = trained     # the backend's default mode ('loop' on CPU)
  assert buf.trained_now and buf.num_experts == 3 and buf.num_epochs == EPOCHS
  vmapped = experts.get_buffer(_cfg(tmp_path / 'v'), tiny_data, lambda line: None, mode='vmap')
  ref = _reference_trajectories(cfg, tiny_data, EPOCHS)
  assert ref.shape == (3, EPOCHS + 1, buf.dim)
  for i in range(3):
    np.testing.assert_allclose(buf.trajectory(i), ref[i], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped.trajectory(i), ref[i], rtol=1e-5, atol=1e-5)
  # the experts differ from each other and move
  assert np.abs(ref[0, -1] - ref[1, -1]).max() > 1e-2
  assert np.abs(ref[0, -1] - ref[0, 0]).max() > 1e-2
  # one row of the epoch file, and unravel gives the flax params back
  row = buf.snapshot(2, 1)
  np.testing.assert_array_equal(row, np.load(experts.epoch_path(buf.path, 1))[2])
  params = buf.unravel(jnp.asarray(row))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(buf.template)
  np.testing.assert_array_equal(ravel_pytree(params)[0], row)
  with pytest.raises(IndexError):
    buf.snapshot(3, 0)
  with pytest.raises(IndexError):
    buf.snapshot(0, EPOCHS + 1)
  index = json.load(open(os.path.join(buf.path, experts.INDEX)))
  assert index['finished_epochs'] == EPOCHS and len(index['final_test_acc']) == 3
  assert np.mean(index['final_test_acc']) > 0.5      # 3 classes: chance is 1/3
  assert 'test acc' in lines[-1] and 'ETA' in lines[-1]


class Killed(Exception):
  pass


def test_killed_job_resumes_equal_and_more_epochs_extend(tiny_data, trained, tmp_path):
  _, full, _ = trained
  directory = tmp_path / 'b'

  def kill_after_first(line):
    if line.startswith('epoch 1/'):
      raise Killed()

  with pytest.raises(Killed):   # killed after epoch 1's files; chunks of 2 + 1 experts
    experts.get_buffer(_cfg(directory, epochs=2, parallel=2), tiny_data, kill_after_first)
  assert json.load(open(directory / experts.INDEX))['finished_epochs'] == 1
  lines = []
  buf = experts.get_buffer(_cfg(directory, epochs=2, parallel=2), tiny_data, lines.append)
  assert 'from epoch 1' in lines[0] and buf.num_epochs == 2
  buf = experts.get_buffer(_cfg(directory, epochs=EPOCHS, parallel=2), tiny_data, lines.append)
  assert buf.num_epochs == EPOCHS
  for e in range(EPOCHS + 1):
    np.testing.assert_allclose(np.load(experts.epoch_path(buf.path, e)),
                               np.load(experts.epoch_path(full.path, e)), rtol=1e-6, atol=1e-6)
  # a finished buffer asked for fewer epochs or experts is only opened
  again = experts.get_buffer(_cfg(directory, epochs=1, num_experts=2), tiny_data, lines.append)
  assert not again.trained_now and again.num_experts == 2 and again.num_epochs == EPOCHS


def test_a_buffer_of_other_settings_is_refused_naming_the_key(tiny_data, trained):
  cfg, buf, _ = trained
  directory = buf.path
  with pytest.raises(experts.ExpertMismatch, match=r'expert\.lr: 0\.05 -> 0\.1'):
    experts.get_buffer(_cfg(directory, lr=0.1), tiny_data)
  with pytest.raises(experts.ExpertMismatch, match=r'model\.width'):
    c = _cfg(directory)
    c.model.width = 8
    experts.get_buffer(c, tiny_data)
  with pytest.raises(experts.ExpertMismatch, match=r'expert\.num_experts: 3 -> 4'):
    experts.get_buffer(_cfg(directory, num_experts=4), tiny_data)
  with pytest.raises(experts.ExpertMismatch, match=r'expert\.gsam'):
    experts.get_buffer(_cfg(directory, gsam=True), tiny_data)
  # parallel and dir do not shape trajectories; the default directory hashes the rest
  assert experts.get_buffer(_cfg(directory, parallel=1), tiny_data).num_epochs == EPOCHS
  c = _cfg('')
  assert experts.buffer_dir(c, tiny_data).startswith(os.path.join('runs', 'buffers', 'npz_'))
  assert experts.buffer_dir(c, tiny_data) == experts.buffer_dir(_cfg('', epochs=50), tiny_data)
  assert experts.buffer_dir(c, tiny_data) != experts.buffer_dir(_cfg('', lr=0.1), tiny_data)


def test_the_default_directory_is_the_one_buffers_were_written_to(tiny_data):
  """The hash of the record (without expert.epochs) names runs/buffers/<dataset>_<hash>: pinned,
  so the buffers trained before keep being found."""
  assert experts.buffer_dir(_cfg(''), tiny_data) == os.path.join('runs', 'buffers',
                                                                  'npz_cf0d272ba0')


def _copy(buf, tmp_path):
  import shutil
  return shutil.copytree(buf.path, tmp_path / 'copy')


def test_a_truncated_or_damaged_snapshot_is_named_with_what_to_do(tiny_data, trained, tmp_path):
  _, buf, _ = trained
  path = _copy(buf, tmp_path)
  snapshot = experts.epoch_path(path, 1)
  size = os.path.getsize(snapshot)
  with open(snapshot, 'r+b') as f:            # a copy cut short
    f.truncate(size - 100)
  with pytest.raises(experts.DamagedBuffer) as e:
    experts.get_buffer(_cfg(path), tiny_data).snapshot(0, 1)
  assert f'expert snapshot {snapshot} is unreadable' in str(e.value)
  assert f'delete the buffer directory {path}' in str(e.value)
  rows = np.load(experts.epoch_path(buf.path, 1))
  np.save(snapshot, rows[:2])                 # another buffer's file
  with pytest.raises(experts.DamagedBuffer, match=r'holds float32 \(2, \d+\), not'):
    experts.get_buffer(_cfg(path), tiny_data).snapshot(0, 1)
  np.save(snapshot, rows)
  with open(snapshot, 'r+b') as f:            # bytes overwritten in place: NaNs in expert 1's row
    f.seek(size - rows.nbytes + rows.shape[1] * 4 + 40)
    f.write(b'\xff' * 64)
  opened = experts.get_buffer(_cfg(path), tiny_data)
  np.testing.assert_array_equal(opened.snapshot(0, 1), rows[0])
  with pytest.raises(experts.DamagedBuffer) as e:
    opened.snapshot(1, 1)
  assert f'expert snapshot {snapshot} holds NaN or inf' in str(e.value)
  assert 'delete the buffer directory' in str(e.value) and 'diverged' in str(e.value)


@pytest.mark.parametrize('name', ['record.json', 'index.json'])
def test_a_damaged_buffer_record_or_index_names_its_file(tiny_data, trained, tmp_path, name):
  from ddjax.infra.artifacts import RecordError
  _, buf, _ = trained
  path = _copy(buf, tmp_path)
  text = open(os.path.join(path, name)).read()
  with open(os.path.join(path, name), 'w') as f:
    f.write(text[:len(text) // 3])
  with pytest.raises(RecordError) as e:
    experts.get_buffer(_cfg(path), tiny_data)
  assert os.path.join(path, name) in str(e.value) and 'delete the buffer directory' in str(e.value)


# -- FIEX ------------------------------------------------------------------------------------------
SCHEDULE = dict(init_ratio=0.75, add_end_epoch=20, remove_epochs=(40, 60),
                remove_ratios=(0.1, 0.2))


@pytest.mark.parametrize('n, want', [
    (6000, {0: 4500, 10: 5250, 20: 6000, 21: 6000, 40: 6000, 41: 5400, 60: 5400, 61: 4800,
            99: 4800}),
    (500, {0: 375, 20: 500, 40: 500, 41: 450, 61: 400}),
])
def test_fiex_counts_follow_the_data_not_5000(n, want):
  for epoch, count in want.items():
    assert list(fiex.fiex_counts([n, n], epoch, **SCHEDULE)) == [count, count], epoch
  assert list(fiex.fiex_counts([n, 40], 0, **SCHEDULE)) == [int(0.75 * n), 30]


def test_fiex_keeps_the_easiest_of_each_class():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=300)
  scores = rng.uniform(size=300)
  order = fiex.difficulty_order(scores, labels, 3)
  for epoch, easiest in ((0, True), (50, False), (70, False)):
    kept = fiex.fiex_indices(order, epoch, **SCHEDULE)
    counts = fiex.fiex_counts([np.sum(labels == c) for c in range(3)], epoch, **SCHEDULE)
    for c in range(3):
      mine = np.flatnonzero(labels == c)
      k = np.intersect1d(kept, mine)
      assert len(k) == counts[c]
      s = np.sort(scores[mine])
      if easiest:      # the kept ones are the lowest EL2N
        np.testing.assert_allclose(np.sort(scores[k]), s[:counts[c]])
      else:            # the dropped ones are the lowest EL2N
        np.testing.assert_allclose(np.sort(scores[k]), s[len(mine) - counts[c]:])


def test_fiex_gsam_buffer_trains_on_the_schedule_and_caches_scores(tiny_data, tmp_path,
                                                                   monkeypatch):
  cfg = _cfg(tmp_path / 'f', epochs=2, num_experts=2, fiex=True, gsam=True,
             fiex_add_end_epoch=2, fiex_remove_epochs=(3, 4), fiex_score_models=2,
             fiex_score_epochs=1)

  def kill(line):
    if line.startswith('epoch 1/'):
      raise Killed()

  with pytest.raises(Killed):
    experts.get_buffer(cfg, tiny_data, kill)
  monkeypatch.setattr(fiex, 'el2n_difficulty', lambda *a, **k: pytest.fail('scores recomputed'))
  buf = experts.get_buffer(cfg, tiny_data, lambda line: None)
  index = buf.index
  assert index['fiex_size'] == [3 * 30, 3 * 35]           # 40 per class: 0.75, 0.875
  assert np.all(np.isfinite(index['train_loss']))
  assert buf.record['expert']['gsam_adaptive'] is True
  assert any(f.startswith('scores_') for f in os.listdir(buf.path))


# -- GSAM ------------------------------------------------------------------------------------------
def _np_loss_grad(w, X, y):
  """Logistic loss mean log(1 + exp(-y X w)) and its gradient, in numpy (float64)."""
  z = y * (X @ w)
  return np.mean(np.log1p(np.exp(-z))), -(X.T @ (y / (1 + np.exp(z)))) / len(y)


@pytest.mark.parametrize('adaptive', [False, True])
def test_gsam_direction_matches_numpy(adaptive):
  rng = np.random.default_rng(1)
  X, y = rng.normal(size=(16, 5)), np.sign(rng.normal(size=16))
  w = rng.normal(size=5)
  rho, alpha = 0.3, 0.4
  _, g = _np_loss_grad(w, X, y)
  if adaptive:
    e_w = rho * w ** 2 * g / np.linalg.norm(np.abs(w) * g)
  else:
    e_w = rho * g / np.linalg.norm(g)
  _, gp = _np_loss_grad(w + e_w, X, y)
  g_perp = g - (g @ gp) / (gp @ gp) * gp
  want = gp - alpha * g_perp

  Xj, yj = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)

  def loss_fn(p):   # split over two leaves to exercise the tree sums
    wv = jnp.concatenate([p['a'], p['b']])
    return jnp.mean(jnp.log1p(jnp.exp(-yj * (Xj @ wv)))), None

  params = {'a': jnp.asarray(w[:2], jnp.float32), 'b': jnp.asarray(w[2:], jnp.float32)}
  (value, _), d = experts.gsam_gradient(loss_fn, params, rho, alpha, adaptive)
  got = np.concatenate([np.asarray(d['a']), np.asarray(d['b'])])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(value), _np_loss_grad(w, X, y)[0], rtol=1e-5)
  # alpha = 0 is SAM's gradient at the perturbed point
  (_, _), d0 = experts.gsam_gradient(loss_fn, params, rho, 0.0, adaptive)
  np.testing.assert_allclose(np.concatenate([d0['a'], d0['b']]), gp, rtol=1e-4, atol=1e-6)


def test_optimizer_is_pytorch_sgd_with_coupled_l2():
  opt = experts.make_optimizer(0.1, momentum=0.9, weight_decay=0.01)
  w = {'w': jnp.asarray([1.0, -2.0])}
  g = {'w': jnp.asarray([0.5, 0.5])}
  state = opt.init(w)
  buf = np.zeros(2)
  wn = np.array([1.0, -2.0])
  for _ in range(3):
    upd, state = opt.update(g, state, w)
    w = jax.tree_util.tree_map(jnp.add, w, upd)
    d = np.array([0.5, 0.5]) + 0.01 * wn
    buf = 0.9 * buf + d
    wn = wn - 0.1 * buf
  np.testing.assert_allclose(np.asarray(w['w']), wn, rtol=1e-6)


_SHARDED = r'''
import sys
sys.path.insert(0, 'tests')
import jax, numpy as np
from conftest import make_tiny_arrays, tiny_config
from ddjax.runtime.pipeline import load_data
from ddjax.distill import experts
from test_experts import _cfg
assert jax.local_device_count() == 2
x_tr, y_tr, x_te, y_te = make_tiny_arrays()
np.savez(sys.argv[1] + '/tiny.npz', x_train=(x_tr[..., 0] * 255).astype(np.uint8), y_train=y_tr,
         x_test=(x_te[..., 0] * 255).astype(np.uint8), y_test=y_te)
data = load_data(tiny_config(sys.argv[1] + '/tiny.npz'))
quiet = lambda line: None
a = experts.get_buffer(_cfg(sys.argv[1] + '/s', num_experts=2, epochs=1), data, quiet, 'vmap')
b = experts.get_buffer(_cfg(sys.argv[1] + '/l', num_experts=2, epochs=1), data, quiet, 'loop')
assert experts.shardings(2)[0] is not None
np.testing.assert_allclose(a.trajectory(1), b.trajectory(1), rtol=1e-5, atol=1e-5)
print('OK')
'''


def test_experts_sharded_over_two_devices_equal_one_device(tmp_path):
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-c', _SHARDED, str(tmp_path)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]



_TWO_PROCESSES = r'''
import sys
sys.path.insert(0, 'tests')
import jax, numpy as np
from conftest import tiny_config
from ddjax.infra import distributed
from ddjax.runtime.pipeline import load_data
from ddjax.distill import experts
from test_experts import _cfg
cfg = _cfg(sys.argv[2], dsa=False, epochs=2)     # no DSA: compiles in a third of the time
for flag in sys.argv[3:]:            # the launcher's --config.distributed.* flags
  key, value = flag[len('--config.distributed.'):].split('=', 1)
  cfg.distributed[key] = type(cfg.distributed[key])(value)
assert distributed.initialize(cfg.distributed) and jax.process_count() == 2
buf = experts.get_buffer(cfg, load_data(tiny_config(sys.argv[1])),
                         print if distributed.is_main() else (lambda line: None))
assert buf.trained_now and buf.num_epochs == 2
print('OK', jax.process_index())
'''


def test_experts_shared_by_two_processes_equal_one_process(tiny_data, tmp_path):
  """Two processes train experts 0, 2 and 1; process 0's files equal the one-process buffer's
  (trained here meanwhile)."""
  import subprocess
  import sys
  from conftest import ROOT, make_tiny_arrays
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()     # the data of the tiny_data fixture
  np.savez(tmp_path / 'tiny.npz', x_train=(x_tr[..., 0] * 255).astype(np.uint8), y_train=y_tr,
           x_test=(x_te[..., 0] * 255).astype(np.uint8), y_test=y_te)
  script = tmp_path / 'two.py'
  script.write_text(_TWO_PROCESSES)
  two = str(tmp_path / 'two')
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'launch', 'multiprocess.py'), '-n=2',
       '--devices_per_process=1', f'--entry={script} {tmp_path / "tiny.npz"} {two}'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  ref = experts.get_buffer(_cfg(tmp_path / 'one', dsa=False, epochs=2), tiny_data,
                           lambda line: None)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0 and 'OK 0' in out and 'OK 1' in out, err[-3000:]
  assert 'shared by 2 processes' in out and out.count('epoch 2/2') == 1
  for e in range(3):      # each expert's trajectory depends only on its keys: the same bits
    np.testing.assert_array_equal(np.load(experts.epoch_path(two, e)),
                                  np.load(experts.epoch_path(ref.path, e)))
  index, ref_index = (json.load(open(os.path.join(p, experts.INDEX))) for p in (two, ref.path))
  assert index['final_test_acc'] == ref_index['final_test_acc']
  np.testing.assert_allclose(index['train_loss'], ref_index['train_loss'], rtol=1e-6)
  with np.load(os.path.join(two, experts.CARRY)) as a, \
      np.load(os.path.join(ref.path, experts.CARRY)) as b:
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
      if k.startswith('leaf_'):
        np.testing.assert_array_equal(a[k], b[k])
