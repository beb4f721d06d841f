"""Denoiser adapters: stateless/stateful forms and classifier-free guidance.

Samplers accept a denoiser in EDM form, in data space (x = x0 + sigma * n):
- stateless: `denoise_fn(x, sigma) -> x0_hat` (pass `init_state=None`), or
- stateful: `denoise_fn(x, sigma, state) -> (x0_hat, new_state)` with an
  `init_state` pytree, the state being carried from one call to the next
  (self-conditioning: RIN's latents, a U-Net's previous prediction).

`sigma` is passed as a scalar array (one noise level for the whole batch);
denoisers broadcast it themselves. iDDPM's learned-variance denoisers return
`(x0_hat, v)` in place of `x0_hat`, with v in [-1, 1].
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StatefulDenoiser = Callable[[jax.Array, jax.Array, Any], tuple[Any, Any]]


def as_stateful(
  denoise_fn: Callable[..., Any], init_state: Any = None
) -> tuple[StatefulDenoiser, Any]:
  """Puts a denoiser into the stateful form every sampler loop runs on.

  Args:
    denoise_fn: `(x, sigma) -> out` when `init_state` is None, else
      `(x, sigma, state) -> (out, new_state)`.
    init_state: the starting state of a stateful denoiser, or None.

  Returns:
    `(fn, state)` where `fn(x, sigma, state) -> (out, new_state)`; a stateless
    denoiser gets the empty state `()`.
  """
  if not callable(denoise_fn):
    raise ValueError(f'denoise_fn must be callable; got {type(denoise_fn).__name__}.')
  if init_state is None:

    def fn(x, sigma, state):
      return denoise_fn(x, sigma), state

    return fn, ()
  return denoise_fn, init_state


def x0_of(out: Any) -> jax.Array:
  """The x0 estimate of a denoiser output (`x0` or `(x0, v)`)."""
  return out[0] if isinstance(out, tuple) else out


def _guide(cond: Any, uncond: Any, weight: jax.Array) -> Any:
  """(1 + w) D(x | c) - w D(x); extra outputs (iDDPM's v) come from the conditional pass."""
  x0_c, x0_u = x0_of(cond), x0_of(uncond)
  guided = x0_c + weight * (x0_c - x0_u)
  return (guided, *cond[1:]) if isinstance(cond, tuple) else guided


def _split2(tree: Any) -> tuple[Any, Any]:
  first = jax.tree.map(lambda a: a[: a.shape[0] // 2], tree)
  second = jax.tree.map(lambda a: a[a.shape[0] // 2 :], tree)
  return first, second


def _concat2(a: Any, b: Any) -> Any:
  return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def classifier_free_guidance(
  denoise_fn: Callable[..., Any],
  label: jax.typing.ArrayLike | None,
  weight: jax.typing.ArrayLike = 0.0,
  *,
  init_state: Any = None,
  null_label: int = -1,
  batched: bool = True,
) -> tuple[Callable[..., Any], Any]:
  """Turns a label-conditional denoiser into a guided one.

  D_w(x; sigma) = (1 + w) D(x; sigma, c) - w D(x; sigma, null). Because
  x0 = x - sigma * eps is affine in the prediction, guiding x0 equals guiding
  eps with the same weight. w = 0 is the plain conditional denoiser (one pass).

  Source: Ho & Salimans 2021 (classifier-free guidance), eq. 6; Chen 2023
  section 4 (guidance weight 3 for the 512+ samples).

  Args:
    denoise_fn: `(x, sigma, label) -> out` when `init_state` is None, else
      `(x, sigma, label, state) -> (out, new_state)`. `label` is int32 [B],
      -1 = no label (the null label).
    label: int32 [B] class labels, x's leading axis being B.
    weight: guidance weight w >= 0 (a Python number or a traced scalar).
    init_state: starting state of a stateful (self-conditioning) denoiser, or None.
    null_label: the label meaning "unconditional".
    batched: run the conditional and unconditional passes as one call on a
      doubled batch (faster on accelerators) instead of two calls.

  Returns:
    `(guided_fn, guided_init_state)`, ready for any sampler: `guided_fn(x, sigma)`
    when `init_state` is None, else `guided_fn(x, sigma, state)` with the state
    `(state_cond, state_uncond)` (each pass keeps its own self-conditioning).

  Raises:
    ValueError: guidance weight given without labels, or a negative weight.
  """
  w_static = None
  if not isinstance(weight, jax.core.Tracer):
    w_static = float(weight)
    if w_static < 0:
      raise ValueError(f'weight (the guidance weight w) must be >= 0; got {w_static}.')
  if label is None:
    if w_static == 0.0:
      raise ValueError(
        'label is None: a label-conditional denoiser needs labels; pass label=-1 for every '
        'example to sample unconditionally.'
      )
    raise ValueError(
      f'classifier-free guidance (weight={weight!r}) needs class labels: pass label '
      '(int32 [B], -1 = null) or set weight=0.'
    )
  label = jnp.asarray(label, jnp.int32)
  stateful = init_state is not None

  def call(x, sigma, lab, state):
    if stateful:
      return denoise_fn(x, sigma, lab, state)
    return denoise_fn(x, sigma, lab), state

  if w_static == 0.0:
    if stateful:
      return (lambda x, sigma, state: call(x, sigma, label, state)), init_state
    return (lambda x, sigma: denoise_fn(x, sigma, label)), None

  null = jnp.full_like(label, null_label)
  w = jnp.asarray(weight, jnp.float32)

  def guided(x, sigma, state):
    state_c, state_u = state
    if batched:
      both, new_state = call(
        _concat2(x, x), sigma, jnp.concatenate([label, null]), _concat2(state_c, state_u)
      )
      cond, uncond = _split2(both)
      new_c, new_u = _split2(new_state)
    else:
      cond, new_c = call(x, sigma, label, state_c)
      uncond, new_u = call(x, sigma, null, state_u)
    return _guide(cond, uncond, w), (new_c, new_u)

  if stateful:
    return guided, (init_state, init_state)
  return (lambda x, sigma: guided(x, sigma, ((), ()))[0]), None
