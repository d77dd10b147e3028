"""Evaluation: registered train-from-scratch protocols, test accuracy, the KRR predictor."""
from ddjax.evaluate.kernel import kernel_krr_accuracy
from ddjax.evaluate.protocols.base import (EvalProtocol, augment_pixels, get_protocol,
                                           make_optimizer, make_schedule)
from ddjax.evaluate.train import (accuracy, default_loop, default_vmap_models, evaluate_synthetic,
                                  krr_accuracy, predict, protocol_loss, train_from_scratch,
                                  train_networks)
from ddjax.evaluate.protocols.frepo import FREPO_STEPS_TABLE, frepo_steps  # noqa: E402

__all__ = [
    'FREPO_STEPS_TABLE', 'EvalProtocol', 'augment_pixels', 'frepo_steps',
    'get_protocol', 'make_optimizer', 'make_schedule', 'accuracy', 'default_loop',
    'default_vmap_models', 'evaluate_synthetic', 'kernel_krr_accuracy', 'krr_accuracy', 'predict',
    'protocol_loss', 'train_from_scratch', 'train_networks',
]
