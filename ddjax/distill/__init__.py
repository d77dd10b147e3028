"""Distillers (bundles of pure functions init / per_sample / regularizer / update) and the step."""
from ddjax.distill.frepo import FRePo, FRePoConfig, PoolState
from ddjax.distill.step import DistillState, init_state, make_step, make_syn_optimizer
