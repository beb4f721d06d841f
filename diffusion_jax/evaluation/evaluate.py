"""`evaluate(config, workdir, sample_fn)`: the metrics of --mode=eval, written to workdir/eval.

Metrics (config.eval.metrics):
- 'digits': accuracy of class-conditional samples under a digits classifier and the Frechet
  distance in its feature space, beside the real test split's numbers (offline);
- 'fid': Frechet Inception distance to config.eval.reference_stats (needs the converted FID
  Inception weights, config.eval.inception_weights);
- 'is': Inception Score (10 splits) from the same network's logits;
- 'pr': improved precision/recall (k = 3) in Inception space against the reference images
  stored under 'arr_0' of the reference .npz (as the ADM suite's reference batches hold);
- 'nll': negative log-likelihood bound in bits/dim on the test split (discrete-time objectives:
  the full-chain L_vlb of DDPM/iDDPM).

Optional config.eval keys (read with defaults): batch_size (default config.sample.batch_size),
seed (config.seed), inception_batch_size (200), is_splits (10), nll_split ('test'),
nll_num_examples (1000), save_samples (False: when True the evaluated samples are written to
workdir/eval/samples_NxHxWxC.npz in the ADM suite's format, arr_0 uint8 images, arr_1 labels).

Everything a metric needs is checked before sampling starts, so a missing weights file fails in
seconds rather than after an hour of sampling. The protocol (number of samples, sampler, NFE,
reference set, seed) is printed and stored with the numbers.

Source: Heusel et al. 2017 (FID); Salimans et al. 2016 (IS); Kynkaanniemi et al. 2019
(precision/recall); Ho et al. 2020 and Nichol & Dhariwal 2021 (NLL in bits/dim).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from diffusion_jax.evaluation import frechet, inception, inception_score, precision_recall
from diffusion_jax.evaluation import reference_stats as reference_lib

METRICS = ('digits', 'fid', 'is', 'pr', 'nll')
SAMPLE_METRICS = ('digits', 'fid', 'is', 'pr')
INCEPTION_METRICS = ('fid', 'is', 'pr')
DISCRETE_OBJECTIVES = ('ddpm', 'iddpm')
PR_MAX_SAMPLES = 10_000  # the ADM suite's precision/recall subset size.

SampleFn = Callable[..., Any]
NllFn = Callable[[np.ndarray, np.ndarray, jax.Array], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """Validated copy of the config keys evaluation reads."""

  metrics: tuple[str, ...]
  num_samples: int
  batch_size: int
  seed: int
  inception_weights: str
  reference_stats: str
  inception_batch_size: int
  is_splits: int
  nll_split: str
  nll_num_examples: int
  save_samples: bool
  dataset: str
  image_size: int
  num_channels: int
  num_classes: int
  objective: str
  sampler: str
  num_steps: int
  guidance: float

  @classmethod
  def from_config(cls, config: Any) -> EvalSettings:
    ev = config.eval
    metrics = ev.metrics
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
      raise ValueError(
        f'config.eval.metrics={metrics!r}: each entry must be one of {METRICS} (at least one).'
      )
    settings = cls(
      metrics=metrics,
      num_samples=int(ev.num_samples),
      batch_size=int(ev.get('batch_size', 0) or config.sample.batch_size),
      seed=int(ev.get('seed', config.seed)),
      inception_weights=str(ev.get('inception_weights', '') or ''),
      reference_stats=str(ev.get('reference_stats', '') or ''),
      inception_batch_size=int(ev.get('inception_batch_size', 200)),
      is_splits=int(ev.get('is_splits', 10)),
      nll_split=str(ev.get('nll_split', 'test')),
      nll_num_examples=int(ev.get('nll_num_examples', 1000)),
      save_samples=bool(ev.get('save_samples', False)),
      dataset=str(config.data.name),
      image_size=int(config.data.image_size),
      num_channels=int(config.data.num_channels),
      num_classes=int(config.data.num_classes),
      objective=str(config.diffusion.objective),
      sampler=str(config.sample.sampler),
      num_steps=int(config.sample.num_steps),
      guidance=float(config.sample.get('guidance', 0.0)),
    )
    settings._validate()
    return settings

  def _validate(self):
    sample_metrics = [m for m in self.metrics if m in SAMPLE_METRICS]
    if sample_metrics and self.num_samples < 2:
      raise ValueError(
        f'config.eval.num_samples={self.num_samples} must be >= 2 for '
        f'{sample_metrics} (50000 for paper-comparable FID/IS).'
      )
    if self.batch_size < 1:
      raise ValueError(f'config.sample.batch_size={self.batch_size} must be >= 1.')
    if 'is' in self.metrics and not 1 <= self.is_splits <= self.num_samples:
      raise ValueError(
        f'config.eval.is_splits={self.is_splits} must be in [1, '
        f'config.eval.num_samples={self.num_samples}].'
      )
    if 'digits' in self.metrics and (self.dataset != 'digits' or self.num_channels != 1):
      raise ValueError(
        "config.eval.metrics contains 'digits', which scores digit images: it "
        "needs config.data.name='digits' and num_channels=1 (got "
        f'{self.dataset!r}, {self.num_channels}). Use fid/is for other data.'
      )
    if 'nll' in self.metrics and self.objective not in DISCRETE_OBJECTIVES:
      raise ValueError(
        "config.eval.metrics contains 'nll', which needs a discrete-time objective "
        f'({DISCRETE_OBJECTIVES}: the L_vlb bound in bits/dim); config.diffusion.objective is '
        f"{self.objective!r}. Remove 'nll' from config.eval.metrics or train a DDPM/iDDPM model."
      )
    if 'nll' in self.metrics and self.nll_num_examples < 1:
      raise ValueError(f'config.eval.nll_num_examples={self.nll_num_examples} must be >= 1.')


def class_balanced_labels(start: int, count: int, num_classes: int) -> np.ndarray:
  """Labels start..start+count-1 cycling over the classes (-1 for unconditional models)."""
  if num_classes <= 0:
    return np.full((count,), -1, np.int32)
  return ((start + np.arange(count)) % num_classes).astype(np.int32)


def _takes_labels(sample_fn: SampleFn) -> bool:
  # Two calling conventions: sample_fn(num_samples, rng) -> (images, labels), or the trainer's
  # sample_fn(labels, rng) -> images (the evaluator then picks class-balanced labels).
  flag = getattr(sample_fn, 'takes_labels', None)
  if flag is not None:
    return bool(flag)
  try:
    params = list(inspect.signature(sample_fn).parameters)
  except (TypeError, ValueError):
    return False
  return bool(params) and params[0] == 'labels'


def _as_float_images(images: Any, count: int, settings: EvalSettings) -> np.ndarray:
  images = np.asarray(jax.device_get(images))
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  images = np.clip(images.astype(np.float32), -1.0, 1.0)
  want = (count, settings.image_size, settings.image_size, settings.num_channels)
  if images.shape != want:
    raise ValueError(
      f'sample_fn returned images of shape {images.shape}; expected {want} '
      '(config.data.image_size / num_channels).'
    )
  return images


def sample_batches(
  sample_fn: SampleFn, settings: EvalSettings
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (images [b, H, W, C] float in [-1, 1], labels [b]) until num_samples are drawn."""
  key = jax.random.key(settings.seed)
  takes_labels = _takes_labels(sample_fn)
  for i, start in enumerate(range(0, settings.num_samples, settings.batch_size)):
    n = min(settings.batch_size, settings.num_samples - start)
    rng = jax.random.fold_in(key, i)
    if takes_labels:
      labels = class_balanced_labels(start, n, settings.num_classes)
      images = sample_fn(labels, rng)
    else:
      out = sample_fn(n, rng)
      images, labels = out if isinstance(out, tuple) else (out, np.full((n,), -1, np.int32))
    yield _as_float_images(images, n, settings), np.asarray(labels, np.int32).reshape(-1)


