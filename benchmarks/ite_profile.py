r"""Where BiLP's ITE spends its time: one class of DC's additive form, each ITE method, as JSON +
markdown.

    python benchmarks/ite_profile.py [--per-class 256] [--ipc 1] [--repeats 3] [--top 12]
    python benchmarks/ite_profile.py --weight-grads auto im2col --top 0 --name ite_breakdown

Setting: DC's ConvNet-3 (width 128, instance norm), 28x28x1 inputs, one class with `--per-class`
real images and `--ipc` synthetic ones (`DC.class_separable`: the same network, DSA draw and
per-sample gradients a BiLP step scores). Rows, each its own jitted program, timed after a
warm-up (best of --repeats):

- `real gradient G`: the class's batch gradient alone (the real side of a DC step for one class).
- `per-sample gradients`: the B per-sample gradients, each projected on one vector (so XLA keeps
  them), without G.
- `sketch` / `first_order` / `exact`: `ddjax.scoring.ite`'s scores, with G as DC computes it (a
  separate batch gradient) and with G the sum of the stored per-sample gradients
  (`ite.stored_statistics`, what `additive_ite_scores` does for a whole class).

XLA's FLOP count of each program and the achieved GFLOP/s are beside the times, with the matmul
peak measured in the same run. A second table times the per-sample weight gradient of one 3 x 3
convolution layer (B samples, width 128) three ways: the batch-reduced gradient (reference),
`vmap` of XLA's backward-filter convolution (what `vmap(grad)` compiles to: a grouped
convolution) and batched im2col matmuls. --weight-grads runs the per-sample and ITE rows once per
way DC's per-example network computes its convolution weight gradients: 'im2col' (what DC does,
`ddjax.models.per_example_model`) and 'auto' (XLA's backward-filter convolution, what DC did before
it used im2col), so the two are measured in one run. With --top N the first-order program
(stored G, first arm) is traced once with `jax.profiler` and its N most expensive HLO operations
are listed with their shapes.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddjax.distill.dc import DC  # noqa: E402
from ddjax.models import build_model, per_example_model  # noqa: E402
from ddjax.scoring import ite as ite_lib  # noqa: E402

K, SHAPE = 10, (28, 28, 1)


def program(dc: DC, name: str, stored: bool):
  """A jittable (variables, x_real, x_syn, key) -> output for one row."""
  def run(variables, xr, xs, key):
    sep = dc.class_separable(variables, xr, xs, 0, key)
    if stored:
      sep = ite_lib.stored_statistics(sep)
    if name == 'real gradient G':
      return sep.G
    if name == 'per-sample gradients':
      dot_ones = lambda gi: sum(jnp.sum(a) for a in jax.tree_util.tree_leaves(gi))
      return jax.vmap(lambda a: dot_ones(sep.g.fn(a)))(sep.g.inputs)
    if name == 'sketch':
      return ite_lib.ite_sketch_scores(sep.distance, sep.features, sep.G, sep.S, sep.g,
                                       jax.random.fold_in(key, 1), 64)
    p = sep.problem
    return ite_lib.ite_score(ite_lib.compute_ite(p.meta_loss, p.G, p.S, p.g, name))
  return run


def best_time(fn, args, repeats):
  return min(common.call_times(fn, args, repeats))


def top_ops(fn, args, compiled_text: str, n: int) -> list[dict]:
  """The n HLO operations with the most time in one traced call, with their result shapes."""
  shapes = dict(re.findall(r'%([\w.\-]+) = (\S+\[[^\]]*\])', compiled_text))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      jax.block_until_ready(fn(*args))
    data = jax.profiler.ProfileData.from_file(
        sorted(glob.glob(os.path.join(d, '**', '*.xplane.pb'), recursive=True))[-1])
  seconds = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        if ev.name in shapes:
          seconds[ev.name] += ev.duration_ns / 1e9
  return [{'op': name, 'shape': shapes[name], 'seconds': s} for name, s in seconds.most_common(n)]


def weight_gradient_rows(batch: int, repeats: int) -> list[dict]:
  """Per-sample weight gradients of one 3 x 3, 128-output convolution (the ConvNet's layers at
  16 x 16 and 8 x 8 with 128 inputs, and 32 x 32 with 1): vmap of XLA's backward-filter
  convolution against batched im2col matmuls (and the batch-reduced gradient as reference)."""
  nhwc, pad, o = ('NHWC', 'HWIO', 'NHWC'), ((1, 1), (1, 1)), 128
  rows = []
  for h, c in ((16, 128), (8, 128), (32, 1)):
    rng = np.random.default_rng(h)
    x = jnp.asarray(rng.normal(size=(batch, 1, h, h, c)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(batch, 1, h, h, o)), jnp.float32)
    w = jnp.zeros((3, 3, c, o))

    def filter_grad(xi, dyi):
      conv = lambda w_: jax.lax.conv_general_dilated(xi, w_, (1, 1), pad, dimension_numbers=nhwc)
      return jax.linear_transpose(conv, w)(dyi)[0]

    def im2col(x, dy):
      xp = jnp.pad(x[:, 0], ((0, 0), (1, 1), (1, 1), (0, 0)))
      cols = jnp.concatenate([xp[:, a:a + h, b:b + h] for a in range(3) for b in range(3)], -1)
      return jnp.einsum('bmk,bmo->bko', cols.reshape(batch, h * h, 9 * c),
                        dy[:, 0].reshape(batch, h * h, o)).reshape(batch, 3, 3, c, o)

    fns = {'batch-reduced (reference)': jax.jit(lambda x, dy: filter_grad(x[:, 0], dy[:, 0])),
           'vmap of the backward-filter convolution': jax.jit(jax.vmap(filter_grad)),
           'batched im2col matmuls': jax.jit(im2col)}
    np.testing.assert_allclose(fns['batched im2col matmuls'](x, dy),
                               fns['vmap of the backward-filter convolution'](x, dy),
                               rtol=1e-3, atol=1e-3)
    flops = 2 * batch * h * h * 9 * c * o
    for name, fn in fns.items():
      sec = best_time(fn, (x, dy), repeats)
      rows.append({'layer': f'{h}x{h}x{c} -> {o}', 'way': name, 'seconds': sec,
                   'gflops_per_s': flops / sec / 1e9})
      print(f'{h}x{h}x{c}: {name}: {sec:.3f} s', flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--per-class', type=int, default=256)
  ap.add_argument('--ipc', type=int, default=1)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--top', type=int, default=12)
  ap.add_argument('--name', default='ite_profile', help='results file under benchmarks/results')
  ap.add_argument('--weight-grads', nargs='+', default=['im2col'], choices=('im2col', 'auto'),
                  help="per-example weight gradients of the ITE's network: im2col (DC's) and / or "
                       "auto (XLA's backward-filter convolution, DC's earlier way)")
  args = ap.parse_args()
  peak = common.matmul_flops_per_second()
  dc = DC(build_model('convnet', K, depth=3, width=128, norm='instance', pooling='avg'), SHAPE, K,
          outer_loop=1, inner_loop=1)
  rng = np.random.default_rng(0)
  inputs = (dc.fresh_network(jax.random.PRNGKey(0)),
            jnp.asarray(rng.normal(size=(args.per_class,) + SHAPE), jnp.float32),
            jnp.asarray(rng.normal(size=(args.ipc,) + SHAPE), jnp.float32), jax.random.PRNGKey(1))
  rows, ops = [], []
  plan = [('real gradient G', False, None)] + [     # G: the DC model's batch gradient, no arm
      (m, s, w) for w in args.weight_grads
      for m, s in [('per-sample gradients', False)] + [
          (m, s) for m in ('sketch', 'first_order', 'exact') for s in (False, True)]]
  for name, stored, weight_grad in plan:
    # DC's per-example network (ConvNet.weight_grad='im2col'), or the plain one for the 'auto' arm.
    dc.per_example_model = dc.model if weight_grad == 'auto' else per_example_model(dc.model)
    fn = jax.jit(program(dc, name, stored))
    compiled = fn.lower(*inputs).compile()
    flops = common.xla_flops(compiled)
    sec = best_time(fn, inputs, args.repeats)
    label = name if name in ('real gradient G', 'per-sample gradients') else (
        f"{name}, G {'= sum of stored g_i' if stored else 'by its own batch gradient'}")
    if weight_grad:
      label += f', {weight_grad}'
    rows.append({'program': label, 'method': name, 'stored_g': stored, 'weight_grad': weight_grad,
                 'seconds': sec,
                 'gflop': flops / 1e9, 'gflops_per_s': flops / sec / 1e9})
    print(f'{label}: {sec:.3f} s, {flops / 1e9:.1f} GFLOP', flush=True)
    if args.top and name == 'first_order' and stored and not ops:
      ops = top_ops(fn, inputs, compiled.as_text(), args.top)
  wg_rows = weight_gradient_rows(args.per_class, args.repeats)
  base = rows[0]['seconds']
  table = [f'DC, one class: {args.per_class} real images, IPC {args.ipc}, ConvNet-3 width 128 '
           f'instance norm, 28x28x1; {len(os.sched_getaffinity(0))} thread(s); matmul peak in '
           f'the same run '
           f'{peak / 1e9:.1f} GFLOP/s.', '',
           '| program | s | x real gradient | GFLOP | GFLOP/s | % of peak |',
           '|---|---|---|---|---|---|']
  for r in rows:
    table.append(f"| {r['program']} | {r['seconds']:.3f} | {r['seconds'] / base:.2f} "
                 f"| {r['gflop']:.1f} | {r['gflops_per_s']:.1f} "
                 f"| {100 * r['gflops_per_s'] * 1e9 / peak:.0f}% |")
  table += ['', f'Per-sample weight gradients of one 3 x 3 convolution, {args.per_class} samples:',
            '', '| layer | computed as | s | GFLOP/s |', '|---|---|---|---|']
  table += [f"| {r['layer']} | {r['way']} | {r['seconds']:.3f} | {r['gflops_per_s']:.1f} |"
            for r in wg_rows]
  if ops:
    table += ['', 'Most expensive HLO operations of the first-order program (stored G), one traced '
              'call:', '', '| op | result | s |', '|---|---|---|']
    table += [f"| {o['op']} | `{o['shape']}` | {o['seconds']:.3f} |" for o in ops]
  common.write(args.name, {'rows': rows, 'weight_gradients': wg_rows, 'top_ops': ops,
                           'per_class': args.per_class, 'ipc': args.ipc,
                           'matmul_peak_gflops': peak / 1e9}, '\n'.join(table),
               'python benchmarks/ite_profile.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  main()
