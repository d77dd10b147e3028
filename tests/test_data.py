"""Tests for ddjax.data: every source format on tiny files written here, preprocessing, sampling."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import data
from ddjax.data import sources

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'


# ------------------------------------------------------------------------------------------------
# helpers that write tiny files


def _images(rng, n, h=5, w=4, c=None):
  shape = (n, h, w) if c is None else (n, h, w, c)
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _write_mnist_dir(path, rng, n_train=12, n_test=7, gz=(True, False, False, True)):
  """Writes the four MNIST-layout files (a mix of raw and .gz); returns the arrays written."""
  os.makedirs(path, exist_ok=True)
  arrays = {
      'train-images-idx3-ubyte': _images(rng, n_train),
      'train-labels-idx1-ubyte': rng.integers(0, 10, n_train).astype(np.uint8),
      't10k-images-idx3-ubyte': _images(rng, n_test),
      't10k-labels-idx1-ubyte': rng.integers(0, 10, n_test).astype(np.uint8),
  }
  for (stem, arr), compress in zip(arrays.items(), gz):
    data.write_idx(os.path.join(path, stem + ('.gz' if compress else '')), arr)
  return arrays


def _cifar_batch(rng, n, label_key, k):
  # Mimic the original Python-2 pickles: bytes keys, (n, 3072) uint8, labels as a list.
  x = _images(rng, n, 32, 32, 3)
  chw = x.transpose(0, 3, 1, 2).reshape(n, 3072)
  y = rng.integers(0, k, n)
  d = {b'data': chw, label_key: [int(v) for v in y], b'batch_label': b'x'}
  return pickle.dumps(d, protocol=2), x, y


def _cifar10_files(rng, n=3):
  files, xs, ys = {}, [], []
  for i in range(1, 6):
    files[f'data_batch_{i}'], x, y = _cifar_batch(rng, n, b'labels', 10)
    xs.append(x)
    ys.append(y)
  files['test_batch'], xt, yt = _cifar_batch(rng, n, b'labels', 10)
  names = [f'c{i}'.encode() for i in range(10)]
  files['batches.meta'] = pickle.dumps({b'label_names': names}, protocol=2)
  return files, np.concatenate(xs), np.concatenate(ys), xt, yt


def _assert_split(x_float, x_uint8, y, y_expected):
  assert x_float.dtype == np.float32 and y.dtype == np.int32
  np.testing.assert_array_equal(np.round(x_float * 255).astype(np.uint8), x_uint8)
  np.testing.assert_array_equal(y, y_expected)


# ------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize('suffix', ['', '.gz'])
@pytest.mark.parametrize('dtype', [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
  rng = np.random.default_rng(0)
  arr = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
  path = tmp_path / f'a-idx3{suffix}'
  data.write_idx(path, arr)
  out = data.read_idx(path)
  assert out.dtype == np.dtype(dtype) and out.shape == (3, 4, 5)
  np.testing.assert_array_equal(out, arr)
  labels = rng.integers(0, 10, 7).astype(np.uint8)
  data.write_idx(tmp_path / f'l-idx1{suffix}', labels)
  np.testing.assert_array_equal(data.read_idx(tmp_path / f'l-idx1{suffix}'), labels)


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
  arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  path = tmp_path / 'no-extension'
  data.write_idx(path, arr, compress=True)
  assert path.read_bytes()[:2] == b'\x1f\x8b'
  np.testing.assert_array_equal(data.read_idx(path), arr)


def test_idx_corrupt_raises_with_path(tmp_path):
  arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
  good = tmp_path / 'good'
  data.write_idx(good, arr)
  raw = good.read_bytes()
  cases = {
      'truncated': raw[:-3],
      'badmagic': b'\x01\x02' + raw[2:],
      'badcode': raw[:2] + b'\x42' + raw[3:],
      'short': raw[:2],
      'trailing': raw + b'\x00',
      'badgzip': gzip.compress(raw)[:-10],
  }
  for name, content in cases.items():
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ValueError, match='is not a valid IDX file') as e:
      data.read_idx(p)
    assert str(p) in str(e.value), name


def test_mnist_layout_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  arrays = _write_mnist_dir(tmp_path / 'fm', rng)
  ds = data.load_dataset('fashion_mnist', tmp_path / 'fm', env={}, system_dirs=[])
  assert ds.x_train.shape == (12, 5, 4, 1) and ds.x_test.shape == (7, 5, 4, 1)
  _assert_split(ds.x_train[..., 0], arrays['train-images-idx3-ubyte'], ds.y_train,
                arrays['train-labels-idx1-ubyte'])
  _assert_split(ds.x_test[..., 0], arrays['t10k-images-idx3-ubyte'], ds.y_test,
                arrays['t10k-labels-idx1-ubyte'])
  assert ds.num_classes == 10 and ds.class_names[0] == 'T-shirt/top'
  assert ds.class_names[9] == 'Ankle boot'
  assert ds.source == str(tmp_path / 'fm')


# ------------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_directory_and_tarball(tmp_path):
  rng = np.random.default_rng(2)
  files, x, y, xt, yt = _cifar10_files(rng)
  d = tmp_path / 'cifar-10-batches-py'
  d.mkdir()
  for name, content in files.items():
    (d / name).write_bytes(content)
  tar_path = tmp_path / 'tar' / 'cifar-10-python.tar.gz'
  tar_path.parent.mkdir()
  with tarfile.open(tar_path, 'w:gz') as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))

  loaded = {
      'dir': data.load_dataset('cifar10', d, env={}, system_dirs=[]),
      'parent': data.load_dataset('cifar10', tmp_path, env={}, system_dirs=[]),
      'tar_dir': data.load_dataset('cifar10', tar_path.parent, env={}, system_dirs=[]),
      'tar_file': data.load_dataset('cifar10', tar_path, env={}, system_dirs=[]),
  }
  for how, ds in loaded.items():
    assert ds.x_train.shape == (15, 32, 32, 3), how
    _assert_split(ds.x_train, x, ds.y_train, y)
    _assert_split(ds.x_test, xt, ds.y_test, yt)
    assert ds.class_names == tuple(f'c{i}' for i in range(10)), how
    assert ds.name == 'cifar10'
  assert loaded['tar_file'].source == str(tar_path)
  # The tarball was read in memory, nothing extracted next to it.
  assert sorted(os.listdir(tar_path.parent)) == ['cifar-10-python.tar.gz']


def test_truncated_cifar_tarball_names_the_file(tmp_path):
  from ddjax.main import _message
  files, *_ = _cifar10_files(np.random.default_rng(4))
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w:gz') as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  tar_path = tmp_path / 'cifar-10-python.tar.gz'
  tar_path.write_bytes(buf.getvalue()[:len(buf.getvalue()) * 2 // 3])
  with pytest.raises(ValueError) as e:
    data.load_dataset('cifar10', tar_path, env={}, system_dirs=[])
  text = _message(e.value)
  assert text.startswith(f'file {tar_path} is a damaged tar archive'), text


def test_cifar100_directory(tmp_path):
  rng = np.random.default_rng(3)
  d = tmp_path / 'cifar-100-python'
  d.mkdir()
  train, x, y = _cifar_batch(rng, 6, b'fine_labels', 100)
  test, xt, yt = _cifar_batch(rng, 4, b'fine_labels', 100)
  (d / 'train').write_bytes(train)
  (d / 'test').write_bytes(test)
  names = [f'fine{i}'.encode() for i in range(100)]
  (d / 'meta').write_bytes(pickle.dumps({b'fine_label_names': names}, protocol=2))
  ds = data.load_dataset('cifar100', tmp_path, env={}, system_dirs=[])
  _assert_split(ds.x_train, x, ds.y_train, y)
  _assert_split(ds.x_test, xt, ds.y_test, yt)
  assert ds.num_classes == 100 and ds.class_names[7] == 'fine7'


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path):
  d = tmp_path / 'cifar-10-batches-py'
  d.mkdir()
  files, *_ = _cifar10_files(np.random.default_rng(4), n=1)
  files['data_batch_1'] = pickle.dumps({b'data': os.getcwd}, protocol=2)  # a global function
  for name, content in files.items():
    (d / name).write_bytes(content)
  with pytest.raises(ValueError, match='not allowed'):
    data.load_dataset('cifar10', d, env={}, system_dirs=[])


# ------------------------------------------------------------------------------------------------
# npz


def test_npz_uint8_nhw(tmp_path):
  rng = np.random.default_rng(5)
  x, xt = _images(rng, 9), _images(rng, 4)
  y, yt = rng.integers(0, 3, 9), rng.integers(0, 3, 4)
  y[0], yt[0] = 2, 2  # make sure 3 classes are inferred
  path = tmp_path / 'mine.npz'
  np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
  for where in (path, tmp_path):  # the file, or a directory holding exactly one .npz
    ds = data.load_dataset('npz', where, env={}, system_dirs=[])
    assert ds.x_train.shape == (9, 5, 4, 1)
    _assert_split(ds.x_train[..., 0], x, ds.y_train, y)
    _assert_split(ds.x_test[..., 0], xt, ds.y_test, yt)
    assert ds.num_classes == 3 and ds.source == str(path)


def test_npz_float_and_class_names(tmp_path):
  rng = np.random.default_rng(6)
  x = rng.uniform(size=(4, 3, 3, 2)).astype(np.float32)
  path = tmp_path / 'f.npz'
  np.savez(path, x_train=x, y_train=np.array([0, 1, 0, 1]), x_test=x[:2],
           y_test=np.array([1, 0]), class_names=np.array(['cat', 'dog']))
  ds = data.load_dataset('npz', path, env={}, system_dirs=[])
  np.testing.assert_array_equal(ds.x_train, x)
  assert ds.class_names == ('cat', 'dog') and ds.num_classes == 2
  np.savez(path, x_train=x * 255, y_train=np.array([0, 1, 0, 1]), x_test=x[:2],
           y_test=np.array([1, 0]))
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    data.load_dataset('npz', path, env={}, system_dirs=[])


# ------------------------------------------------------------------------------------------------
# search order and errors


def test_search_order(tmp_path, monkeypatch):
  rng = np.random.default_rng(7)
  a = _write_mnist_dir(tmp_path / 'a' / 'fashion_mnist', rng, n_train=3)  # in data_dir/<name>
  b = _write_mnist_dir(tmp_path / 'b', rng, n_train=4)  # $DDJAX_DATA itself
  c = _write_mnist_dir(tmp_path / 'c', rng, n_train=5)  # "Debian" path
  monkeypatch.setenv('DDJAX_DATA', str(tmp_path / 'b'))
  sys_dirs = [str(tmp_path / 'c')]
  ds = data.load_dataset('fashion_mnist', tmp_path / 'a', system_dirs=sys_dirs)
  assert ds.x_train.shape[0] == 3 and ds.source == str(tmp_path / 'a' / 'fashion_mnist')
  np.testing.assert_array_equal(ds.y_train, a['train-labels-idx1-ubyte'])
  (tmp_path / 'empty').mkdir()  # a data_dir that exists but lacks the files: search on
  ds = data.load_dataset('fashion_mnist', tmp_path / 'empty', system_dirs=sys_dirs)
  assert ds.x_train.shape[0] == 4
  np.testing.assert_array_equal(ds.y_train, b['train-labels-idx1-ubyte'])
  monkeypatch.delenv('DDJAX_DATA')
  ds = data.load_dataset('fashion_mnist', system_dirs=sys_dirs)
  assert ds.x_train.shape[0] == 5
  np.testing.assert_array_equal(ds.y_train, c['train-labels-idx1-ubyte'])


def test_incomplete_dir_is_skipped(tmp_path):
  rng = np.random.default_rng(8)
  _write_mnist_dir(tmp_path / 'full', rng, n_train=6)
  _write_mnist_dir(tmp_path / 'part', rng, n_train=2)
  os.remove(next(p for p in (tmp_path / 'part').iterdir() if p.name.startswith('t10k-labels')))
  ds = data.load_dataset('mnist', tmp_path / 'part', env={'DDJAX_DATA': str(tmp_path / 'full')},
                         system_dirs=[])
  assert ds.x_train.shape[0] == 6 and ds.class_names == tuple('0123456789')


def test_missing_dataset_message(tmp_path):
  env = {'DDJAX_DATA': str(tmp_path / 'env')}
  (tmp_path / 'mine').mkdir()
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.load_dataset('fashion_mnist', tmp_path / 'mine', env=env,
                      system_dirs=[str(tmp_path / 'debian')])
  msg = str(e.value)
  assert isinstance(e.value, FileNotFoundError)
  for p in (tmp_path / 'mine', tmp_path / 'mine' / 'fashion_mnist', tmp_path / 'env',
            tmp_path / 'env' / 'fashion_mnist', tmp_path / 'debian'):
    assert str(p) in msg
  assert msg.index(str(tmp_path / 'mine')) < msg.index(str(tmp_path / 'env'))
  assert msg.index(str(tmp_path / 'env')) < msg.index(str(tmp_path / 'debian'))
  assert 'apt-get install dataset-fashion-mnist' in msg
  assert 'train-images-idx3-ubyte' in msg and 'DDJAX_DATA' in msg
  with pytest.raises(data.DatasetNotFoundError, match='cifar-10-python.tar.gz'):
    data.load_dataset('cifar10', tmp_path, env={}, system_dirs=[])


def test_nonexistent_data_dir_raises_naming_it(tmp_path):
  rng = np.random.default_rng(9)
  _write_mnist_dir(tmp_path / 'env', rng)
  _write_mnist_dir(tmp_path / 'debian', rng)  # stands in for an installed Debian copy
  missing = tmp_path / 'typo'
  for system_dirs in ([str(tmp_path / 'debian')], None):  # None: the real Debian path
    with pytest.raises(data.DatasetNotFoundError) as e:
      data.load_dataset('fashion_mnist', missing, env={'DDJAX_DATA': str(tmp_path / 'env')},
                        system_dirs=system_dirs)
    msg = str(e.value)
    assert str(missing) in msg and 'does not exist' in msg and 'data.dir' in msg
    assert 'leave it empty' in msg and '$DDJAX_DATA' in msg
  assert msg.index('$DDJAX_DATA') < msg.index(FMNIST_DIR)
  # Empty or None: the search order applies.
  for empty in ('', None):
    ds = data.load_dataset('fashion_mnist', empty, env={'DDJAX_DATA': str(tmp_path / 'env')},
                           system_dirs=[str(tmp_path / 'debian')])
    assert ds.source == str(tmp_path / 'env')


def test_default_debian_path_is_searched_last():
  paths = [p for p, _ in data.candidate_paths('fashion_mnist', '/x', env={})]
  assert paths[0] == '/x' and paths[-1] == '/usr/share/datasets/fashion-mnist'
  assert data.candidate_paths('cifar10', env={}) == []


def test_unknown_dataset():
  with pytest.raises(ValueError, match='fashion_mnist') as e:
    data.load_dataset('imagenet-42')
  assert 'imagenet-42' in str(e.value) and 'cifar100' in str(e.value)
  with pytest.raises(ValueError):
    data.default_preprocessing('imagenet-42')


def test_registry():
  assert set(data.DATASETS) == {'fashion_mnist', 'mnist', 'cifar10', 'cifar100', 'npz', 'npy',
                                'image_folder', 'tfds'}
  assert data.DATASETS['fashion_mnist']['debian_path'] == FMNIST_DIR
  assert len(data.DATASETS['cifar10']['class_names']) == 10
  for meta in data.DATASETS.values():
    assert meta['hint'] and meta['format']
  assert data.default_preprocessing('fashion_mnist') == 'standard'
  assert data.default_preprocessing('mnist') == 'standard'
  assert data.default_preprocessing('cifar10') == 'zca'
  assert data.default_preprocessing('cifar100') == 'zca'


# ------------------------------------------------------------------------------------------------
# preprocessing


def _correlated_images(n=400, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.uniform(size=(n, 4, 4, 1))
  x = np.concatenate([base, 0.5 * base + 0.2 * rng.uniform(size=(n, 4, 4, 1)),
                      rng.uniform(size=(n, 4, 4, 1)) * 0.3 + 0.6], axis=-1)
  return x.astype(np.float32)  # (n, 4, 4, 3), channels with different mean/std, correlated


def test_standard_preprocessing():
  x = _correlated_images()
  p = data.fit_preprocessor(x, 'standard')
  z = data.apply_preprocessor(p, x)
  assert z.dtype == np.float32 and z.shape == x.shape
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
  assert not np.allclose(p.std, p.std[0])  # the per-channel stats really differ
  np.testing.assert_allclose(data.invert_preprocessor(p, z), x, atol=1e-6)
  q = data.fit_preprocessor(x, 'none')
  np.testing.assert_array_equal(data.apply_preprocessor(q, x), x)


def test_zca_whitening_spectrum_and_inverse():
  x = _correlated_images()
  reg = 0.1
  p = data.fit_preprocessor(x, 'zca', zca_reg=reg)
  d = 4 * 4 * 3
  assert p.zca.shape == (d, d) and p.zca_inv.shape == (d, d) and p.zca.dtype == np.float32
  xs = ((x.astype(np.float64) - x.mean((0, 1, 2))) / x.std((0, 1, 2))).reshape(-1, d)
  cov = xs.T @ xs / len(xs)
  s = np.linalg.eigvalsh(cov)
  lam = reg * np.trace(cov) / d
  z = data.apply_preprocessor(p, x).reshape(-1, d).astype(np.float64)
  white = np.linalg.eigvalsh(z.T @ z / len(z))
  np.testing.assert_allclose(np.sort(white), np.sort(s / (s + lam)), atol=2e-4)
  assert white.max() < 1.0 and white.max() > 0.9 and white.min() < 0.5  # not plain identity
  back = data.invert_preprocessor(p, data.apply_preprocessor(p, x))
  np.testing.assert_allclose(back, x, atol=1e-4)
  # ZCA (unlike PCA whitening) is symmetric: W = W^T.
  np.testing.assert_allclose(p.zca, p.zca.T, atol=1e-5)


def _kornia_zca(x_nchw, eps):
  """kornia's `ZCAWhitening(eps, unbiased=True)` written out in numpy on (n, C, H, W) images as
  MTT hands them over: mean over samples, unbiased covariance, SVD, 1 / sqrt(S + eps)."""
  flat = x_nchw.reshape(len(x_nchw), -1).astype(np.float64)
  mean = flat.mean(0, keepdims=True)
  cov = np.cov(flat, rowvar=False, ddof=1)
  u, s, _ = np.linalg.svd(cov)
  t = u @ np.diag(1 / np.sqrt(s + eps)) @ u.T
  t_inv = u @ np.diag(np.sqrt(s + eps)) @ u.T
  white = lambda v: ((v.reshape(len(v), -1) - mean) @ t).reshape(v.shape)
  inverse = lambda v: (v.reshape(len(v), -1) @ t_inv + mean).reshape(v.shape)
  return white, inverse


def test_zca_mtt_is_kornias_whitening_on_raw_pixels():
  """'zca_mtt' against kornia's formula computed directly (in PyTorch's NCHW layout, on the raw
  [0, 1] pixels, absolute eps 0.1), on train and unseen images; the inverse round-trips; its
  whitened train covariance has eigenvalues s / (s + eps) of the raw unbiased covariance."""
  x = _correlated_images()
  x_new = _correlated_images(n=20, seed=5)
  p = data.fit_preprocessor(x, 'zca_mtt', zca_reg=0.1)
  assert p.kind == 'zca_mtt' and p.mean.shape == (4, 4, 3) and np.all(p.std == 1)
  white, inverse = _kornia_zca(x.transpose(0, 3, 1, 2), 0.1)
  for v in (x, x_new):
    want = white(v.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(data.apply_preprocessor(p, v), want, atol=2e-5)
  z = data.apply_preprocessor(p, x)
  np.testing.assert_allclose(
      inverse(z.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1), x, atol=1e-5)
  np.testing.assert_allclose(data.invert_preprocessor(p, z), x, atol=1e-5)
  flat = x.reshape(len(x), -1).astype(np.float64)
  s = np.linalg.eigvalsh(np.cov(flat, rowvar=False))
  zf = z.reshape(len(z), -1).astype(np.float64)
  np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.cov(zf, rowvar=False))),
                             np.sort(s / (s + 0.1)), atol=1e-5)
  # not ddjax's 'zca' (standardised, relative regulariser): a different, much smaller scale
  assert np.std(data.apply_preprocessor(data.fit_preprocessor(x, 'zca'), x)) > 1.5 * np.std(z)
  with pytest.raises(ValueError, match='zca_reg'):
    data.fit_preprocessor(x, 'zca_mtt', zca_reg=0.0)


def test_zca_subsample_is_deterministic_and_used():
  x = _correlated_images(n=300, seed=1)
  p1 = data.fit_preprocessor(x, 'zca', zca_max_samples=100)
  p2 = data.fit_preprocessor(x, 'zca', zca_max_samples=100)
  p_all = data.fit_preprocessor(x, 'zca')
  np.testing.assert_array_equal(p1.zca, p2.zca)
  assert not np.allclose(p1.zca, p_all.zca, atol=1e-3)


def test_preprocessor_on_jax_arrays_and_jit():
  x = _correlated_images(n=50)
  p = data.fit_preprocessor(x, 'zca')
  z_np = data.apply_preprocessor(p, x)
  z_jax = jax.jit(lambda v: data.apply_preprocessor(p, v))(jnp.asarray(x))
  assert isinstance(z_jax, jax.Array)
  np.testing.assert_allclose(np.asarray(z_jax), z_np, atol=1e-4)
  back = data.invert_preprocessor(p, z_jax)
  assert isinstance(back, jax.Array)
  np.testing.assert_allclose(np.asarray(back), x, atol=1e-4)


@pytest.mark.parametrize('kind', ['none', 'standard', 'zca', 'zca_mtt'])
def test_clip_to_pixel_range_is_the_pixel_clip_in_preprocessed_space(kind):
  x = _correlated_images(n=80)
  p = data.fit_preprocessor(x, kind)
  inside = data.apply_preprocessor(p, x)
  np.testing.assert_allclose(data.clip_to_pixel_range(p, inside), inside, atol=1e-4)
  wild = 3.0 * x - 1.0                         # a learned set that left [0, 1] both ways
  assert wild.min() < -0.5 and wild.max() > 1.5
  z = data.clip_to_pixel_range(p, data.apply_preprocessor(p, wild))
  np.testing.assert_allclose(data.invert_preprocessor(p, z), np.clip(wild, 0, 1), atol=1e-4)
  z_jax = jax.jit(lambda v: data.clip_to_pixel_range(p, v))(
      jnp.asarray(data.apply_preprocessor(p, wild)))
  assert isinstance(z_jax, jax.Array)
  np.testing.assert_allclose(np.asarray(z_jax), z, atol=1e-4)


@pytest.mark.parametrize('kind', ['none', 'standard', 'zca', 'zca_mtt'])
def test_preprocessor_dict_round_trip(tmp_path, kind):
  x = _correlated_images(n=60)
  p = data.fit_preprocessor(x, kind)
  path = tmp_path / 'p.npz'
  np.savez(path, syn_x=np.zeros(3), **data.preprocessor_to_dict(p, prefix='pre_'))
  with np.load(path, allow_pickle=False) as f:
    q = data.preprocessor_from_dict(f, prefix='pre_')
  assert q.kind == kind
  for field in ('mean', 'std', 'zca', 'zca_inv'):
    a, b = getattr(p, field), getattr(q, field)
    assert (a is None) == (b is None)
    if a is not None:
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(data.apply_preprocessor(q, x), data.apply_preprocessor(p, x))


# ------------------------------------------------------------------------------------------------
# sampling


def _labels_unbalanced():
  return np.array([0] * 5 + [1] * 3 + [2] * 8 + [3] * 4)


def test_class_balanced_indices():
  y = _labels_unbalanced()
  rng = np.random.default_rng(0)
  idx = data.class_balanced_indices(rng, y, 3, 4)
  assert idx.shape == (12,)
  assert len(set(idx.tolist())) == 12
  np.testing.assert_array_equal(y[idx], np.repeat(np.arange(4), 3))
  # All of class 1 (3 images) must be taken; different seeds give different picks elsewhere.
  assert sorted(idx[3:6].tolist()) == [5, 6, 7]
  draws = {tuple(data.class_balanced_indices(np.random.default_rng(s), y, 2, 4)) for s in range(8)}
  assert len(draws) > 1


def test_check_ipc():
  y = _labels_unbalanced()
  data.check_ipc(y, 3, 4)
  with pytest.raises(ValueError, match='ipc=0'):
    data.check_ipc(y, 0, 4)
  with pytest.raises(ValueError, match="class 'b' has only 3 training images; choose ipc <= 3"):
    data.check_ipc(y, 4, 4, class_names=['a', 'b', 'c', 'd'])
  with pytest.raises(ValueError, match="class '4' has only 0"):
    data.check_ipc(y, 1, 5)  # a class without any image


def test_centered_one_hot():
  lab = np.array([0, 3, 9, 9])
  t = data.centered_one_hot(lab, 10)
  assert t.dtype == np.float32 and t.shape == (4, 10)
  np.testing.assert_allclose(t.sum(axis=1), 0.0, atol=1e-6)
  np.testing.assert_allclose(t, np.eye(10)[lab] - 0.1, atol=1e-7)
  assert np.argmax(t, axis=1).tolist() == lab.tolist()
  t100 = data.centered_one_hot(np.array([5]), 100)
  np.testing.assert_allclose(t100, (np.eye(100)[[5]] - 0.01) / np.sqrt(10), atol=1e-7)


def test_init_synthetic():
  rng = np.random.default_rng(0)
  y = _labels_unbalanced()
  x = rng.normal(size=(len(y), 3, 3, 2)).astype(np.float32)
  syn = data.init_synthetic(7, x, y, 2, 4)
  assert syn['x'].shape == (8, 3, 3, 2) and syn['y'].shape == (8, 4)
  assert syn['x'].dtype == np.float32 and syn['y'].dtype == np.float32
  for i, img in enumerate(syn['x']):
    rows = np.flatnonzero((x == img).all(axis=(1, 2, 3)))
    assert len(rows) == 1 and y[rows[0]] == i // 2
  assert np.argmax(syn['y'], axis=1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
  np.testing.assert_allclose(syn['y'].sum(1), 0.0, atol=1e-6)
  # Deterministic in the seed, and equal to real_subset's pick.
  again, idx = data.real_subset(7, x, y, 2, 4)
  np.testing.assert_array_equal(again['x'], syn['x'])
  np.testing.assert_array_equal(x[idx], syn['x'])
  np.testing.assert_array_equal(y[idx], np.repeat(np.arange(4), 2))
  oh = data.init_synthetic(7, x, y, 2, 4, label_init='one_hot')['y']
  np.testing.assert_array_equal(oh, np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2, 3, 3]])
  noise = data.init_synthetic(0, x, y, 5, 4, init='noise')  # noise needs no real image per class
  assert noise['x'].shape == (20, 3, 3, 2)
  assert abs(noise['x'].mean()) < 0.3 and 0.7 < noise['x'].std() < 1.3
  with pytest.raises(ValueError, match='choose ipc <= 3'):
    data.init_synthetic(0, x, y, 4, 4)
  with pytest.raises(ValueError, match='init'):
    data.init_synthetic(0, x, y, 1, 4, init='kmeans')


# ------------------------------------------------------------------------------------------------
# real data


@pytest.mark.skipif(not all(os.path.exists(os.path.join(FMNIST_DIR, f + '.gz'))
                            for f in sources.IDX_FILES), reason='Fashion-MNIST not installed')
def test_real_fashion_mnist():
  ds = data.load_dataset('fashion_mnist', env={})
  assert ds.source == FMNIST_DIR
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), [1000] * 10)
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  assert 0.2 < ds.x_train.mean() < 0.4  # Fashion-MNIST's mean pixel is about 0.286
