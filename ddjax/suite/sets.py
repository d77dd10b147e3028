"""The set a suite judges, from wherever it comes: a ddjax workdir, a `distilled.npz`, or an image
folder (with or without a labels file) made by another tool.

Every source is read in pixel space ([0, 1] images, `x_pixels`); the suite preprocesses them with
the data's own preprocessor, so a workdir's set, its npz and its exported image folder are judged
alike (up to the 8-bit quantisation of PNGs).
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from ddjax.data.preprocess import invert_preprocessor, preprocessor_from_dict
from ddjax.data.sampling import is_one_hot
from ddjax.infra import artifacts

NPZ_KNOWN = ('x', 'y', 'classes', 'x_pixels', 'class_names')


@dataclasses.dataclass
class JudgedSet:
  """A set to judge.

  Attributes:
    name: a short name for reports (the workdir's or file's base name).
    x_pixels: float32 (n, H, W, C) images in pixel space [0, 1] (learned sets may leave it).
    y: float32 (n, K) labels as the set stores them (one-hot, soft or learned).
    classes: int (n,) the class each image was made for.
    extras: further learned entries (MTT's 'syn_lr', RFAD's 'log_temp').
    source: 'workdir' | 'npz' | 'folder'.
    path: where it came from.
    run_cfg: the config that made it (a workdir's config.json), else None.
    results: the run's results.json (its cost, its own evaluation), else None.
  """
  name: str
  x_pixels: np.ndarray
  y: np.ndarray
  classes: np.ndarray
  extras: dict
  source: str
  path: str
  run_cfg: ml_collections.ConfigDict | None = None
  results: dict | None = None

  @property
  def num_classes(self) -> int:
    return int(self.y.shape[1])

  @property
  def ipc(self) -> int:
    """Images per class (the largest class's count)."""
    return int(np.bincount(self.classes, minlength=self.num_classes).max())

  @property
  def hard_labels(self) -> bool:
    return is_one_hot(self.y)


def _read_npz(path: str) -> dict:
  arrays = artifacts.read_npz(path, 'distilled set', fix='give a distilled.npz that ddjax wrote')
  if 'y' not in arrays or not ({'x_pixels', 'x'} & set(arrays)):
    raise ValueError(f'{path} has no set in it: a distilled.npz holds x_pixels (or x with its '
                     f'pre_* preprocessing) and y; it has {sorted(arrays)}')
  if 'x_pixels' in arrays:
    x_pixels = np.asarray(arrays['x_pixels'], np.float32)
  else:
    pre = preprocessor_from_dict(arrays, 'pre_')
    x_pixels = np.asarray(invert_preprocessor(pre, arrays['x']), np.float32)
  y = np.asarray(arrays['y'], np.float32)
  classes = (np.asarray(arrays['classes'], np.int64) if 'classes' in arrays
             else y.argmax(-1).astype(np.int64))
  extras = {k: np.asarray(v) for k, v in arrays.items()
            if k not in NPZ_KNOWN and not k.startswith('pre_')}
  return dict(x_pixels=x_pixels, y=y, classes=classes, extras=extras)


def load_set(path: str) -> JudgedSet:
  """The set at `path`: a ddjax workdir (distilled.npz + config.json), a .npz file, or an image
  folder of class subfolders (`ddjax.data.set_folder.read_set_folder`; labels.npy when present).
  ValueError saying what was expected when `path` is none of these."""
  path = os.path.normpath(path)
  name = os.path.basename(path)
  if os.path.isdir(path) and os.path.exists(os.path.join(path, 'distilled.npz')):
    config_path = os.path.join(path, 'config.json')
    if not os.path.exists(config_path):
      raise ValueError(f'{path} has distilled.npz but no config.json; judge the npz itself '
                       f'({os.path.join(path, "distilled.npz")}) with --config for its data')
    cfg = ml_collections.ConfigDict(artifacts.read_json(config_path, 'rerun the distillation'))
    results_path = os.path.join(path, 'results.json')
    results = (artifacts.read_json(results_path) if os.path.exists(results_path) else None)
    return JudgedSet(name=name, source='workdir', path=path, run_cfg=cfg, results=results,
                     **_read_npz(os.path.join(path, 'distilled.npz')))
  if os.path.isfile(path) and path.endswith('.npz'):
    return JudgedSet(name=os.path.splitext(name)[0], source='npz', path=path,
                     **_read_npz(path))
  if os.path.isdir(path):
    from ddjax.data.set_folder import read_set_folder
    folder = read_set_folder(path)
    return JudgedSet(name=name, source='folder', path=path, x_pixels=folder['x_pixels'],
                     y=folder['y'], classes=folder['classes'], extras={})
  raise ValueError(f'no set at {path!r}: give a ddjax workdir (with distilled.npz), a .npz '
                   'file, or an image folder of class subfolders')
