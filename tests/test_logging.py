"""Logging: TensorBoard summaries of a run (log.tensorboard) and distilled.png's label captions."""
import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

import example_method  # noqa: F401  (registers linear_krr: a run of a few seconds)
from conftest import make_tiny_arrays, tiny_config
from ddjax import data
from ddjax.runtime import export, pipeline

event_pb2 = pytest.importorskip('tensorboardX.proto.event_pb2')

NAMES = ('T-shirt/top', 'Trouser', 'Pullover')


def test_hard_labels_have_no_captions():
  classes = np.array([0, 0, 1, 2])
  hot = np.eye(3, dtype=np.float32)[classes]
  assert export.label_captions(hot, classes, NAMES) is None
  centred = data.centered_one_hot(classes, 3)
  assert export.label_captions(centred, classes, NAMES) is None


def test_captions_name_the_top_label_and_its_weight():
  classes = np.array([0, 0, 1, 2])
  y = np.array([[0.83, 0.10, 0.07],
                [0.20, 0.30, 0.50],       # learned away from its column's class
                [0.00, 1.00, 0.00],       # still hard, but the set as a whole is soft
                [-0.1, 0.02, 0.904]], np.float32)
  assert export.label_captions(y, classes, NAMES) == [
      'T-shirt/top 0.83', 'Pullover 0.50', 'Trouser 1.00', 'Pullover 0.90']
  with pytest.raises(ValueError, match='do not match'):
    export.label_captions(y[:3], classes, NAMES)


def test_captioned_png_adds_a_caption_band_under_each_row():
  x = np.full((4, 6, 6, 1), 0.5, np.float32)
  classes = np.array([0, 0, 1, 2])
  soft = np.full((4, 3), 1 / 3, np.float32)
  plain = export.distilled_image(x, np.eye(3, dtype=np.float32)[classes], classes, NAMES)
  captioned = export.distilled_image(x, soft, classes, NAMES)
  assert captioned.shape[1] == plain.shape[1]
  band = (captioned.shape[0] - plain.shape[0]) / 2            # two rows of images
  assert band == int(band) and band >= 16                     # two lines of text per row
  assert (captioned[-int(band):] < 128).any()                 # ink in the last caption band


def _events(logdir):
  """Every Event of the TFRecord event files in logdir (length, crc, payload, crc records)."""
  out = []
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      raw = f.read()
    pos = 0
    while pos < len(raw):
      (n,) = struct.unpack('<Q', raw[pos:pos + 8])
      out.append(event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n]))
      pos += 12 + n + 4
  return out


def test_resumed_writer_hides_what_the_interrupted_run_logged_after_its_checkpoint(tmp_path):
  from ddjax.runtime.summaries import Summaries
  first = Summaries(str(tmp_path))
  first.begin(0)
  for step in range(1, 6):
    first.scalars(step, {'loss': 1.0 / step})
  first.close()
  resumed = Summaries(str(tmp_path))
  resumed.begin(3)                             # restored from the checkpoint at step 3
  resumed.scalars(4, {'loss': 0.5})
  resumed.close()
  starts = [e.step for e in _events(str(tmp_path)) if e.HasField('session_log')
            and e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [4]                         # TensorBoard drops the older events of step >= 4


def test_streamed_run_writes_tensorboard_summaries(tmp_path):
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  ds = data.dataset.make_dataset('npy', x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32),
                                 ('a', 'b', 'c'), 'arrays')
  cfg = tiny_config(data.write_npy(str(tmp_path / 'npy'), ds))
  cfg.method, cfg.eval.num_models = 'linear_krr', 0           # no network: seconds, not minutes
  cfg.data.name, cfg.data.streaming = 'npy', True
  cfg.log.tensorboard, cfg.log.image_every = True, 4
  workdir = str(tmp_path / 'run')
  results = pipeline.run(cfg, workdir)
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  scalars, images = {}, {}
  for e in _events(os.path.join(workdir, 'tensorboard')):
    for v in e.summary.value:
      if v.HasField('image'):
        images[(v.tag, e.step)] = v.image
      else:
        scalars[(v.tag, e.step)] = v.simple_value
  assert len(records) == cfg.distill.steps and 'loss' in records[0]
  for r in records:                          # every metrics.jsonl value, under distill/<name>
    for k, v in r.items():
      if k != 'step':
        assert scalars[(f'distill/{k}', r['step'])] == pytest.approx(v, rel=1e-6)
  assert sorted(step for tag, step in images) == [4, 6]      # every 4 steps and the last
  png = Image.open(io.BytesIO(images[('distill/images', 6)].encoded_image_string))
  on_disk = Image.open(os.path.join(workdir, 'distilled.png'))   # the final set, the same picture
  np.testing.assert_array_equal(np.asarray(png), np.asarray(on_disk.convert('RGB')))
  assert scalars[('results/distill/steps', 6)] == 6
  assert scalars[('results/distill/sec_per_step', 6)] == pytest.approx(
      results['distill']['sec_per_step'], rel=1e-6)
