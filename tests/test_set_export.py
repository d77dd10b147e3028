"""A set exported as an ImageFolder tree with its labels, read back; plain ImageFolders read too;
clear errors for folders that cannot be read."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from ddjax.data import SetFolderError, read_set_folder
from ddjax.data.set_folder import sample_order
from ddjax.infra.files import DirectoryError
from ddjax.runtime import export

QUANT = 1 / 510 + 1e-6     # 8-bit rounding error, float32 slack


def _set(n_per_class, k, h=5, w=4, c=1, seed=0, soft=True):
  rng = np.random.default_rng(seed)
  classes = np.repeat(np.arange(k), n_per_class).astype(np.int32)
  x = rng.uniform(-0.2, 1.2, size=(len(classes), h, w, c)).astype(np.float32)  # leaves [0, 1]
  y = (rng.dirichlet(np.ones(k), size=len(classes)).astype(np.float32) if soft
       else np.eye(k, dtype=np.float32)[classes])
  return x, y, classes


@pytest.mark.parametrize('channels', [1, 3])
def test_export_then_read_round_trips(tmp_path, channels):
  x, y, classes = _set(3, 4, c=channels)
  perm = np.random.default_rng(1).permutation(len(x))     # images not grouped by class
  x, y, classes = x[perm], y[perm], classes[perm]
  names = ['T-shirt/top', 'Trouser', 'Pull over', 'Dress']
  paths = export.export_image_folder(str(tmp_path / 'set'), x, y, classes, names)
  back = read_set_folder(paths['directory'])
  order = np.lexsort((np.arange(len(x)), classes))         # the export's sample order
  assert back['x_pixels'].dtype == np.float32 and back['x_pixels'].shape == x.shape
  np.testing.assert_allclose(back['x_pixels'], np.clip(x[order], 0, 1), rtol=0, atol=QUANT)
  assert np.abs(back['x_pixels'] - np.clip(x[order], 0, 1)).max() > 0     # quantised, not raw
  np.testing.assert_array_equal(back['y'], y[order])       # soft labels exact
  np.testing.assert_array_equal(back['classes'], classes[order])
  assert back['class_names'] == names
  mode = 'L' if channels == 1 else 'RGB'
  assert all(Image.open(tmp_path / 'set' / f).mode == mode for f in back['files'])
  # labels.csv and files.txt list the same order as labels.npy
  lines = open(paths['labels_csv']).read().splitlines()
  assert lines[0].split(',') == ['path', 'class', 'label_0', 'label_1', 'label_2', 'label_3']
  rows = [line.split(',') for line in lines[1:]]
  assert [r[0] for r in rows] == back['files'] == open(paths['files']).read().split()
  np.testing.assert_array_equal(np.array([[float(v) for v in r[2:]] for r in rows], np.float32),
                                y[order])
  assert [int(r[1]) for r in rows] == classes[order].tolist()
  readme = open(paths['readme']).read()
  assert 'ImageFolder' in readme and 'labels.npy' in readme and '1/510' in readme


def test_sorted_folders_are_class_order_with_many_classes(tmp_path):
  # 12 classes whose names sort in another order than their indices
  names = ['zebra', 'Ant', 'moth', '10', 'bee', 'a/b', 'cat', 'Zulu', '', 'dog', 'ant', 'ant']
  x, y, classes = _set(2, len(names), soft=False)
  export.export_image_folder(str(tmp_path / 's'), x, y, classes, names)
  folders = sorted(e.name for e in os.scandir(tmp_path / 's') if e.is_dir())
  assert folders[:2] == ['00_zebra', '01_Ant']
  assert folders[5] == '05_a_b' and folders[8] == '08_class'
  assert [int(f.split('_')[0]) for f in folders] == list(range(len(names)))
  back = read_set_folder(str(tmp_path / 's'))
  np.testing.assert_array_equal(back['classes'], classes)
  np.testing.assert_array_equal(back['y'], y)
  assert back['class_names'] == names


def test_many_images_keep_numeric_order_in_a_class(tmp_path):
  x, y, classes = _set(12, 1, soft=True)        # names 00..11: '10' must not sort before '2'
  export.export_image_folder(str(tmp_path / 's'), x, y, classes, ['only'])
  back = read_set_folder(str(tmp_path / 's'))
  assert back['files'][:3] == ['0_only/00.png', '0_only/01.png', '0_only/02.png']
  np.testing.assert_array_equal(back['y'], y)
  np.testing.assert_allclose(back['x_pixels'], np.clip(x, 0, 1), atol=QUANT)


def _torchvision_order(directory):
  """torchvision.datasets.folder.make_dataset's order, as its source has it."""
  classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
  out = []
  for k, name in enumerate(classes):
    for root, _, fnames in sorted(os.walk(os.path.join(directory, name), followlinks=True)):
      for fname in sorted(fnames):
        if fname.lower().endswith(('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                                   '.tiff', '.webp')):
          out.append((os.path.relpath(os.path.join(root, fname), directory), k))
  return out


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def test_plain_image_folder_from_another_tool(tmp_path):
  """DD-Ranking / SRe2L style: class folders of PNG and JPEG with any names, nested folders too,
  no labels; sample order and classes as torchvision's ImageFolder."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'syn'
  img = lambda: rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
  _save(root / 'n02' / 'b.png', img())
  _save(root / 'n02' / 'sub' / 'a.png', img())     # sorted full paths would put this first
  _save(root / 'n02' / 'A.PNG', img())
  _save(root / 'n01' / 'x.jpg', img())
  _save(root / 'n10' / 'c.png', img())
  (root / 'n10' / 'notes.txt').write_text('not an image')
  back = read_set_folder(str(root))
  expected = _torchvision_order(str(root))
  assert back['files'] == [p for p, _ in expected]
  assert back['files'][1:4] == ['n02/A.PNG', 'n02/b.png', 'n02/sub/a.png']
  np.testing.assert_array_equal(back['classes'], [k for _, k in expected])
  assert back['class_names'] == ['n01', 'n02', 'n10']
  np.testing.assert_array_equal(back['y'], np.eye(3, dtype=np.float32)[back['classes']])
  assert back['x_pixels'].shape == (5, 6, 7, 3)
  png = np.asarray(Image.open(root / 'n02' / 'b.png'), np.float32) / 255
  np.testing.assert_array_equal(back['x_pixels'][2], png)


def test_grey_plain_folder_and_labels_wider_than_folders(tmp_path):
  root = tmp_path / 'grey'
  for k in range(2):
    _save(root / f'c{k}' / '0.png', np.full((4, 4), 60 * k, np.uint8))
  np.save(root / 'labels.npy', np.array([[1, 0, 0], [0, 0.5, 0.5]], np.float32))
  back = read_set_folder(str(root))
  assert back['x_pixels'].shape == (2, 4, 4, 1)
  assert back['y'].shape == (2, 3) and back['class_names'] == ['c0', 'c1', '2']


@pytest.mark.skipif(__import__('importlib').util.find_spec('torchvision') is None,
                    reason='torchvision not installed')
def test_torchvision_reads_the_export_in_ddjax_order(tmp_path):
  from torchvision import datasets
  names = [f'class {k}' for k in range(11)][::-1]
  x, y, classes = _set(2, len(names), c=3)
  export.export_image_folder(str(tmp_path / 's'), x, y, classes, names)
  ds = datasets.ImageFolder(str(tmp_path / 's'))
  assert [ds.class_to_idx[f] for f in sorted(ds.class_to_idx)] == list(range(11))
  files = open(tmp_path / 's' / 'files.txt').read().split()
  assert [os.path.relpath(p, tmp_path / 's') for p, _ in ds.samples] == files
  assert [t for _, t in ds.samples] == read_set_folder(str(tmp_path / 's'))['classes'].tolist()


def test_export_replaces_its_own_folder_and_refuses_others(tmp_path):
  x, y, classes = _set(2, 3, soft=False)
  target = tmp_path / 's'
  export.export_image_folder(str(target), x, y, classes, ['a', 'b', 'c'])
  export.export_image_folder(str(target), x[:2], y[:2, :1], classes[:2], ['a'])  # fewer classes
  assert sorted(os.listdir(target)) == ['0_a', 'README.txt', 'class_names.json', 'files.txt',
                                        'labels.csv', 'labels.npy']
  assert read_set_folder(str(target))['y'].shape == (2, 1)
  assert [e for e in os.listdir(tmp_path) if e != 's'] == []          # no temporary leftovers
  foreign = tmp_path / 'mine'
  foreign.mkdir()
  (foreign / 'thesis.tex').write_text('keep me')
  with pytest.raises(DirectoryError, match='not written by this exporter'):
    export.export_image_folder(str(foreign), x, y, classes, ['a', 'b', 'c'])
  assert (foreign / 'thesis.tex').read_text() == 'keep me'
  with pytest.raises(ValueError, match='non-finite'):
    export.export_image_folder(str(tmp_path / 'nan'), x * np.nan, y, classes, ['a', 'b', 'c'])
  assert not (tmp_path / 'nan').exists()


def _two_class_folder(root):
  for k in range(2):
    _save(root / f'c{k}' / '0.png', np.zeros((4, 4), np.uint8))
  return root


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(SetFolderError, match='is not a directory'):
    read_set_folder(str(tmp_path / 'missing'))
  (tmp_path / 'empty' / 'c0').mkdir(parents=True)
  (tmp_path / 'empty' / 'c0' / 'notes.txt').write_text('x')
  with pytest.raises(SetFolderError, match='holds no images'):
    read_set_folder(str(tmp_path / 'empty'))
  (tmp_path / 'flat').mkdir()
  _save(tmp_path / 'flat' / 'a.png', np.zeros((4, 4), np.uint8))
  with pytest.raises(SetFolderError, match='no class folders'):
    read_set_folder(str(tmp_path / 'flat'))

  sizes = _two_class_folder(tmp_path / 'sizes')
  _save(sizes / 'c1' / '1.png', np.zeros((5, 4), np.uint8))
  with pytest.raises(SetFolderError, match=r'differ in size: c0/0.png is 4x4, c1/1.png is 4x5'):
    read_set_folder(str(sizes))

  rows = _two_class_folder(tmp_path / 'rows')
  np.save(rows / 'labels.npy', np.eye(2, dtype=np.float32)[[0, 1, 1]])
  with pytest.raises(SetFolderError, match='has 3 rows but .* holds 2 images'):
    read_set_folder(str(rows))

  narrow = _two_class_folder(tmp_path / 'narrow')
  np.save(narrow / 'labels.npy', np.ones((2, 1), np.float32))
  with pytest.raises(SetFolderError, match='1 label columns but .* 2 class folders'):
    read_set_folder(str(narrow))

  broken = _two_class_folder(tmp_path / 'broken')
  (broken / 'c1' / 'bad.png').write_bytes(b'not a png')
  with pytest.raises(ValueError, match=r'cannot read image .*c1/bad.png'):
    read_set_folder(str(broken))

  x, y, classes = _set(2, 2)
  export.export_image_folder(str(tmp_path / 'edited'), x, y, classes, ['a', 'b'])
  os.remove(tmp_path / 'edited' / '0_a' / '0.png')
  _save(tmp_path / 'edited' / '0_a' / '9.png', np.zeros((5, 4), np.uint8))
  with pytest.raises(SetFolderError,
                     match=r"differ from .*files.txt .*not listed: \['0_a/9.png'\]"):
    read_set_folder(str(tmp_path / 'edited'))


def test_sample_order_skips_hidden_folders(tmp_path):
  _two_class_folder(tmp_path)
  _save(tmp_path / '.ipynb_checkpoints' / 'x.png', np.zeros((4, 4), np.uint8))
  paths, classes, folders = sample_order(str(tmp_path))
  assert folders == ['c0', 'c1'] and paths == ['c0/0.png', 'c1/0.png']
  assert classes.tolist() == [0, 1]
