r"""One DC iteration in PyTorch with the official code's arithmetic, for a back-to-back speed
comparison with ddjax on the same CPU (torch is not a ddjax dependency: `pip install
torch==2.13.0`, CPU build).

    python benchmarks/torch_dc_reference.py [--threads 2] [--iterations 3] [--per-class 256]
        [--ipc 1|10|50]

What it runs, as VICO-UoE/DatasetCondensation's `main.py` does (at IPC 1 outer_loop 1, so one
iteration is one image update and no network training; IPC 10: 10 image updates with 50 epochs
of network training on the synthetic set between them, SGD lr 0.01, batch 256, as DC's
`lr_net` / `batch_train`; IPC 50: 50 x 10): a fresh ConvNet-3 (width 128, 3 x 3
convs with bias, GroupNorm(128, 128) = instance norm, ReLU, 2 x 2 average pooling; the first
conv pads 28 x 28 x 1 inputs by 3; a linear head on 4 x 4 x 128 features), then for each of the
10 classes: the cross-entropy gradient of 256 real images (detached) and of the class's
synthetic images (create_graph=True), DC's layer-wise distance between them ('ours': per output
unit 1 - cosine, biases skipped), summed over classes; backward to the synthetic images and an
SGD(lr 0.1, momentum 0.5) step. No augmentation (plain DC). Written for this benchmark from the
paper's and the official code's definitions; it is not the official code itself.

Prints one JSON line (seconds per iteration, the median; threads; torch version) and records it
in results/torch_dc_reference.{json,md}, one row per (IPC, threads), rows of other pairs kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


LOOPS = {1: (1, 1), 10: (10, 50), 50: (50, 10)}   # DC's (outer_loop, inner_loop) by IPC


def main():
  import torch
  import torch.nn as tnn
  ap = argparse.ArgumentParser()
  ap.add_argument('--threads', type=int, default=2)
  ap.add_argument('--iterations', type=int, default=3)
  ap.add_argument('--per-class', type=int, default=256)
  ap.add_argument('--ipc', type=int, default=1, choices=sorted(LOOPS))
  args = ap.parse_args()
  outer, inner = LOOPS[args.ipc]
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  k, width = 10, 128

  def convnet():
    layers, c_in = [], 1
    for i in range(3):
      layers += [tnn.Conv2d(c_in, width, 3, padding=3 if i == 0 else 1),
                 tnn.GroupNorm(width, width, affine=True), tnn.ReLU(inplace=True),
                 tnn.AvgPool2d(2, 2)]
      c_in = width
    return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(4 * 4 * width, k))

  def distance(gs, gr):
    if gr.dim() == 1:
      return 0.0
    gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    return torch.sum(1 - torch.sum(gr * gs, -1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6))

  real = torch.randn(k, args.per_class, 1, 28, 28)
  syn = torch.randn(k, args.ipc, 1, 28, 28, requires_grad=True)
  syn_labels = torch.arange(k).repeat_interleave(args.ipc)
  opt = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
  loss_fn = tnn.CrossEntropyLoss()

  def iteration():
    net = convnet()
    params = list(net.parameters())
    opt_net = torch.optim.SGD(params, lr=0.01)
    for ol in range(outer):
      loss = 0.0
      for c in range(k):
        lab_r = torch.full((args.per_class,), c, dtype=torch.long)
        g_real = [g.detach() for g in torch.autograd.grad(loss_fn(net(real[c]), lab_r), params)]
        lab_s = torch.full((args.ipc,), c, dtype=torch.long)
        g_syn = torch.autograd.grad(loss_fn(net(syn[c]), lab_s), params, create_graph=True)
        loss = loss + sum(distance(gs, gr) for gs, gr in zip(g_syn, g_real))
      opt.zero_grad()
      loss.backward()
      opt.step()
      if ol == outer - 1:
        break
      x = syn.detach().reshape(-1, 1, 28, 28)
      for _ in range(inner):                   # network training on the synthetic set
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], 256):
          idx = perm[i:i + 256]
          opt_net.zero_grad()
          loss_fn(net(x[idx]), syn_labels[idx]).backward()
          opt_net.step()
    return float(loss.detach())

  iteration()                                  # warm-up
  times = []
  for _ in range(args.iterations):
    t = time.perf_counter()
    iteration()
    times.append(time.perf_counter() - t)
  row = {'torch': torch.__version__, 'threads': args.threads, 'ipc': args.ipc,
         'per_class': args.per_class, 'sec_per_iteration': float(np.median(times)), 'all': times,
         'command': 'python benchmarks/torch_dc_reference.py ' + ' '.join(sys.argv[1:])}
  print(json.dumps(row))
  record(row)


def record(row: dict) -> None:
  """Add `row` to results/torch_dc_reference.{json,md} (replacing the row of the same IPC,
  threads and real batch)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  from benchmarks import common
  path = os.path.join(common.HERE, 'results', 'torch_dc_reference.json')
  key = lambda r: (r['ipc'], r['threads'], r['per_class'])
  rows = json.load(open(path))['rows'] if os.path.exists(path) else []
  rows = sorted([r for r in rows if key(r) != key(row)] + [row], key=key)
  table = ['| IPC | threads | real images per class | s / iteration (median) | all | torch | command |',
           '|---|---|---|---|---|---|---|']
  table += [f"| {r['ipc']} | {r['threads']} | {r['per_class']} | {r['sec_per_iteration']:.2f} | "
            f"{', '.join(f'{t:.2f}' for t in r['all'])} | {r['torch']} | `{r['command']}` |"
            for r in rows]
  common.write('torch_dc_reference', {'rows': rows}, '\n'.join(table), row['command'])


if __name__ == '__main__':
  main()
