"""Exports: the image grid puts each class in its own column; distilled.npz round-trips."""
import numpy as np

from ddjax.data import fit_preprocessor, preprocessor_from_dict
from ddjax.runtime import export


def test_image_grid_layout():
  x = np.full((6, 4, 4, 1), 0.5, np.float32)
  x[:, 1, 1, 0] = 0.0                               # one dark pixel per image (padding is white)
  classes = np.array([0, 0, 1, 1, 2, 2])
  grid = export.image_grid(x, classes, 3, pad=2, scale=1)
  assert grid.shape == (2 * 6 + 2, 3 * 6 + 2, 3)
  dark = np.argwhere(grid[..., 0] == 0)
  expected = {(2 + r * 6 + 1, 2 + c * 6 + 1) for c in range(3) for r in range(2)}
  assert {tuple(p) for p in dark} == expected


def test_export_distilled_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  x_train = rng.uniform(size=(50, 5, 5, 1)).astype(np.float32)
  pre = fit_preprocessor(x_train, kind='standard')
  syn = {'x': rng.normal(size=(4, 5, 5, 1)).astype(np.float32),
         'y': rng.normal(size=(4, 2)).astype(np.float32)}
  paths = export.export_distilled(str(tmp_path), syn, np.array([0, 0, 1, 1]), pre, ('a', 'b'))
  with np.load(paths['npz']) as f:
    np.testing.assert_array_equal(f['x'], syn['x'])
    np.testing.assert_array_equal(f['y'], syn['y'])
    back = preprocessor_from_dict(f, 'pre_')
    np.testing.assert_allclose(f['x_pixels'], syn['x'] * back.std + back.mean, rtol=1e-5)
    assert list(f['class_names']) == ['a', 'b']
  assert (tmp_path / 'distilled.png').stat().st_size > 0


def test_distilled_png_heads_each_column_with_its_class_name():
  x = np.zeros((6, 8, 8, 1), np.float32)
  classes = np.repeat(np.arange(3), 2)
  grid = export.image_grid(x, classes, 3, pad=2, scale=2)
  names = ['T-shirt/top', 'Bag', 'Ankle boot']
  out = export.with_class_names(grid, names, column_width=2 * (8 + 2))
  header = out[:out.shape[0] - grid.shape[0]]
  assert out.shape[1] == grid.shape[1] and header.shape[0] > 20
  np.testing.assert_array_equal(out[header.shape[0]:], grid)
  inked = [(header[:, 4 + 20 * k:4 + 20 * (k + 1)] < 128).sum() for k in range(3)]
  assert all(i > 0 for i in inked)                    # every column has a name above it
  assert inked[0] > inked[1]                          # 'T-shirt/top' is longer than 'Bag'
  rows_inked = lambda k: np.flatnonzero((header[:, 4 + 20 * k:4 + 20 * (k + 1)] < 128).any(1))
  assert np.ptp(rows_inked(0)) > np.ptp(rows_inked(1))   # written bottom to top: taller
