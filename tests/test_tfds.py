"""TFDS datasets through tfds.data_source: TFDS's mock data, and a real prepared array_record set.

Skipped when tensorflow-datasets is not installed (`pip install 'ddjax[tfds]'`). Neither test
needs TensorFlow: mock data and reading prepared array_record files run without it.
"""
import os
import sys

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets', reason="tensorflow-datasets is not installed "
                           "(pip install 'ddjax[tfds]')")

from ddjax import data
from ddjax.config import ConfigError, base_config, validate
from ddjax.data import Rows
from ddjax.runtime import loop, pipeline

TINY = os.path.join(os.path.dirname(__file__), 'data', 'tfds_tiny')   # see its make_tiny.py


def test_mock_mnist_in_memory_streamed_and_resized():
  with tfds.testing.mock_data(num_examples=24):
    ds = data.load_dataset('tfds', tfds_name='mnist')
    source = tfds.data_source('mnist', split='train')
    want = np.stack([source[i]['image'] for i in range(len(source))])
    labels = np.array([source[i]['label'] for i in range(len(source))])
    streamed = data.load_dataset('tfds', tfds_name='mnist', streaming=True)
    resized = data.load_dataset('tfds', tfds_name='mnist', image_size=14, channels=3)
    batch_ids = np.array([20, 3, 7])
    streamed_batch = streamed.x_train[batch_ids]        # read while the mock is active
  assert ds.x_train.shape == (24, 28, 28, 1) and ds.x_test.shape == (24, 28, 28, 1)
  assert ds.class_names == tuple(str(i) for i in range(10)) and ds.num_classes == 10
  np.testing.assert_array_equal(ds.x_train, want / np.float32(255))
  np.testing.assert_array_equal(ds.y_train, labels)
  assert isinstance(streamed.x_train, Rows)
  np.testing.assert_array_equal(streamed_batch, ds.x_train[batch_ids])
  np.testing.assert_array_equal(streamed.y_train, ds.y_train)
  assert resized.x_train.shape == (24, 14, 14, 3)
  np.testing.assert_array_equal(resized.x_train[..., 0], resized.x_train[..., 2])   # grey -> RGB


def test_prepared_array_record_dataset_reads_without_tensorflow():
  ds = data.load_dataset('tfds', TINY, tfds_name='ddjax_tiny')
  assert ds.class_names == ('ant', 'bee', 'cat')
  assert ds.x_train.shape == (12, 6, 5, 1) and ds.x_test.shape == (6, 6, 5, 1)
  assert np.bincount(ds.y_train).tolist() == [4, 4, 4]
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    pixels = np.round(x[..., 0] * 255).astype(int)      # pixel [r, q] = 64 c + 4 i + r
    assert np.all(pixels[:, :, 0] // 64 == y[:, None])
    assert np.all(np.diff(pixels, axis=1) == 1) and np.all(np.diff(pixels, axis=2) == 0)
  streamed = data.load_dataset('tfds', TINY, tfds_name='ddjax_tiny', streaming=True)
  prepared = data.prepare(streamed, 'standard')
  sampler = loop.make_sampler(prepared.x_train, prepared.targets_train, 6, 0, balanced=True,
                              labels=prepared.y_train)
  batch = sampler(0)
  assert batch['x'].shape == (6, 6, 5, 1) and np.bincount(batch['y'].argmax(-1)).tolist() == [2] * 3
  # where TensorFlow is not installed (CI) reading works at all; where it is, nothing imported it
  assert 'tensorflow' not in sys.modules


def test_missing_or_unnamed_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(data.DatasetNotFoundError,
                     match='tfds build ddjax_tiny --file_format=array_record'):
    data.load_dataset('tfds', str(tmp_path), tfds_name='ddjax_tiny')
  cfg = base_config()
  cfg.data.name = 'tfds'
  with pytest.raises(ConfigError, match='data.tfds_name'):
    validate(cfg)
  cfg.data.tfds_name, cfg.data.dir, cfg.data.streaming = 'ddjax_tiny', TINY, True
  validate(cfg)
  prepared = pipeline.load_data(cfg)
  assert isinstance(prepared.x_train, Rows) and prepared.class_names == ('ant', 'bee', 'cat')
