"""Sample-quality and likelihood evaluation: FID, Inception Score, precision/recall, NLL, digits.

`evaluate(config, workdir, sample_fn)` is what `main.py --mode=eval` calls.
"""

from diffusion_jax.evaluation.evaluate import EvalSettings, evaluate
from diffusion_jax.evaluation.frechet import RunningStatistics, feature_statistics, frechet_distance
from diffusion_jax.evaluation.inception import (
  InceptionFeatureExtractor,
  InceptionV3,
  InceptionWeightsNotFoundError,
  load_inception_variables,
)
from diffusion_jax.evaluation.inception_score import inception_score
from diffusion_jax.evaluation.precision_recall import precision_recall
from diffusion_jax.evaluation.reference_stats import load_reference_stats, save_reference_stats

__all__ = [
  'EvalSettings',
  'InceptionFeatureExtractor',
  'InceptionV3',
  'InceptionWeightsNotFoundError',
  'RunningStatistics',
  'evaluate',
  'feature_statistics',
  'frechet_distance',
  'inception_score',
  'load_inception_variables',
  'load_reference_stats',
  'precision_recall',
  'save_reference_stats',
]
