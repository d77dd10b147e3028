r"""What recovering images costs on an image folder: 64 px RGB, a ResNet-18 observer.

    python benchmarks/recovery_cost.py --methods sre2l cda --iterations 20
    python benchmarks/recovery_cost.py --methods sre2l edc --root /data/imagenette2

Without --root the benchmark writes a small ImageNet-style folder of its own (Fashion-MNIST images
upsampled to 64 x 64, grey replicated to RGB, `--per-class` training and 20 test images per
class, PNG, under benchmarks/runs/fmnist64_folder) and reads it with ddjax's `image_folder` source,
so the run is the one an ImageNette user makes, at small scale. The observer is the methods'
'image_folder' preset's ResNet-18 (small-image stem, batch norm), trained `--observer-epochs`
epochs and cached (benchmarks/runs/observers/fmnist64_resnet18).

Per method: `--iterations` recovery steps at IPC `--ipc` (the whole set in one step, one image
per class in each recovery batch), timed after compilation. Reported: seconds per step, the
milliseconds per image and iteration, the seconds per image of the method's full recovery (its
preset's iterations x the per-image-iteration time: SRe2L's CIFAR 1000, CDA's Tiny-ImageNet
4000, ...), and the float32 matmul peak measured in the same run. Beside them the per-image
costs FADRM's table quotes for an RTX 4090 (EDC 4.99 s, G-VBSM 17.28 s per image); those are
224 px ImageNet images on a GPU, so the comparison is of orders of magnitude only.

JSON + markdown in benchmarks/results/recovery_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

PAPER_SECONDS_PER_IMAGE = {'edc': 4.99, 'gvbsm': 17.28}     # FADRM's table, RTX 4090, 224 px


def write_folder(root: str, per_class: int, test_per_class: int = 20, size: int = 64) -> str:
  """A class-folder copy of Fashion-MNIST at `size` px RGB: root/train/<class>/*.png and
  root/val/<class>/*.png. Kept when already complete."""
  from PIL import Image

  from ddjax.data import load_dataset
  done = os.path.join(root, 'COMPLETE')
  if os.path.exists(done):
    return root
  ds = load_dataset('fashion_mnist')
  for split, x, y, n in (('train', ds.x_train, ds.y_train, per_class),
                         ('val', ds.x_test, ds.y_test, test_per_class)):
    for c in range(ds.num_classes):
      folder = os.path.join(root, split, f'class_{c:02d}')
      os.makedirs(folder, exist_ok=True)
      for i, j in enumerate(np.flatnonzero(np.asarray(y) == c)[:n]):
        img = np.asarray(x[j]).reshape(28, 28)
        img = (img * 255).astype(np.uint8) if img.dtype != np.uint8 else img
        Image.fromarray(img).convert('RGB').resize((size, size), Image.BILINEAR).save(
            os.path.join(folder, f'{i:05d}.png'))
  open(done, 'w').close()
  return root


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--methods', nargs='+', default=['sre2l', 'cda'])
  ap.add_argument('--root', default='', help='an image folder (train/, val/); default: write one')
  ap.add_argument('--per-class', type=int, default=100)
  ap.add_argument('--ipc', type=int, default=1)
  ap.add_argument('--iterations', type=int, default=20)
  ap.add_argument('--observer-epochs', type=int, default=2)
  ap.add_argument('--set', nargs='*', default=[], metavar='METHOD:KEY=VALUE',
                  help="a config override for one method, e.g. edc:observer.ensemble=ResNet-18-BN")
  args = ap.parse_args()
  command = 'python benchmarks/recovery_cost.py ' + ' '.join(sys.argv[1:])

  import jax
  from ddjax import registry
  from ddjax.config import method_config
  from ddjax.distill import step as step_lib
  from ddjax.runtime import pipeline
  from ddjax.suite.runner import apply_overrides
  from ddjax import transforms

  root = args.root or write_folder(os.path.join(common.HERE, 'runs', 'fmnist64_folder'),
                                   args.per_class)
  peak = common.matmul_flops_per_second()
  rows = []
  for method in args.methods:
    cfg = method_config(method, 'image_folder')
    full_iterations = int(cfg.distill.steps)
    cfg.data.dir = root
    cfg.distill.ipc = args.ipc
    cfg.observer.epochs = args.observer_epochs
    cfg.observer.dir = os.path.join(common.HERE, 'runs', 'observers',
                                    f'fmnist64_resnet18_e{args.observer_epochs}')
    overrides = common.method_overrides(args.set, method)
    apply_overrides(cfg, dict(kv.split('=', 1) for kv in overrides), 'config key (--set)')
    data = pipeline.load_data(cfg)
    plan = registry.resolve(cfg, pipeline.data_facts(data))
    t0 = time.perf_counter()
    distiller = pipeline.build_distiller(cfg, plan, data, 1)
    build_seconds = time.perf_counter() - t0
    syn, classes = pipeline.initial_synthetic(cfg, plan, data, distiller)
    optimizer = pipeline.make_optimizer(cfg, plan)
    transform = transforms.identity()
    state = step_lib.init_state(distiller, transform, optimizer, syn, jax.random.PRNGKey(0))
    step = jax.jit(step_lib.make_step(distiller, transform, optimizer, jax.numpy.asarray(classes)))
    batch = distiller.hooks.batch_sampler(0)(0)
    t0 = time.perf_counter()
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - t0
    first_loss = float(metrics['loss'])
    t0 = time.perf_counter()
    for i in range(args.iterations):
      state, metrics = step(state, batch, jax.random.PRNGKey(2 + i))
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - t0) / args.iterations
    n = int(syn['x'].shape[0])
    rows.append({
        'method': method, 'overrides': overrides, 'images': n,
        'image_shape': list(syn['x'].shape[1:]),
        'observer': cfg.observer.arch, 'observer_epochs': args.observer_epochs,
        'observer_and_build_seconds': build_seconds, 'compile_seconds': compile_seconds,
        'seconds_per_step': per_step, 'ms_per_image_iteration': 1000 * per_step / n,
        'preset_iterations': full_iterations,
        'seconds_per_image_full': per_step / n * full_iterations,
        'paper_seconds_per_image_rtx4090': PAPER_SECONDS_PER_IMAGE.get(method),
        'loss_first': first_loss, 'loss_last': float(metrics['loss']),
        'iterations_timed': args.iterations})
    print(rows[-1], flush=True)
  table = [f'float32 matmul peak in this run: {peak / 1e9:.0f} GFLOP/s.', '',
           '| method | images (shape) | s / step | ms / image / iteration | preset iterations '
           '| s / image, full recovery | paper s / image (RTX 4090, 224 px) | loss first -> last |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    paper = r['paper_seconds_per_image_rtx4090']
    table.append(
        f"| {r['method']} | {r['images']} ({'x'.join(map(str, r['image_shape']))}) | "
        f"{r['seconds_per_step']:.2f} | {r['ms_per_image_iteration']:.1f} | "
        f"{r['preset_iterations']} | {r['seconds_per_image_full']:.1f} | "
        f"{'-' if paper is None else paper} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
  common.write('recovery_cost', {'rows': rows, 'matmul_flops_per_second': peak},
               '\n'.join(table), command)


if __name__ == '__main__':
  main()
