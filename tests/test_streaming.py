"""Streaming training sets: Rows views, one-pass statistics, the sampler reading only its rows."""
import os
import tracemalloc

import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import data
from ddjax.config import ConfigError, base_config, validate
from ddjax.data import InMemoryRequiredError, Rows, channel_moments, prepare
from ddjax.runtime import loop
from tests.conftest import make_tiny_arrays


def test_rows_index_like_the_array_and_refuse_to_become_one():
  base = np.random.default_rng(0).normal(size=(50, 3, 2)).astype(np.float32)
  rows = Rows(base, lambda r: r * 2)
  want = base * 2
  for key in (7, -1, slice(3, 40, 5), np.array([9, 2, 2, 49, 0]), np.arange(50) % 3 == 0,
              np.array([], np.int64)):
    np.testing.assert_array_equal(rows[key], want[key])
  sub = rows.subset(np.array([40, 5, 6])).map(lambda r: r + 1)
  assert sub.shape == (3, 3, 2)
  np.testing.assert_array_equal(sub[np.array([2, 0])], want[[6, 40]] + 1)
  with pytest.raises(IndexError):
    rows[50]
  with pytest.raises(InMemoryRequiredError, match='data.streaming=False'):
    np.asarray(rows)
  with pytest.raises(InMemoryRequiredError):
    jnp.asarray(rows)


@pytest.mark.parametrize('chunk_bytes', [1, 700, 1 << 20])
def test_channel_moments_equal_numpy(chunk_bytes):
  x = np.random.default_rng(1).uniform(size=(37, 4, 5, 3)) * [1.0, 3.0, 0.01] + [0, 5, 1e3]
  mean, var = channel_moments(Rows(x), chunk_bytes=chunk_bytes)
  np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0), rtol=1e-12)
  np.testing.assert_allclose(var, x.reshape(-1, 3).var(0), rtol=1e-9)


@pytest.fixture
def npy_dir(tmp_path):
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  ds = data.dataset.make_dataset('npz', x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32),
                                 ('a', 'b', 'c'), 'arrays')
  return data.write_npy(str(tmp_path / 'npy'), ds)


@pytest.mark.parametrize('kind', ['standard', 'zca', 'zca_mtt'])
def test_streamed_run_data_equal_in_memory(npy_dir, kind):
  original = make_tiny_arrays()[0]
  loaded = data.load_dataset('npy', npy_dir)
  np.testing.assert_allclose(loaded.x_train, original, atol=0.5 / 255 + 1e-7)   # stored uint8
  mem = prepare(loaded, kind)
  streamed = prepare(data.load_dataset('npy', npy_dir, streaming=True), kind)
  assert isinstance(streamed.dataset.x_train.base, np.memmap)
  assert isinstance(streamed.x_train, Rows) and isinstance(streamed.targets_train, Rows)
  assert streamed.dataset.class_names == ('a', 'b', 'c')
  for field in ('mean', 'std', 'zca'):
    a, b = getattr(mem.pre, field), getattr(streamed.pre, field)
    assert (a is None) == (b is None)
    if a is not None:
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(streamed.x_test, mem.x_test, atol=1e-4)
  for balanced in (False, True):
    samplers = [loop.make_sampler(d.x_train, d.targets_train, 24, 3, balanced=balanced,
                                  labels=d.y_train) for d in (mem, streamed)]
    for step in (0, 5):
      a, b = (s(step) for s in samplers)
      np.testing.assert_array_equal(b['y'], a['y'])
      np.testing.assert_allclose(b['x'], a['x'], atol=1e-4)
  syn = [data.init_synthetic(0, d.x_train, d.y_train, 2, 3)['x'] for d in (mem, streamed)]
  np.testing.assert_allclose(syn[1], syn[0], atol=1e-4)
  kept = np.array([5, 80, 3])
  np.testing.assert_allclose(streamed.subset(kept).x_train[:], mem.x_train[kept], atol=1e-4)


