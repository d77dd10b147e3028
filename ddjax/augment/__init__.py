"""Augmentation: basic translate / cutout / flip; differentiable siamese augmentation later."""
from ddjax.augment.basic import augment_batch, random_cutout, random_flip, random_translate

__all__ = ['augment_batch', 'random_cutout', 'random_flip', 'random_translate']
