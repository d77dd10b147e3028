"""Evaluation protocols: how a network is trained from scratch on a synthetic set. The shared
settings live in `base`; each protocol (frepo, dc, tm, rded, ensemble) is one module here, registered with
`ddjax.registry.register_protocol` when the registry loads (kept import-light: this package
imports no protocol module itself)."""
from ddjax.evaluate.protocols.base import (LOSSES, OPTIMIZERS, SCHEDULES, EvalProtocol,
                                           augment_pixels, get_protocol, make_optimizer,
                                           make_schedule, settings_of)

__all__ = ['LOSSES', 'OPTIMIZERS', 'SCHEDULES', 'EvalProtocol', 'augment_pixels', 'get_protocol',
           'make_optimizer', 'make_schedule', 'settings_of']
