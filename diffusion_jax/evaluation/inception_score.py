"""Inception Score from classifier logits.

    IS = exp( E_x KL( p(y|x) || p(y) ) ),  p(y) = mean over the split of p(y|x)

computed on `num_splits` disjoint splits of the samples; the score is reported as the mean and
standard deviation over splits (10 splits of 50K samples in the literature).

Source: Salimans et al. 2016, "Improved Techniques for Training GANs", Section 4.
"""

from __future__ import annotations

import numpy as np
import scipy.special


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
  """Inception Score (mean, std over splits) from logits [N, K], in float64.

  Args:
    logits: [N, K] unnormalized log-probabilities (the FID Inception's 1008 logits).
    num_splits: number of disjoint, contiguous splits (sizes differ by at most one).

  Returns:
    (mean, std) of exp(mean KL) over the splits.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2:
    raise ValueError(f'logits must be [N, K]; got shape {logits.shape}.')
  if not 1 <= num_splits <= logits.shape[0]:
    raise ValueError(f'num_splits must be in [1, N={logits.shape[0]}]; got {num_splits}.')
  log_p = scipy.special.log_softmax(logits, axis=1)  # [N, K] log p(y|x)
  scores = []
  for part in np.array_split(log_p, num_splits):
    # log p(y) of the split, via logsumexp (no log(0) for confident predictions).
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(part.shape[0])  # [K]
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)  # [n]
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))
