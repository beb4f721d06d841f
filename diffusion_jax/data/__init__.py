"""Data sources, preprocessing and augmentation behind `diffusion_jax.data.input_pipeline`."""

from diffusion_jax.data.augment import AUGMENT_DIM, AugmentConfig
from diffusion_jax.data.sources import (
  DatasetMissingError,
  load_digits_split,
  process_split_bounds,
  tfds_process_split,
)

__all__ = [
  'AUGMENT_DIM',
  'AugmentConfig',
  'DatasetMissingError',
  'load_digits_split',
  'process_split_bounds',
  'tfds_process_split',
]
