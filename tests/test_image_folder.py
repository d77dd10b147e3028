"""Image folders (torchvision ImageFolder layout): classes, sizes, channels, splits, errors."""
import os

import numpy as np
import pytest
from PIL import Image

from ddjax import data
from ddjax.config import ConfigError, base_config, validate
from ddjax.runtime import pipeline

# Each class's images are solid colours: resizing and cropping keep them exactly.
COLOURS = {'zebra': (200, 10, 30), 'ant': (0, 120, 250), 'Moth': (90, 90, 90)}


def _write(path, colour, size, mode='RGB'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.new('RGB', size, colour)
  if mode == 'P':
    img = img.convert('P', palette=Image.ADAPTIVE)       # a palette image keeps the colour
  elif mode != 'RGB':
    img = img.convert(mode)
  img.save(path, **({'quality': 100, 'subsampling': 0} if path.endswith('jpg') else {}))


def _folder(root, per_split=(('train', 3), ('test', 2))):
  """Solid-colour images of varying sizes, formats and modes in root/<split>/<class>/."""
  for split, n in per_split:
    for k, (name, colour) in enumerate(COLOURS.items()):
      for i in range(n):
        ext, mode = [('png', 'RGB'), ('jpg', 'RGB'), ('png', 'L'), ('PNG', 'P')][(i + k) % 4]
        sub = 'nested/' if i == 2 else ''     # images may sit in subfolders of a class folder
        _write(os.path.join(root, split, name, f'{sub}img{i}.{ext}'), colour,
               (9 + 3 * i, 7 + 2 * k), mode)
  return str(root)


def _grey(rgb):
  r, g, b = rgb
  return (r * 299 + g * 587 + b * 114) / 1000       # Pillow's 'L' conversion (ITU-R 601-2)


def test_train_test_layout_classes_sizes_and_channels(tmp_path):
  root = _folder(tmp_path / 'folder')
  ds = data.load_dataset('image_folder', root, image_size=6, channels=3)
  assert ds.class_names == ('Moth', 'ant', 'zebra')               # sorted as torchvision does
  assert ds.x_train.shape == (9, 6, 6, 3) and ds.x_test.shape == (6, 6, 6, 3)
  assert ds.x_train.dtype == np.float32 and ds.num_classes == 3
  np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    for img, label in zip(x, y):
      colour = np.array(COLOURS[ds.class_names[label]], np.float32)
      # grey-saved images carry their grey value in all three channels; JPEG is lossy
      grey_saved = np.ptp(img) < 2 / 255 and np.ptp(colour) > 0
      want = np.full(3, _grey(colour)) if grey_saved else colour
      np.testing.assert_allclose(img, np.broadcast_to(want / 255, img.shape), atol=3 / 255)
  grey = data.load_dataset('image_folder', root, image_size=5, channels=1)
  assert grey.x_train.shape == (9, 5, 5, 1)
  assert abs(grey.x_train[3].mean() * 255 - _grey(COLOURS['ant'])) < 4


def test_size_and_channels_default_to_the_first_training_image(tmp_path):
  root = _folder(tmp_path / 'folder')
  ds = data.load_dataset('image_folder', root)
  first = Image.open(os.path.join(root, 'train', 'Moth', 'img0.png'))
  assert first.mode == 'L'                                          # a grey first image: C = 1
  assert ds.image_shape == (first.height, first.width, 1)
  assert ds.x_train[3].shape == ds.image_shape                      # other sizes fitted to it


def test_single_root_split_by_fraction_is_fixed_and_disjoint(tmp_path):
  root = tmp_path / 'flat'
  for name, colour in COLOURS.items():
    for i in range(8):
      _write(str(root / name / f'{i}.png'), tuple(c // 2 + i for c in colour), (4, 4))
  kw = dict(test_fraction=0.25, image_size=4, channels=3)
  a = data.load_dataset('image_folder', str(root), **kw)
  b = data.load_dataset('image_folder', str(root), **kw)
  assert np.bincount(a.y_test).tolist() == [2, 2, 2] and np.bincount(a.y_train).tolist() == [6] * 3
  np.testing.assert_array_equal(a.x_test, b.x_test)               # the same split every time
  keys = lambda x, y: {(int(l), round(float(v) * 255)) for v, l in zip(x[:, 0, 0, 0], y)}
  train, test = keys(a.x_train, a.y_train), keys(a.x_test, a.y_test)
  assert not train & test and len(train | test) == 24              # a partition of all images


def test_errors_name_the_problem(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'train').mkdir(parents=True)
  (empty / 'test').mkdir()
  with pytest.raises(ValueError, match='no class subfolders'):
    data.scan_image_folder(str(empty))
  root = _folder(tmp_path / 'f')
  os.rename(os.path.join(root, 'test', 'ant'), os.path.join(tmp_path, 'ant_moved'))
  with pytest.raises(ValueError, match=r"missing \['ant'\]"):
    data.load_dataset('image_folder', root)
  os.rename(os.path.join(tmp_path, 'ant_moved'), os.path.join(root, 'test', 'ant'))
  bad = os.path.join(root, 'train', 'zebra', 'broken.png')
  with open(bad, 'wb') as f:
    f.write(b'not a png at all')
  with pytest.raises(ValueError, match='cannot read image .*broken.png'):
    data.load_dataset('image_folder', root)
  os.remove(bad)
  os.makedirs(os.path.join(root, 'train', 'yak'))
  with pytest.raises(ValueError, match='yak holds no images'):
    data.load_dataset('image_folder', root)
  with pytest.raises(data.DatasetNotFoundError, match='not found'):
    data.load_dataset('image_folder', str(empty / 'train'), env={}, system_dirs=[])


def test_pipeline_loads_an_image_folder_from_the_config(tmp_path):
  cfg = base_config()
  cfg.data.name, cfg.data.dir = 'image_folder', _folder(tmp_path / 'folder')
  cfg.data.image_size, cfg.data.channels, cfg.data.test_split = 8, 1, 'val'
  validate(cfg)
  with pytest.raises(ValueError, match='val'):           # no val folder: the message names it
    pipeline.load_data(cfg)
  cfg.data.test_split = 'test'
  prepared = pipeline.load_data(cfg)
  assert prepared.image_shape == (8, 8, 1) and prepared.pre.kind == 'standard'
  np.testing.assert_allclose(prepared.x_train.mean(), 0.0, atol=1e-5)
  cfg.data.channels = 2
  with pytest.raises(ConfigError, match='data.channels'):
    validate(cfg)


def test_streamed_image_folder_decodes_only_the_rows_asked(tmp_path):
  root = _folder(tmp_path / 'folder')
  mem = data.load_dataset('image_folder', root, image_size=6, channels=3)
  streamed = data.load_dataset('image_folder', root, image_size=6, channels=3, streaming=True)
  assert isinstance(streamed.x_train, data.Rows)
  np.testing.assert_array_equal(streamed.x_train[np.array([8, 0, 4])], mem.x_train[[8, 0, 4]])
  np.testing.assert_array_equal(streamed.x_test, mem.x_test)
  npy = data.write_npy(str(tmp_path / 'npy'), streamed)    # converted chunk by chunk
  np.testing.assert_array_equal(data.load_dataset('npy', npy).x_train, mem.x_train)