def sampler_nfe(config: Any) -> int | None:
  """Network evaluations per sample of the configured sampler (None when unknown)."""
  try:
    from diffusion_jax.objectives import sampling as objective_sampling

    d = config.diffusion
    return objective_sampling.nfe(
      config.sample,
      str(d.objective),
      int(d.get('num_timesteps', 1000)),
      int(d.get('num_levels', 1)),
    )
  except (ImportError, ValueError, AttributeError, KeyError):
    return None


def protocol(config: Any, settings: EvalSettings) -> dict[str, Any]:
  """What the numbers depend on: samples, labels, sampler, NFE, reference set, seed."""
  nfe = sampler_nfe(config)
  sample_metrics = [m for m in settings.metrics if m in SAMPLE_METRICS]
  ref = []
  if 'digits' in settings.metrics:
    ref.append('digits train split (classifier features); real test split as baseline')
  if 'fid' in settings.metrics:
    ref.append(f'FID reference statistics {settings.reference_stats}')
  out = {
    'metrics': list(settings.metrics),
    'num_samples': settings.num_samples if sample_metrics else 0,
    'labels': ('class-balanced' if settings.num_classes > 0 else 'unconditional'),
    'sampler': settings.sampler,
    'num_steps': settings.num_steps,
    'nfe': nfe,
    'guidance': settings.guidance,
    'objective': settings.objective,
    'dataset': f'{settings.dataset} {settings.image_size}x{settings.image_size}x'
    f'{settings.num_channels}',
    'reference': '; '.join(ref) or None,
    'inception_weights': (
      settings.inception_weights if any(m in INCEPTION_METRICS for m in settings.metrics) else None
    ),
    'seed': settings.seed,
  }
  if 'nll' in settings.metrics:
    out['nll_data'] = (
      f'{settings.dataset} {settings.nll_split} split, up to {settings.nll_num_examples} examples'
    )
  return out


