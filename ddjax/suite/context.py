"""What an axis works with (`Context`): the judged set in model space, its data, its protocol, the
axis's settings, and three services every axis needs:

  networks(cell, syn, ...)   fresh networks trained on a set under a protocol, on any architecture
                             of the zoo, each measured (test accuracy by default) and kept as a
                             unit file the moment it finishes, so a killed suite resumes where it
                             stopped; shared out over processes (network i on process i mod P);
  random_subset(ipc, seed)   a class-balanced random real subset, labelled as the set is;
  cached(kind, record, fn)   a result computed once per record (full-data and random-subset
                             accuracies per dataset, architecture, protocol, IPC and seed) and kept
                             as an artifact across suites and sets.
"""
from __future__ import annotations

import dataclasses
import os
import time
import zlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ddjax import registry
from ddjax.data.preprocess import apply_preprocessor
from ddjax.data.sampling import one_hot, real_subset
from ddjax.evaluate.protocols.base import settings_of
from ddjax.evaluate.train import accuracy
from ddjax.infra import artifacts, distributed, files
from ddjax.models import from_config

Measure = Callable[[Any, dict], dict]   # (model, variables) -> {name: float or array}


def log(line: str) -> None:
  print('[suite] ' + line, flush=True)


def _cell_key(key: jax.Array, cell: str) -> jax.Array:
  return jax.random.fold_in(key, zlib.crc32(cell.encode()) & 0x7FFFFFFF)


