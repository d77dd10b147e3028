"""Data parallelism: FRePo's step (a pool of several pre-trained models) on one device and on a
2-device mesh, each in its own process (the device count is fixed when JAX starts), and DM's real
side kept split over the devices (no gather of the whole batch)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from conftest import ROOT

# One FRePo run of 3 steps on every device of this process; prints what the parent compares.
FREPO_SCRIPT = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from conftest import tiny_config
    from ddjax.distill import step as step_lib
    from ddjax.infra import files, sharding
    from ddjax.runtime import loop, pipeline
    cfg = tiny_config({npz!r}, steps=3)
    cfg.frepo.num_models, cfg.frepo.max_online_updates = 3, 6   # pre-trained for 0, 2, 4 steps
    cfg.eval.num_models = 0
    data = pipeline.load_data(cfg)
    mesh = sharding.make_mesh()
    plan = pipeline.make_plan(cfg, data)
    dist = pipeline.build_distiller(cfg, plan, data, cfg.distill.batch_size)
    syn, _ = pipeline.initial_synthetic(cfg, plan, data, dist)
    pool = dist.init(syn, jax.random.PRNGKey(0))
    batch = loop.make_sampler(data.x_train, data.targets_train, cfg.distill.batch_size,
                              cfg.seed)(0)
    rep = sharding.replicated(mesh)
    loss = lambda s, b: dist.per_sample(s, pool, b, jax.random.PRNGKey(1)).loss.mean()
    grad = jax.jit(jax.value_and_grad(loss), in_shardings=(rep, sharding.batch_sharding(mesh)),
                   out_shardings=rep)
    value, g = grad(jax.device_put(syn, rep), sharding.shard_batch(batch, mesh))
    out, _, _ = pipeline.distill(cfg, plan, data, os.path.join({tmp!r}, str(jax.device_count())))
    metrics = files.read_jsonl(os.path.join({tmp!r}, str(jax.device_count()), 'metrics.jsonl'))
    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)]).tolist()
    print(json.dumps({{'devices': jax.device_count(), 'mesh': int(mesh.devices.size),
                      'lr': float(cfg.distill.lr), 'steps': int(cfg.distill.steps),
                      'pool': flat(pool.variables), 'loss': float(value), 'grad': flat(g),
                      'metrics': metrics, 'x': np.asarray(out['x']).ravel().tolist()}}))
''')


def _frepo_run(devices, npz, tmp):
  script = FREPO_SCRIPT.format(tests=os.path.join(ROOT, 'tests'), npz=npz, tmp=str(tmp))
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])}
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['devices'] == out['mesh'] == devices
  return out


def test_frepo_pool_step_on_two_devices_equals_one_device(tiny_npz, tmp_path):
  """The stated tolerance of a data-parallel run (`ddjax.infra.sharding`): the pool is built on
  the synthetic set alone, so it is bit-identical; the loss agrees to float reordering (1e-6
  relative); the gradient to 1e-3 of its largest entry (the KRR solve amplifies reordering by
  K_SS's condition number); the images after Adam steps to 1e-4 except where a gradient entry
  sits at float-noise level and Adam's normalised step may take either sign: there at most
  2 x lr per step, and on at most 1 % of the pixels."""
  one, two = _frepo_run(1, tiny_npz, tmp_path), _frepo_run(2, tiny_npz, tmp_path)
  np.testing.assert_array_equal(np.array(one['pool']), np.array(two['pool']))
  np.testing.assert_allclose(two['loss'], one['loss'], rtol=1e-6)
  g1, g2 = np.array(one['grad']), np.array(two['grad'])
  assert np.abs(g1 - g2).max() <= 1e-3 * np.abs(g1).max()
  for a, b in zip(one['metrics'], two['metrics']):
    assert a['step'] == b['step']
    np.testing.assert_allclose(b['meta_loss'], a['meta_loss'], rtol=1e-5)
  x1, x2 = np.array(one['x']), np.array(two['x'])
  diff = np.abs(x1 - x2)
  assert diff.max() <= 2 * one['lr'] * one['steps']
  assert np.mean(diff > 1e-4) <= 0.01, np.mean(diff > 1e-4)


DM_SCRIPT = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np
    from ddjax.distill.dm import DM
    from ddjax.infra import sharding
    from ddjax.models.convnet import ConvNet
    K, m = 4, 8
    dm = DM(ConvNet(num_classes=K, width=8, depth=2, norm='instance'), (16, 16, 3), K,
            dsa_strategy='color_crop_cutout_flip_scale_rotate')
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(K), m))          # classes interleaved
    batch = {{'x': rng.uniform(size=(K * m, 16, 16, 3)).astype(np.float32),
              'y': np.eye(K, dtype=np.float32)[labels]}}
    if {weight}:
      batch['weight'] = (rng.uniform(size=K * m) > 0.3).astype(np.float32)
    syn = {{'x': rng.uniform(size=(2 * K, 16, 16, 3)).astype(np.float32),
            'y': np.eye(K, dtype=np.float32)[np.repeat(np.arange(K), 2)]}}
    loss = lambda s, b: dm.per_class(s, None, b, jax.random.PRNGKey(3)).loss.mean()
    out = {{}}
    for n in (1, 2):
      mesh = sharding.make_mesh(jax.devices()[:n])
      rep = sharding.replicated(mesh)
      fn = jax.jit(jax.value_and_grad(loss), in_shardings=(rep, sharding.batch_sharding(mesh)),
                   out_shardings=rep)
      args = jax.device_put(syn, rep), sharding.shard_batch(batch, mesh)
      value, grad = fn(*args)
      out[n] = {{'loss': float(value), 'grad': np.asarray(grad['x']).ravel().tolist(),
                 'hlo': fn.lower(*args).compile().as_text()}}
    print(json.dumps(out))
''')


def test_dm_keeps_the_real_batch_split_over_devices():
  """DM's real class means from a batch split over 2 devices: no all-gather of the batch in the
  compiled step (each device embeds only its rows; the class sums are all-reduced), and the loss
  and image gradient of the 1-device program, with and without BiLP's sample weights."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': ' '.join(flags + ['--xla_force_host_platform_device_count=2'])}
  for weight in (False, True):
    proc = subprocess.run([sys.executable, '-c', DM_SCRIPT.format(weight=weight)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 'all-gather' not in out['2']['hlo']
    assert 'all-reduce' in out['2']['hlo']
    np.testing.assert_allclose(out['2']['loss'], out['1']['loss'], rtol=1e-5)
    g1, g2 = np.array(out['1']['grad']), np.array(out['2']['grad'])
    assert np.abs(g1 - g2).max() <= 1e-4 * np.abs(g1).max()