def _format_protocol(p: dict[str, Any]) -> str:
  guidance = f', guidance w={p["guidance"]:g}' if p['guidance'] else ''
  nfe = p['nfe'] if p['nfe'] is not None else 'unknown'
  lines = [f'Evaluation protocol: metrics {", ".join(p["metrics"])}; seed {p["seed"]}.']
  if p['num_samples']:
    lines.append(
      f'  samples: {p["num_samples"]} ({p["labels"]}) from the {p["dataset"]} model '
      f'({p["objective"]}), sampler {p["sampler"]!r}, {p["num_steps"]} steps, NFE {nfe}'
      f'{guidance}.'
    )
  if p['reference']:
    lines.append(f'  reference: {p["reference"]}.')
  if p.get('nll_data'):
    lines.append(f'  NLL data: {p["nll_data"]}.')
  return '\n'.join(lines)


def _nll_batches(config: Any, settings: EvalSettings) -> Iterator[dict[str, np.ndarray]]:
  """Real batches of the NLL split, on the 256-level grid."""
  if settings.dataset == 'digits':
    from diffusion_jax.input_pipeline import load_digits_split

    images, labels = load_digits_split(settings.nll_split, settings.image_size)
    images, labels = images[: settings.nll_num_examples], labels[: settings.nll_num_examples]
    if settings.num_channels == 3:
      images = np.repeat(images, 3, axis=-1)
    for start in range(0, images.shape[0], settings.batch_size):
      yield {
        'image': images[start : start + settings.batch_size],
        'label': labels[start : start + settings.batch_size],
      }
    return
  from diffusion_jax import input_pipeline

  data_cfg = dict(config.data)
  data_cfg['train_split'] = settings.nll_split
  data_cfg['random_flip'] = False
  data_cfg['augment_prob'] = 0.0
  batch = min(settings.batch_size, settings.nll_num_examples)
  it = input_pipeline.create_input_iter(data_cfg, batch, seed=settings.seed)
  for seen in range(0, settings.nll_num_examples, batch):
    b = next(it)
    n = min(batch, settings.nll_num_examples - seen)
    yield {'image': np.asarray(b['image'])[:n], 'label': np.asarray(b['label'])[:n]}


def nll_fn_from_checkpoint(config: Any, workdir: str) -> NllFn:
  """(images, labels, rng) -> bits/dim [B] of the run's latest EMA parameters (discrete time)."""
  from diffusion_jax import checkpointing, config_validation, sampling
  from diffusion_jax import sharding as sharding_lib

  model, objective = config_validation.build_model_and_objective(config)
  if not hasattr(objective, 'nll_bits_per_dim'):
    raise ValueError(
      "config.eval.metrics contains 'nll', which needs a discrete-time "
      f'objective {DISCRETE_OBJECTIVES}; config.diffusion.objective is '
      f'{config.diffusion.objective!r}.'
    )
  mesh = sharding_lib.create_mesh(int(config.training.get('mesh_fsdp', 1)))
  step = checkpointing.latest_step(workdir)
  if step is None:
    raise FileNotFoundError(
      f'No checkpoint in {checkpointing.checkpoint_dir(workdir)}: the '
      "'nll' metric evaluates a trained model; train first."
    )
  params = checkpointing.restore_ema_params(
    workdir, sampling.abstract_params(model, config, mesh), step
  )
  return make_nll_fn(config, model, objective, params)


