r"""One distilled set, evaluated under the 'frepo' protocol with different training augmentations:
FRePo's own (one op per batch from color / crop / rotate / translate / cutout, edge fill; the
'frepo' protocol's default), ddjax's earlier translate + cutout on every batch (zero padding),
and none. Same networks, same keys, same steps: only the augmentation differs.

    python benchmarks/eval_augmentation.py --workdir runs/frepo_isa_fashion_mnist_ipc1_seed0
    python benchmarks/eval_augmentation.py --workdir ... --name eval_network_frepo \
        --variants frepo_one_op --eval-model width=128 double_width=true

The workdir is a finished `ddjax.main` run (its config.json and distilled.npz).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddjax.augment.frepo import frepo_strategy_for  # noqa: E402
from ddjax.evaluate import evaluate_synthetic, get_protocol  # noqa: E402
from ddjax.models import from_config  # noqa: E402
from ddjax.runtime import pipeline  # noqa: E402

VARIANTS = {
    'frepo_one_op': lambda name: dict(augment_ops=frepo_strategy_for(name)),
    'translate_cutout_zero_pad': lambda name: dict(augment_ops='', translate_frac=0.125,
                                                   cutout_frac=0.25),
    'none': lambda name: dict(augment=False),
}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--name', default='eval_augmentation')
  ap.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
  ap.add_argument('--eval-model', nargs='*', default=[], metavar='KEY=VALUE',
                  help='eval.model overrides, e.g. width=128 double_width=true')
  args = ap.parse_args()
  cfg = ml_collections.ConfigDict(json.load(open(os.path.join(args.workdir, 'config.json'))))
  for item in args.eval_model:
    k, v = item.split('=', 1)
    old = cfg.eval.model[k]
    cfg.eval.model[k] = (v.lower() in ('true', '1')) if isinstance(old, bool) else type(old)(v)
  syn = np.load(os.path.join(args.workdir, 'distilled.npz'))
  data = pipeline.load_data(cfg)
  model = from_config(cfg.eval.model, data.num_classes)
  key = jax.random.PRNGKey(cfg.seed)
  rows = []
  for variant in args.variants:
    protocol = get_protocol('frepo', int(syn['x'].shape[0]), **VARIANTS[variant](cfg.data.name))
    ev = evaluate_synthetic(key, model, jnp.asarray(syn['x']), jnp.asarray(syn['y']),
                            data.x_test, data.y_test, protocol, num_models=cfg.eval.num_models,
                            krr=True, krr_reg=pipeline.make_plan(cfg, data).krr_reg,
                            progress=lambda line: print(f'[{variant}] {line}', flush=True))
    rows.append({'variant': variant, 'acc_mean': ev['acc_mean'], 'acc_std': ev['acc_std'],
                 'accs': ev['accs'], 'krr_acc': ev['krr_acc'], 'steps': protocol.steps})
  table = ['| augmentation | test acc % | KRR predictor % | gap |', '|---|---|---|---|']
  for r in rows:
    table.append(f"| {r['variant']} | {100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} | "
                 f"{100 * r['krr_acc']:.2f} | {100 * (r['krr_acc'] - r['acc_mean']):.2f} |")
  common.write(args.name, {'workdir': args.workdir, 'method': cfg.method, 'ipc': cfg.distill.ipc,
                           'eval_model': cfg.eval.model.to_dict(), 'rows': rows},
               '\n'.join(table),
               ' '.join(['python benchmarks/eval_augmentation.py --workdir', args.workdir,
                         '--name', args.name, '--variants', *args.variants]
                        + (['--eval-model', *args.eval_model] if args.eval_model else [])))


if __name__ == '__main__':
  main()
