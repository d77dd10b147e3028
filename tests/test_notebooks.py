"""The notebooks under notebooks/: committed without outputs, and run top to bottom with nbclient
(their QUICK settings, a python3 Jupyter kernel from ipykernel) without a cell error, producing
the numbers and figures they promise."""
import glob
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb')))
DEBIAN = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'


def _read(name):
  return nbformat.read(os.path.join(ROOT, 'notebooks', name), as_version=4)


def _code(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def test_the_notebooks_exist():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {'quickstart.ipynb', 'transforms.ipynb'} <= names, names


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_carries_no_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  dirty = [i for i, c in enumerate(nb.cells)
           if c.cell_type == 'code' and (c.outputs or c.execution_count is not None)]
  assert not dirty, (
      f'{os.path.relpath(path, ROOT)}: code cells {dirty} carry outputs or execution counts. '
      'Store notebooks without them: Jupyter "Edit > Clear All Outputs" and save, or '
      f'`jupyter nbconvert --clear-output --inplace {os.path.relpath(path, ROOT)}`.')
  # one variable at the top picks the settings, and the committed value is the quick one
  assert re.match(r'QUICK = True\b', _code(nb)[0].source), _code(nb)[0].source


def _execute(nb, workdir):
  """Run every cell in a fresh python3 kernel with cwd `workdir`; raises CellExecutionError
  (with the cell's traceback) on the first error."""
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(workdir)}}).execute()
  text, images = [], 0
  for cell in _code(nb):
    for out in cell.outputs:
      assert out.output_type != 'error', f'{out.ename}: {out.evalue}'
      if out.output_type == 'stream':
        text.append(out.text)
      elif out.output_type in ('display_data', 'execute_result'):
        images += 'image/png' in out.data
        text.append(out.data.get('text/plain', ''))
  return '\n'.join(text), images


@pytest.mark.skipif(not (os.path.exists(DEBIAN) or os.environ.get('DDJAX_DATA')),
                    reason='Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')
def test_quickstart_runs_top_to_bottom(tmp_path):
  text, images = _execute(_read('quickstart.ipynb'), tmp_path)
  found = re.search(r'distilled \(60 steps\): test accuracy (\d+\.\d+)', text)
  baseline = re.search(r'the real images it started from: test accuracy (\d+\.\d+)', text)
  assert found and baseline, text[-3000:]
  assert float(found.group(1)) > 25.0, text[-2000:]     # 10 classes: chance is 10 %
  assert images >= 2, images                            # the distilled grid and the curve
  workdir = tmp_path / 'runs' / 'quickstart_quick'
  for name in ('results.json', 'distilled.npz', 'metrics.jsonl', 'curve.png'):
    assert (workdir / name).exists(), name


def test_transforms_runs_top_to_bottom(tmp_path):
  text, images = _execute(_read('transforms.ipynb'), tmp_path)
  # the notebook itself asserts closed form == sampling within 5 standard errors
  assert re.search(r'max \|difference\| / standard error = \d', text), text[-2000:]
  assert re.search(r'kept 52 of 64 rows', text), text[-2000:]     # ceil(0.8 * 64)
  assert re.search(r'held-out accuracy [\d.]+ % -> [\d.]+ %', text), text[-2000:]
  assert images >= 4, images     # closed form vs sampling, drop-easiest, BiLP window, training