def make_nll_fn(config: Any, model: Any, objective: Any, params: Any) -> NllFn:
  """(images, labels, rng) -> bits/dim [B] from a model, its objective and parameters."""
  if not hasattr(objective, 'nll_bits_per_dim'):
    raise ValueError(
      "config.eval.metrics contains 'nll', which needs a discrete-time "
      f'objective {DISCRETE_OBJECTIVES}; config.diffusion.objective is '
      f'{config.diffusion.objective!r}.'
    )
  conditional = int(config.data.num_classes) > 0

  @jax.jit
  def bpd(params, images, labels, rng):
    label = labels if conditional else None
    return objective.nll_bits_per_dim(model.apply, params, images, rng, label=label)

  def fn(images, labels, rng):
    return np.asarray(bpd(params, images, labels, rng))

  return fn


def compute_nll(nll_fn: NllFn, batches, seed: int) -> dict[str, float]:
  """Mean bits/dim (and its standard error) of nll_fn over real batches."""
  key = jax.random.key(seed + 1)
  values = []
  for i, batch in enumerate(batches):
    # The bound is defined for data on the 256-level grid.
    images = inception.quantize_images(batch['image'])
    values.append(
      np.asarray(
        nll_fn(images, np.asarray(batch['label'], np.int32), jax.random.fold_in(key, i)), np.float64
      ).reshape(-1)
    )
  values = np.concatenate(values)
  return {
    'nll_bpd': float(values.mean()),
    'nll_bpd_stderr': float(values.std(ddof=1) / math.sqrt(len(values)))
    if len(values) > 1
    else float('nan'),
    'nll_num_examples': float(len(values)),
  }


