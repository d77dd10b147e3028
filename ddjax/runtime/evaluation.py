"""The evaluation stage of a run: networks trained from scratch on the (decoded) synthetic set under
the plan's registered protocol (`ddjax.registry.Protocol`; FRePo's KRR predictor on their features
where the protocol trains on the set), and optionally KRR with the infinite-width kernel of
cfg.kernel. Names no protocol: what differs between protocols is in their modules
(`ddjax.evaluate.protocols`)."""
from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from ddjax import data as data_lib
from ddjax.data.prepared import PreparedData
from ddjax.evaluate import kernel_krr_accuracy
from ddjax.kernels.architectures import kernel_fn_from_config

PIXEL_TOLERANCE = 1e-3   # float round-off of preprocessing and its inverse, in pixel units
KEY_EVAL = 3      # the purpose folded into the root key for evaluation (ddjax.runtime.pipeline)


def _log(line: str) -> None:
  print('[eval] ' + line, flush=True)


def clips_pixels(cfg: ml_collections.ConfigDict, plan) -> bool:
  """eval.clip_pixels with 'auto' resolved by the plan's protocol: on for protocols whose official
  code reads sets back from image files (`Protocol.reads_image_files`)."""
  if cfg.eval.clip_pixels == 'auto':
    return bool(plan.evaluator.reads_image_files)
  return cfg.eval.clip_pixels == 'on'


def kernel_krr(cfg: ml_collections.ConfigDict, plan, data: PreparedData, syn: dict) -> dict:
  """KRR test accuracy with the infinite-width kernel of cfg.kernel, at the plan's regulariser,
  on eval.kernel_krr_test test images (0: all)."""
  n_test = cfg.eval.kernel_krr_test or len(data.y_test)
  idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(data.y_test))[:n_test])
  reg = plan.krr_reg
  k = cfg.kernel
  _log(f'kernel KRR: {k.arch}-{k.depth} {k.kind}, {n_test} test images')
  t0 = time.perf_counter()
  acc = kernel_krr_accuracy(kernel_fn_from_config(k), syn['x'], syn['y'], data.x_test[idx],
                            data.y_test[idx], get=k.kind, reg=reg, progress=_log)
  return {'acc': acc, 'kernel': f'{k.arch}-{k.depth}', 'get': k.kind, 'reg': reg,
          'test_images': int(n_test), 'seconds': time.perf_counter() - t0}


def pixel_range(cfg: ml_collections.ConfigDict, plan, data: PreparedData,
                syn: dict) -> tuple[dict, dict]:
  """(syn, report): when eval.clip_pixels says so (`clips_pixels`; 'auto': for protocols whose
  official code reads sets from image files, such as 'rded') the set's images clipped to the
  data's pixel range [0, 1] (`ddjax.data.clip_to_pixel_range`), otherwise syn unchanged; the
  report says how far the learned pixels leave [0, 1] (min, max, the fraction of values outside)
  and whether they were clipped. A network trained on the set itself does not mind; a teacher
  trained on real images (the 'rded' protocol's observer) reads values far outside [0, 1] as
  other classes."""
  pixels = np.asarray(data_lib.invert_preprocessor(data.pre, np.asarray(syn['x'])))
  outside = float(np.mean((pixels < -PIXEL_TOLERANCE) | (pixels > 1 + PIXEL_TOLERANCE)))
  clip = clips_pixels(cfg, plan)
  report = {'pixel_min': float(pixels.min()), 'pixel_max': float(pixels.max()),
            'outside_fraction': outside, 'clipped': clip}
  if clip:
    syn = dict(syn, x=data_lib.clip_to_pixel_range(data.pre, np.asarray(syn['x'])))
  return syn, report


def evaluate(cfg: ml_collections.ConfigDict, plan, data: PreparedData, syn: dict) -> dict:
  """The results entries of every evaluation the config asks for ('set_pixels', the protocol's
  ('eval', and 'krr_eval' or 'observer'), 'kernel_krr_eval'), each printed as it finishes; every
  one sees the set clipped to [0, 1] when eval.clip_pixels says so (`pixel_range`).

  plan: the run's `ddjax.registry.Plan` (its protocol, KRR regulariser and patch factor)."""
  syn, report = pixel_range(cfg, plan, data, syn)
  results = {'set_pixels': report}
  _log(f'set pixels in [{report["pixel_min"]:.2f}, {report["pixel_max"]:.2f}], '
       f'{100 * report["outside_fraction"]:.1f} % outside [0, 1]'
       + (', clipped to [0, 1] (eval.clip_pixels)' if report['clipped'] else ''))
  if cfg.eval.num_models > 0:
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_EVAL)
    entries, line = plan.evaluator.evaluate(cfg, data, syn, plan, key)
    results.update(entries)
    _log(line)
  if cfg.eval.kernel_krr:
    results['kernel_krr_eval'] = kernel_krr(cfg, plan, data, syn)
    _log(f'kernel KRR accuracy {100 * results["kernel_krr_eval"]["acc"]:.2f} %')
  return results
