"""A user's suite axis, registered from outside the package as a user would (tests/test_suite.py
runs it end to end): the mean distance of each set image to its nearest real training image of
the same class, in model space (how close the set stays to real data)."""
import numpy as np

import ddjax


def _settings(preset):
  return {'real_per_class': 20 if preset == 'quick' else 200}


def run(ctx):
  x = np.asarray(ctx.syn['x']).reshape(len(ctx.syn['x']), -1)
  classes = np.asarray(ctx.judged.classes)
  y_train = np.asarray(ctx.data.y_train)
  dists = []
  for i, c in enumerate(classes):
    idx = np.flatnonzero(y_train == c)[:ctx.settings.real_per_class]
    real = np.asarray(ctx.data.x_train[idx]).reshape(len(idx), -1)
    dists.append(float(np.min(np.linalg.norm(real - x[i], axis=1))))
  return {'mean_distance': float(np.mean(dists)), 'real_per_class': ctx.settings.real_per_class}


def report(result):
  return f'mean distance to the nearest real image: {result["mean_distance"]:.4f}'


ddjax.register_axis(ddjax.Axis(name='nearest_real', run=run, report=report, settings=_settings,
                               summary=lambda r: {'nearest_real': r['mean_distance']},
                               description='distance of the set to real images (a user axis)'),
                    replace=True)
