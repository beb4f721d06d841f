"""Inception Score from classifier logits.

    IS = exp( E_x KL( p(y|x) || p(y) ) ),  p(y) = mean over the split of p(y|x)

computed on `num_splits` disjoint splits of the samples; the score is reported as the mean and
standard deviation over splits (10 splits of 50K samples in the literature). RunningInceptionScore
gives the same numbers from batches arriving in order, in [num_splits, K] memory.

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


class RunningInceptionScore:
  """inception_score() accumulated batch by batch, for samples arriving in order.

  The splits are those of inception_score (np.array_split of the N samples, contiguous). Per
  split it keeps sum_x p(y|x) [K] and sum_x sum_y p log p (float64), since

      E_x KL(p(y|x) || p(y)) = E_x sum_y p(y|x) log p(y|x) - sum_y p(y) log p(y),

  so memory is [num_splits, K] whatever N is.
  """

  def __init__(self, num_samples: int, num_splits: int = 10):
    if not 1 <= num_splits <= num_samples:
      raise ValueError(f'num_splits must be in [1, N={num_samples}]; got {num_splits}.')
    self.num_samples, self.num_splits = num_samples, num_splits
    sizes = [len(part) for part in np.array_split(np.arange(num_samples), num_splits)]
    self._sizes = np.asarray(sizes, np.float64)
    self._ends = np.cumsum(sizes)
    self.count = 0
    self._sum_p: np.ndarray | None = None
    self._sum_plogp = np.zeros(num_splits, np.float64)

  def update(self, logits: np.ndarray) -> None:
    """Adds the logits [B, K] of the next B samples."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or self.count + logits.shape[0] > self.num_samples:
      raise ValueError(
        f'logits must be [B, K] with at most {self.num_samples - self.count} rows left; got '
        f'{logits.shape}.'
      )
    if self._sum_p is None:
      self._sum_p = np.zeros((self.num_splits, logits.shape[1]), np.float64)
    log_p = scipy.special.log_softmax(logits, axis=1)
    p = np.exp(log_p)
    plogp = np.sum(p * log_p, axis=1)
    split = np.searchsorted(self._ends, self.count + np.arange(logits.shape[0]), side='right')
    for s in np.unique(split):
      rows = split == s
      self._sum_p[s] += p[rows].sum(axis=0)
      self._sum_plogp[s] += plogp[rows].sum()
    self.count += logits.shape[0]

  def result(self) -> tuple[float, float]:
    """(mean, std) over the splits, as inception_score() of all the logits."""
    if self.count != self.num_samples:
      raise ValueError(f'have {self.count} of {self.num_samples} samples.')
    marginal = self._sum_p / self._sizes[:, None]  # [splits, K] p(y)
    kl = self._sum_plogp / self._sizes - np.sum(scipy.special.xlogy(marginal, marginal), axis=1)
    scores = np.exp(kl)
    return float(np.mean(scores)), float(np.std(scores))
