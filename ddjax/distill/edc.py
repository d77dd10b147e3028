r"""EDC (Shao et al., NeurIPS 2024, "Elucidating the Design Space of Dataset Condensation"): the
recovery side. EDC's code is G-VBSM's (`ddjax.distill.gvbsm`) plus switches; each ingredient of
its ablation tables is a config switch here (`edc.*`, `gsm.*`, `distill.init`, `recover.*`):

  Real Image Initialization      distill.init='real' (class-balanced real images; the CIFAR-10
                                 branch's --initial-img-dir is the CIFAR-10 train set, recover.sh:9)
                                 or edc.init='rded' (RDED's selected images on the run's observer,
                                 `ddjax.distill.rded`: the ImageNet branch starts from RDED's set,
                                 Branch_full_ImageNet_1k/recover/recover.sh:10)
  Soft Category-Aware Matching   edc.alpha = 0.5: R_h = (1 - alpha) global + alpha class term, the
                                 class term ||sum_c p_c t_c - s~|| (E:utils.py:224-229 BN,
                                 :501-514 Conv; `ddjax.distill.statistics`); 0: G-VBSM's
  Flatness Regularization        edc.flatness (off in the shipped CIFAR script; E:recover.py:366),
                                 edc.flatness_weight (code default 1.0, L368; paper Tab. 4 best
                                 0.25), edc.flatness_ema beta 0.99 (L370), tau 4 (L260-271)
  multiple observers             observer.ensemble, round-robin (E:recover.py:242-245)
  no roll jitter, RRC + flip     recover.jitter = 0, recover.crop (scale (0.08, 1)), recover.flip
                                 (E:recover.py:236-240; --jitter is unused); gsm.pad_crop = 0
  no DD loss                     gsm.dd_weight = 0 (EDC's recover loss has none, L253-276)
  Conv hooks kept                gsm.drop_rate = 0 (recover.sh:5)

E = shaoshitong/EDC, Branch_CIFAR_10/recover/. Its shipped CIFAR-10 run (recover.sh:4-9): batch 10
(IPC 1: the whole set), category-aware global, lr 0.05, drop 0.0, IPC 1, momentum 0.8, 75
iterations, r_loss 0.01, real initialisation; Adam betas (0.5, 0.9), cosine per iteration
(E:recover.py:226-227), first hook x10. Observers: ResNet18, ConvNetW128, MobileNetV2, WRN_16_2,
ShuffleNetV2_0_5, ConvNetD1, ConvNetD2, ConvNetW32 (E:recover.py:429), here the zoo's nearest
(`PAPER_OBSERVERS`). The evaluation-side ingredients (ensemble soft labels with MSE + w_ce CE, EMA
student, smoothed / multistep schedules, a smaller batch) are the 'ensemble' protocol's switches
(`ddjax.evaluate.protocols.ensemble`; `ensemble.schedule`, `ensemble.ema`, `ensemble.batch_size`,
`ensemble.loss`), which this method evaluates with at EDC's settings (`ensemble_preset('edc')`).

Differences from the official code: the class patch targets are the intended ones (the official
`save` swaps the class patch mean and variance, E:utils.py:370-373; edc.swap_class_patch_stats
reproduces it); the clamp before the forward (E:recover.py:250) is the projection after every
update (the same for an initial set inside the pixel range); the flatness EMA and statistics'
EMAs are per recovery batch (`ddjax.distill.gvbsm`).

    python -m ddjax.main --config=configs/edc.py
    python -m ddjax.main --config=configs/edc.py:paper        # CIFAR-10, IPC 1, 8 zoo observers
"""
from __future__ import annotations

import ml_collections

from ddjax import registry
from ddjax.distill import gvbsm, rded
from ddjax.distill import statistics as st
from ddjax.distill.sre2l import RECOVER_BLOCK
from ddjax.evaluate.protocols.rded import OBSERVER_BLOCK

INITS = ('set', 'rded')
# ResNet18, ConvNetW128, MobileNetV2, WRN_16_2, ShuffleNetV2_0_5 as G-VBSM's substitutes
# (`gvbsm.PAPER_OBSERVERS`), then ConvNetD1 -> ConvNet-1, ConvNetD2 -> ConvNet-2, ConvNetW32 ->
# LeNet (the zoo's ConvNets are width 128: a small network stands in for width 32).
PAPER_OBSERVERS = gvbsm.PAPER_OBSERVERS + ',ConvNet-1,ConvNet-2,LeNet'


def edc_block() -> ml_collections.ConfigDict:
  """cfg.edc: EDC's recovery switches (module docstring)."""
  b = ml_collections.ConfigDict()
  b.alpha = 0.5               # soft category-aware matching weight (0: off)
  b.flatness = False          # flatness regularisation (the shipped CIFAR script: off)
  b.flatness_weight = 1.0     # its weight (code default; paper Tab. 4 best: 0.25)
  b.flatness_ema = 0.99       # beta of the images' EMA
  b.flatness_tau = 4.0        # its temperature
  b.init = 'set'              # set: distill.init's draw (real / noise) | rded: RDED's images
  b.swap_class_patch_stats = False   # the official class patch mean / var swap (a quirk)
  return b