def _safe(name: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_.=' else '_' for c in name)


def _unit_path(root: str, cell: str, i: int) -> str:
  return os.path.join(root, *[_safe(p) for p in cell.split('/')], f'net{i}.npz')


def _read_unit(path: str) -> dict | None:
  try:
    arrays = artifacts.read_npz(path, 'suite unit', fix='delete it to train that network again')
  except artifacts.RecordError as e:
    log(f'{e}; training that network again')
    os.remove(path)
    return None
  return None if arrays is None else {k: np.asarray(v) for k, v in arrays.items()}


@dataclasses.dataclass
class Context:
  """An axis's view of the suite.

  Attributes:
    data: the `PreparedData` the set belongs to (its preprocessing).
    judged: the `ddjax.suite.sets.JudgedSet`.
    syn: the set in model space {'x': (n, H, W, C), 'y': (n, K), extras...}.
    run_cfg: the full ddjax config the protocols read (the set's own for a workdir).
    plan: the `registry.Plan` of run_cfg (its protocol is the set's protocol).
    settings: this axis's settings (ConfigDict).
    suite: the suite's shared settings (num_models, seed, max_steps, ...).
    key: the suite's PRNG key (the same for every axis: a cell folds in its name, so a cell
      two axes share is one set of networks whatever the axes' order).
    out_dir: this axis's output directory (plots, unit files).
    cache_dir: where cached baselines live (shared by suites).
  """
  data: Any
  judged: Any
  syn: dict
  run_cfg: ml_collections.ConfigDict
  plan: registry.Plan
  settings: ml_collections.ConfigDict
  suite: ml_collections.ConfigDict
  key: jax.Array
  out_dir: str
  cache_dir: str

  # ----------------------------------------------------------------------------------- models
  def model(self, arch: str | None = None):
    """The evaluation model: the run's eval.model (arch None) or a zoo architecture by name
    (`ddjax.models.zoo`), built for the data's classes."""
    if arch is None:
      return from_config(self.run_cfg.eval.model, self.data.num_classes)
    from ddjax.models.zoo import zoo_model
    return zoo_model(arch, self.data.num_classes, base_block=self.run_cfg.eval.model)

  def protocol(self, name: str | None = None) -> registry.Protocol:
    """The set's protocol (name None) or a registered one by name."""
    return self.plan.evaluator if name is None else registry.get_protocol(name)

  def plan_for(self, spec: registry.Protocol) -> registry.Plan:
    """The set's plan with `spec` as its protocol: what a protocol's `train` and `evaluate` read
    their own settings from (`plan.evaluator`), so that asking for 'dc' trains as 'dc'."""
    return dataclasses.replace(self.plan, evaluator=spec, protocol=spec.name)

  def budget(self, protocol: registry.Protocol, n: int) -> dict:
    """Overrides that cap the protocol's training at suite.max_steps steps (0: no cap): fewer
    epochs for epoch-based protocols, fewer steps otherwise."""
    cap = int(self.suite.max_steps)
    if cap <= 0:
      return {}
    p = settings_of(protocol, n, self.data.num_classes)
    if p.steps <= cap:
      return {}
    if p.epochs:
      return {'epochs': max(1, int(p.epochs * cap // p.steps))}
    return {'steps': cap}

  # -------------------------------------------------------------------------------- networks
  def networks(self, cell: str, syn: dict | Callable[[int], dict], *, arch: str | None = None,
               protocol: str | None = None, overrides: dict | None = None,
               num: int | None = None, measure: Measure | None = None,
               root: str | None = None) -> list[dict]:
    """Train `num` (suite.num_models) fresh networks on `syn` (a set, or i -> network i's set)
    under `protocol` (the set's by default) on `arch` (eval.model by default) and measure each.

    Network i trains with fold_in(key(cell), i). Its measures (`measure(model, variables)`,
    default {'acc': test accuracy}) are written to <root>/<cell>/net<i>.npz as soon as it
    finishes; a later call finds them there and trains nothing. With several processes each
    trains its share and every process gets every network's measures. Units live beside the
    axes' directories (`root` default), so two axes asking for the same cell share it.

    Returns [measures of network i] in network order (arrays as numpy)."""
    num = int(self.suite.num_models if num is None else num)
    root = root or os.path.join(os.path.dirname(self.out_dir), 'units')   # shared by axes
    spec = self.protocol(protocol)
    if spec.train is None:
      raise ValueError(f'protocol {spec.name!r} trains no network (it has no `train`); this '
                       'axis needs networks: judge the set under another protocol '
                       '(--suite.protocol)')
    measure = measure or self.test_accuracy
    model = None
    key = _cell_key(self.key, cell)
    own = []
    members = list(distributed.own_members(num))
    for j, i in enumerate(members):
      path = _unit_path(root, cell, i)
      found = _read_unit(path)
      if found is not None:
        own.append(found)
        continue
      model = model or self.model(arch)
      s = syn(i) if callable(syn) else syn
      settings = {**self.budget(spec, int(s['x'].shape[0])), **(overrides or {})}
      t_net = time.perf_counter()
      variables = spec.train(self.run_cfg, self.data, s, self.plan_for(spec),
                             jax.random.fold_in(key, i), model, settings)
      values = {k: np.asarray(v) for k, v in measure(model, variables).items()}
      files.make_dirs(os.path.dirname(path), 'suite unit directory')
      files.write_npz(path, **values)
      own.append(values)
      took = time.perf_counter() - t_net
      left = (len(members) - j - 1) * took
      shown = ', '.join(f'{k} {float(v):.4f}' for k, v in values.items() if v.ndim == 0)
      log(f'{cell}: network {i + 1}/{num} in {took:.1f} s ({shown}); ETA of this cell '
          f'{left:.0f} s')
    return self._gather(own, num)

  def _gather(self, own: list[dict], num: int) -> list[dict]:
    if jax.process_count() == 1:
      return own
    if num < jax.process_count():
      raise ValueError(f'{num} networks cannot be shared out over {jax.process_count()} '
                       'processes; set --suite.num_models to at least the process count')
    out = [dict() for _ in range(num)]
    for k in sorted(own[0]):
      local = np.stack([np.asarray(o[k], np.float64) for o in own])
      every = distributed.gather_members(local, num)
      for i in range(num):
        out[i][k] = every[i]
    return out

  def test_accuracy(self, model, variables) -> dict:
    """{'acc': the network's accuracy on the data's test split}."""
    return {'acc': accuracy(model, variables, self.data.x_test, self.data.y_test)}

  def accuracy(self, cell: str, syn, **kwargs) -> dict:
    """Test accuracy of `networks(cell, syn, **kwargs)`: {'accs', 'acc_mean', 'acc_std'}
    (fractions; std with ddof 0)."""
    accs = [float(m['acc']) for m in self.networks(cell, syn, **kwargs)]
    return {'accs': accs, 'acc_mean': float(np.mean(accs)), 'acc_std': float(np.std(accs))}

  # ---------------------------------------------------------------------------------- sets
  def model_space(self, x_pixels: np.ndarray) -> np.ndarray:
    """Pixel-space images -> the data's model space (its preprocessing)."""
    return np.asarray(apply_preprocessor(self.data.pre, np.asarray(x_pixels, np.float32)),
                      np.float32)

  def random_subset(self, ipc: int, seed: int) -> dict:
    """A class-balanced random subset of the real training images, `ipc` per class, labelled
    one-hot when the judged set's labels are hard and as the method initialises its labels
    otherwise; the set's learned extras (a learned step size) are kept, so the subset is
    trained on exactly as the set is."""
    hard = self.judged.hard_labels or 'distill' not in self.run_cfg
    label_init = 'one_hot' if hard else self.run_cfg.distill.get('label_init', 'one_hot')
    sub, _ = real_subset(seed, self.data.x_train, self.data.y_train, ipc,
                         self.data.num_classes, label_init)
    return {**{k: v for k, v in self.syn.items() if k not in ('x', 'y')}, **sub}

  def hard(self, syn: dict) -> dict:
    """The same set with one-hot labels of its rows' argmax (hard labels)."""
    y = np.asarray(syn['y'])
    return dict(syn, y=one_hot(y.argmax(-1), y.shape[1]))

  # ---------------------------------------------------------------------------------- cache
  def data_record(self) -> dict:
    """What identifies the data for cached baselines: name, preprocessing, shapes."""
    d = self.run_cfg.data
    return {'dataset': d.name, 'preprocessing': self.data.pre.kind,
            'train': int(len(self.data.y_train)), 'test': int(len(self.data.y_test)),
            'image_shape': list(self.data.image_shape), 'classes': int(self.data.num_classes)}

  def cached(self, kind: str, record: dict, compute: Callable[[str], dict]) -> dict:
    """compute(directory) once per (kind, record), kept under cache_dir/<kind>_<hash>/ with its
    record (`ddjax.infra.artifacts`); `compute` may keep its own unit files in `directory`,
    so an interrupted baseline resumes too."""
    record = {'kind': kind, **record}
    directory = os.path.join(self.cache_dir, f'{kind}_{artifacts.content_hash(record)}')
    result_path = os.path.join(directory, 'result.json')
    if artifacts.is_complete(directory) and os.path.exists(result_path):
      return artifacts.read_json(result_path, 'delete the directory to compute it again')
    files.make_dirs(directory, 'suite cache directory')
    result = compute(directory)
    if distributed.is_main():
      files.write_json(result_path, result)
      artifacts.publish(directory, record)
    return result