def _reference_pr_features(path: str, extractor) -> np.ndarray:
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(
      f"config.eval.metrics contains 'pr', which needs reference images: "
      f'config.eval.reference_stats={path!r} is not a file (an .npz with '
      "uint8 images under 'arr_0', like the ADM suite's reference batches)."
    )
  with np.load(path) as data:
    if 'arr_0' not in data.files:
      raise ValueError(
        f"config.eval.metrics contains 'pr', which needs reference images under "
        f"'arr_0' of config.eval.reference_stats={path!r} (as in the ADM "
        f'suite reference batches); that file has only {data.files}.'
      )
    images = data['arr_0'][:PR_MAX_SAMPLES]
  feats = [
    extractor(b.astype(np.float32) / np.float32(127.5) - 1.0)['pool']
    for b in np.array_split(images, max(1, len(images) // 1000))
  ]
  return np.concatenate(feats)


def _save_samples_npz(eval_dir: str, saved: list[tuple[np.ndarray, np.ndarray]]) -> str:
  # The ADM suite's sample-batch format: uint8 images under arr_0, labels under arr_1.
  images = np.concatenate([s[0] for s in saved])
  labels = np.concatenate([s[1] for s in saved])
  os.makedirs(eval_dir, exist_ok=True)
  path = os.path.join(eval_dir, f'samples_{"x".join(str(d) for d in images.shape)}.npz')
  np.savez(path, arr_0=images, arr_1=labels)
  print(f'Saved the evaluated samples to {path}.', flush=True)
  return path


def evaluate(
  config: Any,
  workdir: str,
  sample_fn: SampleFn | None,
  *,
  nll_fn: NllFn | None = None,
  nll_batches=None,
) -> dict[str, float]:
  """Computes config.eval.metrics, writes workdir/eval/metrics.json, returns the numbers.

  Args:
    config: the run's ConfigDict (reads config.eval, config.sample, config.data,
      config.diffusion.objective, config.seed).
    workdir: the run directory; results go to workdir/eval/.
    sample_fn: draws samples, either `sample_fn(num_samples, rng) -> (images [N, H, W, C] in
      [-1, 1], labels [N])` or — when its first parameter is named `labels` (or it has
      `takes_labels = True`) — `sample_fn(labels [N], rng) -> images` (float in [-1, 1] or
      uint8), the evaluator choosing class-balanced labels. May be None when only 'nll' is
      requested.
    nll_fn: for 'nll': `(images, labels, rng) -> bits/dim [B]`; default: the discrete-time
      objective's L_vlb bound with the EMA parameters of the latest checkpoint in workdir.
    nll_batches: for 'nll': iterable of {'image', 'label'} real batches; default: the
      config.eval.nll_split split ('test') of config.data.

  Returns:
    {metric name: float}, e.g. {'fid': ..., 'inception_score': ..., 'digits_accuracy': ...}.
  """
  settings = EvalSettings.from_config(config)
  eval_dir = os.path.join(workdir, 'eval')
  wanted = settings.metrics
  # Check every prerequisite before sampling.
  extractor = ref_stats = digits = real_pr_feats = None
  if any(m in INCEPTION_METRICS for m in wanted):
    extractor = inception.InceptionFeatureExtractor(
      inception.load_inception_variables(settings.inception_weights),
      batch_size=settings.inception_batch_size,
    )
  if 'fid' in wanted:
    ref_stats = reference_lib.load_reference_stats(settings.reference_stats)
  if 'pr' in wanted:
    real_pr_feats = _reference_pr_features(settings.reference_stats, extractor)
  if any(m in SAMPLE_METRICS for m in wanted) and sample_fn is None:
    raise ValueError(f'sample_fn is None but config.eval.metrics={wanted} needs samples.')
  if 'nll' in wanted and nll_fn is None:
    nll_fn = nll_fn_from_checkpoint(config, workdir)
  if 'digits' in wanted:
    from diffusion_jax.evaluation import digits_metric

    digits = digits_metric.DigitsMetric(settings.image_size, cache_dir=eval_dir)

  proto = protocol(config, settings)
  print(_format_protocol(proto), flush=True)
  logging.info('%s', _format_protocol(proto))
  results: dict[str, float] = {}
  t0 = time.time()

  if any(m in SAMPLE_METRICS for m in wanted):
    pool_stats = None
    logits, pr_feats, digit_images, digit_labels, saved = [], [], [], [], []
    for images, labels in sample_batches(sample_fn, settings):
      if settings.save_samples:
        saved.append((np.round((images + 1.0) * 127.5).astype(np.uint8), labels))
      if digits is not None:
        digit_images.append(images)
        digit_labels.append(labels)
      if extractor is not None:
        out = extractor(images)
        if pool_stats is None:
          pool_stats = frechet.RunningStatistics(out['pool'].shape[1])
        pool_stats.update(out['pool'])
        logits.append(out['logits'])
        if 'pr' in wanted and sum(len(f) for f in pr_feats) < PR_MAX_SAMPLES:
          pr_feats.append(out['pool'])
    results['sampling_and_features_seconds'] = time.time() - t0
    if saved and jax.process_index() == 0:
      _save_samples_npz(eval_dir, saved)
    if digits is not None:
      results.update(digits.report(np.concatenate(digit_images), np.concatenate(digit_labels)))
    if 'fid' in wanted:
      results['fid'] = frechet.frechet_distance(*pool_stats.statistics(), *ref_stats)
    if 'is' in wanted:
      mean, std = inception_score.inception_score(np.concatenate(logits), settings.is_splits)
      results['inception_score'], results['inception_score_std'] = mean, std
    if 'pr' in wanted:
      fake = np.concatenate(pr_feats)[:PR_MAX_SAMPLES]
      results.update(precision_recall.precision_recall(real_pr_feats, fake))

  if 'nll' in wanted:
    t1 = time.time()
    batches = nll_batches if nll_batches is not None else _nll_batches(config, settings)
    results.update(compute_nll(nll_fn, batches, settings.seed))
    results['nll_seconds'] = time.time() - t1

  if jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    path = os.path.join(eval_dir, 'metrics.json')
    with open(path + '.tmp', 'w') as f:
      json.dump({'protocol': proto, 'metrics': results}, f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)
    summary = ', '.join(f'{k} {v:.4g}' for k, v in results.items() if not k.endswith('seconds'))
    print(f'Evaluation results ({path}): {summary}', flush=True)
  return results