def validate_edc(cfg) -> list[str]:
  from ddjax.infra.config_checks import choice_errors
  e, errors = cfg.edc, []
  errors += choice_errors(cfg, 'edc.init', INITS)
  if not isinstance(e.alpha, (int, float)) or not 0.0 <= e.alpha <= 1.0:
    errors.append(f'edc.alpha must be a number in [0, 1], got {e.alpha!r}.')
  if not isinstance(e.flatness_ema, (int, float)) or not 0.0 <= e.flatness_ema < 1.0:
    errors.append(f'edc.flatness_ema must be a number in [0, 1), got {e.flatness_ema!r}.')
  for key in ('flatness_weight', 'flatness_tau'):
    if not isinstance(e[key], (int, float)) or e[key] <= 0:
      errors.append(f'edc.{key} must be a number > 0, got {e[key]!r}.')
  return errors


def validate_method(cfg) -> list[str]:
  """EDC's own checks: observer.ensemble set; RDED's images need the plain set (no IDC)."""
  errors = gvbsm.validate_ensemble(cfg)
  if cfg.edc.init == 'rded' and cfg.idc.factor > 1:
    errors.append("edc.init='rded' sets the images themselves; idc.factor must be 1.")
  return errors


EDC_BLOCK = registry.ConfigBlock('edc', edc_block, validate=validate_edc)


def configure_edc(cfg, preset: str) -> None:
  """EDC's recovery for a preset: '' / 'cpu' Fashion-MNIST (the CPU observers of
  `gvbsm.configure_statistic_recovery`, IPC as the run asks, batch = the whole set, 200
  iterations); 'paper' the shipped CIFAR-10 script (module docstring) with the zoo's nearest 8
  observers; 'image_folder' 64 px class folders with ResNet-18-BN among the observers."""
  gvbsm.configure_statistic_recovery(cfg, preset)
  d, r, g, e = cfg.distill, cfg.recover, cfg.gsm, cfg.edc
  d.init = 'real'                                       # recover.sh:9 (--initial-img-dir)
  d.lr, d.steps = 0.05, 200                             # recover.sh:5
  r.batch_size, r.r_bn, r.first_bn_multiplier = 100000, 0.01, 10.0   # "All"; recover.sh:9
  r.crop, r.min_crop, r.max_crop, r.flip, r.jitter = True, 0.08, 1.0, True, 0   # recover.py:236-240
  g.pad_crop, g.momentum, g.drop_rate, g.dd_weight = 0, 0.8, 0.0, 0.0          # recover.sh:5-6
  e.alpha, e.flatness, e.init = 0.5, False, 'set'       # recover.sh:4 (global), recover.py:366
  if preset == 'paper':
    d.ipc, d.steps = 1, 75                              # recover.sh:6-7
    r.batch_size = 10                                   # recover.sh:4 (IPC 1: all 10 images)
    cfg.observer.ensemble = PAPER_OBSERVERS             # recover.py:429 (substituted)
    cfg.observer.epochs = 5                             # squeeze.sh:1 (--train_epochs 5)
  if preset == 'image_folder':
    d.steps = 1000
  # its evaluation (Branch_CIFAR_10/train/direct_train.py, train.sh): students on the mean logits
  # of the observers, MSE + 0.025 CE, MultiStepLR at 0.8 / 0.9 / 0.95, parameter EMA 0.99, batch 25
  # (1000 epochs at :paper); the switches of its evaluation-side ablation are cfg.ensemble's
  gvbsm.ensemble_preset(cfg, 'edc', paper=preset == 'paper')


def _rded_initial_set(cfg, data):
  """The `initial_set` hook of edc.init='rded': RDED's selected images (`ddjax.distill.rded`) on
  the run's observer (cfg.observer), at RDED's default pool and crops and its factor for the image
  size."""
  from ddjax.evaluate.observer import get_observer
  obs = get_observer(cfg, data)
  defaults = rded.rded_block()
  factor = 2 if min(data.x_train.shape[1:3]) >= 64 else 1
  builder = rded.RDED(obs, data.x_train, data.y_train, data.num_classes, cfg.distill.ipc,
                      factor, defaults.pool_per_class, defaults.crops_per_image,
                      defaults.score_chunk, progress=lambda line: print('[edc] ' + line,
                                                                        flush=True))

  def initial_set(syn, key):
    return dict(syn, x=builder.build_set(key)['x'])
  return initial_set


def build_edc(cfg, data) -> gvbsm.StatisticRecovery:
  e = cfg.edc
  initial = _rded_initial_set(cfg, data) if e.init == 'rded' else None
  d = gvbsm.build_statistic_recovery(
      cfg, data, alpha=float(e.alpha),
      flatness=(float(e.flatness_weight) if e.flatness else 0.0, float(e.flatness_ema),
                float(e.flatness_tau)), initial_set=initial)
  if e.swap_class_patch_stats:
    d.targets = [tuple(swap_patch_targets(t) for t in ts) for ts in d.targets]
  return d


def swap_patch_targets(t: st.HookTargets) -> st.HookTargets:
  """A Conv hook's targets with the class patch mean and variance swapped (the official `save`,
  E:utils.py:370-373); BN hooks unchanged."""
  if t.kind != st.CONV:
    return t
  c = t.classwise
  return t._replace(classwise=(c[0], c[1], c[3], c[2]))


registry.register(registry.Method(
    name='edc', build=build_edc, distiller_class=gvbsm.StatisticRecovery,
    blocks=(RECOVER_BLOCK, gvbsm.GSM_BLOCK, EDC_BLOCK, OBSERVER_BLOCK),
    configure=configure_edc, presets=gvbsm.PRESETS, validate=validate_method, protocol='ensemble',
    description="EDC: G-VBSM's recovery with real initialisation, category-aware matching, "
                'flatness'))
