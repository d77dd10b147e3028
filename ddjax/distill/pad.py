"""PAD: prioritize alignment in dataset distillation (Li, Guo et al., 2024) = DATM
(`ddjax.distill.datm`) + FIEX experts + FIEM matching. References section 3.

  FIEX  the expert buffer is trained with PAD's difficulty scheduler (`expert.fiex`: the easiest
        75 % first, harder samples added until epoch 20, the easiest 10 % / 20 % dropped after
        epochs 40 / 60; `ddjax.scoring.fiex`), so PAD's runs read their own buffer.
  FIEM  the trajectory distance ignores the shallowest parameters: only the entries after the
        first alpha fraction of the flattened parameter vector (PyTorch order, shallow to deep:
        the network's module order, `ddjax.models.parameter_order`, not the buffer's key order;
        cut mid-tensor) are matched, in numerator and denominator (pad txt Eq. 4;
        `ddjax.distill.mtt.parameter_mask`). alpha by IPC from the paper's Table 9: 0 / 0.25 /
        0.25 / 0.5 / 0.75 at IPC 1 / 10 / 50 / 500 / 1000 (`pad.alpha=-1`); the official YAML's
        0.5 at IPC 10 is `pad.alpha=0.5`. `pad.fiem`: 'depth' (the paper's method, as the
        deleted PAD_depth.py), 'per_layer' (whole tensors, ddjax's variant), 'loss' (the paper's
        ablation, which the official PAD.py at HEAD runs: drop the alpha fraction of entries
        with the smallest error) or 'none' (= DATM on FIEX experts).
"""
from __future__ import annotations

import ml_collections

from ddjax import registry
from ddjax.distill import datm, mtt

# pad txt Table 9 (CIFAR-10): the fraction of shallow parameters left unmatched, by IPC.
ALPHA_BY_IPC = {1: 0.0, 10: 0.25, 50: 0.25, 500: 0.5, 1000: 0.75}


def alpha_for_ipc(ipc: int) -> float:
  """Table 9's alpha for the largest tabulated IPC <= ipc."""
  return ALPHA_BY_IPC[max(k for k in ALPHA_BY_IPC if k <= max(ipc, 1))]


class PAD(datm.DATM):
  """DATM with PAD's FIEM mask (`mask_mode`, `mask_fraction`); see the module docstring."""


def pad_block() -> ml_collections.ConfigDict:
  b = ml_collections.ConfigDict()
  b.fiem = 'depth'      # depth (paper) | per_layer (ddjax) | loss (ablation / HEAD) | none
  b.alpha = -1.0        # shallow fraction left unmatched; -1 = Table 9 by IPC
  return b


def alpha_of(cfg: ml_collections.ConfigDict) -> float:
  return alpha_for_ipc(cfg.distill.ipc) if cfg.pad.alpha < 0 else float(cfg.pad.alpha)


CPU_STEPS = 1000   # the CPU default's iterations (DATM's: 500); see `_configure`


def _configure(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """DATM's settings (`datm.configure_datm`) with a FIEX buffer (the README command's
  schedule) and the depth mask."""
  datm.configure_datm(cfg, preset)
  cfg.expert.fiex = True
  # Every preset keeps PAD's own schedule epochs (add until 20, remove after 40 / 60), also for
  # the CPU default's 6-epoch buffer, which is then the first 6 epochs of PAD's buffer, all inside
  # the add phase: what PAD's IPC-1 students sample (window [0, 4) + M = 2, Table 9). Scaling the
  # schedule to the short buffer would put the removals inside the sampled window, which measured
  # worse (benchmarks/README.md, trajectory matching).
  if preset in ('', 'cpu'):
    # CPU budget: twice DATM's iterations, where PAD at IPC 1 still gains (benchmarks/README.md).
    cfg.distill.steps = CPU_STEPS


def _validate(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.infra.config_checks import choice_errors
  errors = datm.validate_datm(cfg) + choice_errors(cfg, 'pad.fiem', mtt.MASKS)
  if not (cfg.pad.alpha == -1 or 0 <= cfg.pad.alpha < 1):
    errors.append(f'pad.alpha={cfg.pad.alpha} must lie in [0, 1) (or -1: Table 9 by IPC).')
  return errors


def _build(cfg: ml_collections.ConfigDict, data) -> PAD:
  return PAD(mtt.get_buffer(cfg, data), mask_mode=cfg.pad.fiem, mask_fraction=alpha_of(cfg),
             **datm.build_kwargs(cfg, data))


registry.register(registry.Method(
    name='pad', build=_build, distiller_class=PAD,
    blocks=(registry.ConfigBlock('pad', pad_block, signed_keys=('pad.alpha',)),
            *mtt.TRAJECTORY_BLOCKS),
    configure=_configure, validate=_validate,
    presets=registry.PRESETS + ('faithful', 'cifar10', 'cifar100'),
    plan=mtt.plan, protocol='tm',
    description='PAD: DATM on FIEX experts, matching deep-layer parameters only'))
