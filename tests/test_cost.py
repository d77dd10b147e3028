"""The cost of making a set (results.json 'cost'): its memory helpers, and a tiny run that records
it and leaves its set as an image folder."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from ddjax.data import read_set_folder
from ddjax.runtime import cost, pipeline


class _Device:
  def __init__(self, stats=None, raises=False, has_call=True):
    self._stats, self._raises = stats, raises
    if not has_call:
      self.memory_stats = None

  def memory_stats(self):
    if self._raises:
      raise NotImplementedError('no memory stats on this backend')
    return self._stats


def test_peak_device_bytes_is_none_without_a_count():
  assert cost.peak_device_bytes(None) is None
  assert cost.peak_device_bytes({}) is None
  assert cost.peak_device_bytes({'bytes_in_use': 5}) is None
  assert cost.peak_device_bytes({'peak_bytes_in_use': 7, 'bytes_in_use': 5}) == 7
  assert cost.devices_peak_bytes([_Device(None), _Device(raises=True),
                                  _Device(has_call=False)]) is None
  assert cost.devices_peak_bytes([_Device({'peak_bytes_in_use': 3}), _Device(None),
                                  _Device({'peak_bytes_in_use': 9})]) == 9
  assert cost.devices_peak_bytes(jax.local_devices()) is None      # CPU keeps no count


def test_peak_host_rss_units():
  assert cost.peak_host_rss_bytes(max_rss=10, platform='linux') == 10 * 1024   # kilobytes
  assert cost.peak_host_rss_bytes(max_rss=10, platform='darwin') == 10         # bytes
  assert cost.peak_host_rss_bytes() > 10 * 2**20     # this process holds JAX: well over 10 MiB


def test_stopwatch_times_the_block_even_when_it_raises():
  ticks = iter([1.0, 3.5])
  with pytest.raises(RuntimeError):
    with cost.stopwatch(clock=lambda: next(ticks)) as watch:
      assert watch.seconds is None
      raise RuntimeError('stop')
  assert watch.seconds == 2.5


def test_run_records_its_cost_and_exports_an_image_folder(tiny_npz, tmp_path):
  cfg = tiny_config(tiny_npz, steps=3)
  cfg.eval.num_models = 0
  workdir = str(tmp_path / 'run')
  results = pipeline.run(cfg, workdir)
  on_disk = json.load(open(os.path.join(workdir, 'results.json')))
  c = on_disk['cost']
  assert c == json.loads(json.dumps(results['cost']))
  assert 0 < c['seconds'] < on_disk['wall_seconds']
  assert c['device_seconds'] == pytest.approx(c['seconds'] * jax.device_count())
  assert c['device'] == {'kind': jax.devices()[0].device_kind, 'platform': 'cpu',
                         'count': jax.device_count(), 'local_count': jax.local_device_count(),
                         'processes': 1}
  assert c['steps'] == 3 and c['steps_this_process'] == 3 and c['resumed_from'] == 0
  assert c['sec_per_step'] == results['distill']['sec_per_step'] > 0
  assert c['pruning_seconds'] is None
  assert c['peak_device_bytes'] is None and c['peak_host_rss_bytes'] > 0
  # the workdir's distilled_images/ holds the set of distilled.npz, 8-bit
  back = read_set_folder(os.path.join(workdir, 'distilled_images'))
  with np.load(os.path.join(workdir, 'distilled.npz')) as f:
    np.testing.assert_allclose(back['x_pixels'], np.clip(f['x_pixels'], 0, 1), atol=1 / 510 + 1e-6)
    np.testing.assert_array_equal(back['y'], f['y'])
    np.testing.assert_array_equal(back['classes'], f['classes'])
    assert back['class_names'] == [str(n) for n in f['class_names']]
