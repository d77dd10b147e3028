"""Mixed precision (model.dtype='bfloat16'): bfloat16 compute, float32 parameters, synthetic set,
optimizer states and losses; the forward pass agrees with float32 within bfloat16's precision."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import TINY_CLASSES, TINY_SHAPE, make_tiny_arrays
from ddjax import transforms as T
from ddjax.config import ConfigError, base_config, validate
from ddjax.data import centered_one_hot, init_synthetic
from ddjax.distill import step as step_lib
from ddjax.distill.frepo import FRePo, FRePoConfig
from ddjax.models import from_config, init_model
from ddjax.runtime.pipeline import config_differences

BF16_EPS = 2.0 ** -8


def _block(**kw):
  b = base_config().model
  b.update(kw)
  return b


def _dtypes(tree):
  return {str(a.dtype) for a in jax.tree_util.tree_leaves(tree)}


@pytest.mark.parametrize('block', [
    dict(arch='convnet', depth=2, width=16, norm='batch'),
    dict(arch='mlp', mlp_widths=(64, 32)),
])
def test_bf16_forward_is_float32_within_bf16_precision(block):
  m32 = from_config(_block(**block), TINY_CLASSES)
  m16 = from_config(_block(dtype='bfloat16', **block), TINY_CLASSES)
  variables = init_model(m32, jax.random.PRNGKey(0), (1,) + TINY_SHAPE)
  x = jnp.asarray(make_tiny_arrays()[0][:32])
  assert _dtypes(jax.eval_shape(m16.init, jax.random.PRNGKey(0), x)) == {'float32'}   # params
  mutable = ['batch_stats'] if 'batch_stats' in variables else False
  outs = {}
  for name, m in (('f32', m32), ('bf16', m16)):
    out = jax.jit(lambda v, x: m.apply(v, x, train=bool(mutable), mutable=mutable))(variables, x)
    (logits, feats), new = out if mutable else (out, {})
    assert logits.dtype == feats.dtype == jnp.float32          # outputs cast back up
    assert _dtypes(new) <= {'float32'}                          # batch statistics stay float32
    outs[name] = (np.asarray(logits), np.asarray(feats))
  for a, b in zip(outs['f32'], outs['bf16']):
    err = np.max(np.abs(a - b)) / np.max(np.abs(a))
    assert 0 < err < 8 * BF16_EPS, err                # really bf16 (not equal), and close to f32


def test_bf16_distillation_step_keeps_float32_state_and_is_finite():
  x, y, _, _ = make_tiny_arrays()
  syn0 = {k: jnp.asarray(v) for k, v in init_synthetic(0, x, y, 2, TINY_CLASSES).items()}
  batch = {'x': jnp.asarray(x[:64]), 'y': jnp.asarray(centered_one_hot(y[:64], TINY_CLASSES))}
  transform = T.chain(T.drop_easiest(0.2), T.isa(1.0))
  opt = step_lib.make_syn_optimizer('adam', 1e-2, 1e-2, steps=10)
  fcfg = FRePoConfig(num_models=1, max_online_updates=4)
  bf16 = FRePo(from_config(_block(depth=1, width=8, dtype='bfloat16'), TINY_CLASSES), fcfg,
               TINY_SHAPE)
  state = step_lib.init_state(bf16, transform, opt, syn0, jax.random.PRNGKey(0))
  step = step_lib.make_step(bf16, transform, opt, jnp.repeat(jnp.arange(TINY_CLASSES), 2))
  jaxpr = str(jax.make_jaxpr(step)(state, batch, jax.random.PRNGKey(0)))
  assert 'bf16[' in jaxpr and 'conv_general_dilated' in jaxpr       # the network runs in bf16
  step = jax.jit(step)
  for s in range(2):
    state, metrics = step(state, batch, jax.random.PRNGKey(s))
    assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0
  assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(state))
  assert not np.array_equal(state.syn['x'], syn0['x'])          # the set was optimized
  # the synthetic set, its optimizer state, the pool's parameters and Adam moments: float32
  assert _dtypes(state.syn) == {'float32'}
  assert _dtypes(state.opt_state) <= {'float32', 'int32'}
  assert _dtypes(state.distiller_state.variables) == {'float32'}
  assert _dtypes(state.distiller_state.opt_state) <= {'float32', 'int32'}


def test_dtype_is_checked_and_old_workdirs_resume():
  cfg = base_config()
  cfg.model.dtype = 'float16'
  with pytest.raises(ConfigError, match=r"model.dtype='float16' is not one of \('float32', "
                                        r"'bfloat16'\)"):
    validate(cfg)
  new = base_config().to_dict()
  old = base_config().to_dict()
  del old['model']['dtype']                     # a workdir written before the key existed
  assert config_differences(old, new) == []
  new['model']['dtype'] = 'bfloat16'
  assert config_differences(old, new) == ["model.dtype: 'float32' -> 'bfloat16'"]


def test_float32_expert_record_is_unchanged():
  from ddjax.distill.experts import model_record
  block = base_config().model
  assert 'dtype' not in model_record(block)     # buffers made before the key stay usable
  block.dtype = 'bfloat16'
  assert model_record(block)['dtype'] == 'bfloat16'
  assert from_config(ml_collections.ConfigDict(model_record(base_config().model)),
                     3).dtype is None