@pytest.mark.parametrize('streaming', [False, True])
def test_subset_prunes_every_view_of_the_training_rows(npy_dir, streaming):
  """After `PreparedData.subset` (BiLP's preemptive pruning) the loaded dataset's pixels and
  labels are the kept rows too, row for row with x_train / y_train / targets_train; the test set
  and the preprocessor stay."""
  full = prepare(data.load_dataset('npy', npy_dir, streaming=streaming), 'standard')
  kept = np.array([7, 0, 55, 3, 119])
  sub = full.subset(kept)
  ds = sub.dataset
  assert len(ds.y_train) == len(ds.x_train) == len(sub.y_train) == len(sub.x_train) == 5
  np.testing.assert_array_equal(ds.y_train, np.asarray(full.dataset.y_train)[kept])
  np.testing.assert_array_equal(sub.y_train, ds.y_train)
  np.testing.assert_array_equal(np.asarray(sub.targets_train[:]).argmax(-1), ds.y_train)
  np.testing.assert_allclose(ds.x_train[:], np.asarray(full.dataset.x_train[kept]))
  np.testing.assert_allclose(data.apply_preprocessor(sub.pre, ds.x_train[:]), sub.x_train[:],
                             atol=1e-6)
  assert sub.pre is full.pre and sub.x_test is full.x_test
  assert ds.x_test is full.dataset.x_test and ds.class_names == full.dataset.class_names


def _big_npy(path, n=60000, shape=(28, 28, 1), test=500):
  """An .npy directory of n uint8 images written chunk by chunk (never whole in memory)."""
  os.makedirs(path)
  rng = np.random.default_rng(0)
  x = np.lib.format.open_memmap(os.path.join(path, 'x_train.npy'), 'w+', np.uint8, (n,) + shape)
  for i in range(0, n, 10000):
    x[i:i + 10000] = rng.integers(0, 256, (min(10000, n - i),) + shape, dtype=np.uint8)
  x.flush()
  del x
  np.save(os.path.join(path, 'y_train.npy'), (np.arange(n) % 10).astype(np.int32))
  np.save(os.path.join(path, 'x_test.npy'), rng.integers(0, 256, (test,) + shape, np.uint8))
  np.save(os.path.join(path, 'y_test.npy'), (np.arange(test) % 10).astype(np.int32))
  return n * int(np.prod(shape))


def test_streaming_memory_stays_far_below_the_dataset(tmp_path):
  path = str(tmp_path / 'big')
  nbytes = _big_npy(path)                                          # 47 MB uint8, 188 MB float32
  tracemalloc.start()
  try:
    ds = data.load_dataset('npy', path, streaming=True)
    prepared = prepare(ds, 'standard')
    sampler = loop.make_sampler(prepared.x_train, prepared.targets_train, 512, 0,
                                balanced=True, labels=prepared.y_train)
    for step in range(4):
      batch = sampler(step)
    syn = data.init_synthetic(0, prepared.x_train, prepared.y_train, 10, 10)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert isinstance(ds.x_train.base, np.memmap)
  assert batch['x'].shape == (512, 28, 28, 1) and syn['x'].shape == (100, 28, 28, 1)
  # the statistics pass saw every image: uniform 0..255 bytes have mean 127.5 / 255, std ~ 0.2887
  np.testing.assert_allclose(prepared.pre.mean, 0.5, atol=2e-3)
  np.testing.assert_allclose(prepared.pre.std, np.sqrt((256 ** 2 - 1) / 12) / 255, atol=2e-3)
  print(f'peak traced allocation {peak / 2**20:.1f} MiB for a {nbytes / 2**20:.0f} MiB uint8 set')
  # in memory the set alone would take 4 x nbytes as float32 (twice: loaded and preprocessed);
  # streamed, the peak is one statistics chunk (CHUNK_BYTES of float64 and its temporaries)
  assert peak < nbytes / 3, (peak, nbytes)


def test_streaming_is_refused_where_it_cannot_work(tiny_npz):
  cfg = base_config()
  cfg.data.name, cfg.data.dir, cfg.data.streaming = 'npz', tiny_npz, True
  with pytest.raises(ConfigError, match="convert it once with ddjax.data.write_npy"):
    validate(cfg)
  with pytest.raises(ValueError, match='write_npy'):
    data.load_dataset('npz', tiny_npz, streaming=True)
  cfg.data.name, cfg.bilp.prune_fraction = 'npy', 0.2
  with pytest.raises(ConfigError, match='bilp.prune_fraction'):
    validate(cfg)
