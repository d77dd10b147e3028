"""Augmentation: basic translate / cutout / flip, differentiable siamese augmentation (DSA),
FRePo's one-op-per-batch evaluation augmentation, and RDED's student augmentation of stitched
images (ShufflePatches, RandomResizedCrop)."""
from ddjax.augment.basic import augment_batch, random_cutout, random_flip, random_translate
from ddjax.augment.dsa import (DEFAULT_DSA_STRATEGY, DSA_MODES, DSA_OPS, DSAParams, dsa,
                               dsa_strategy_for, parse_dsa_strategy, rand_brightness, rand_color,
                               rand_contrast, rand_crop, rand_cutout, rand_flip, rand_rotate,
                               rand_saturation, rand_scale)
from ddjax.augment.frepo import FREPO_OPS, frepo_augment, frepo_strategy_for
from ddjax.augment.patches import (random_resized_crop, rrc_boxes, shuffle_patches,
                                   student_augment)

__all__ = [
    'augment_batch', 'random_cutout', 'random_flip', 'random_translate',
    'DEFAULT_DSA_STRATEGY', 'DSA_MODES', 'DSA_OPS', 'DSAParams', 'dsa', 'dsa_strategy_for',
    'parse_dsa_strategy', 'rand_brightness', 'rand_color', 'rand_contrast', 'rand_crop',
    'rand_cutout', 'rand_flip', 'rand_rotate', 'rand_saturation', 'rand_scale',
    'FREPO_OPS', 'frepo_augment', 'frepo_strategy_for',
    'random_resized_crop', 'rrc_boxes', 'shuffle_patches', 'student_augment',
]
