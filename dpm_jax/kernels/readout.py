"""The per-t readout of the Table 1 models, h @ kernel[t] + bias[t], and how it runs.

What it computes is the gather (one kernel per example); how it runs depends
on the draw of t. A stratified draw (diffusion.stratified_t) with T-1
dividing the batch is read out block by block: one batched matmul per t,
several times faster on the CPU than a kernel gathered per example and its
scatter-add backward. Any other t takes the gather. The model
(dpm_jax.heartbeat.PerStepDense) calls `per_step_readout` and knows nothing of this.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dpm_jax import diffusion


def _gathered(h, t, kernel, bias):
  return jnp.einsum("bk,bko->bo", h, kernel[t]) + bias[t]


def _blocked(h, t, kernel, bias):
  """The readout of t = stratified_t(offset, T, B), offset = t[0] - 1: block j of
  the batch has t = 1 + (j + offset) mod (T-1); rolled by offset, block j has t = j + 1."""
  n = kernel.shape[0] - 1
  offset = t[0] - 1
  blocks = jnp.roll(h.reshape(n, -1, h.shape[-1]), offset, axis=0)
  out = jnp.einsum("tjk,tko->tjo", blocks, kernel[1:]) + bias[1:, None]
  return jnp.roll(out, -offset, axis=0).reshape(h.shape[0], -1)


def _blocked_vjp(h, t, kernel, g):
  """(dh, dkernel, dbias) of _blocked; the kernel's as a sum of B/(T-1) outer
  products per t, several times faster on the CPU than XLA's batched dot."""
  n, features = kernel.shape[0] - 1, h.shape[-1]
  offset = t[0] - 1
  blocks = jnp.roll(h.reshape(n, -1, features), offset, axis=0)
  g = jnp.roll(g.reshape(n, blocks.shape[1], -1), offset, axis=0)
  dkernel = jnp.sum(blocks[:, :, :, None] * g[:, :, None, :], axis=1)
  dh = jnp.einsum("tjo,tko->tjk", g, kernel[1:])
  zero = jnp.zeros((1,) + kernel.shape[1:], kernel.dtype)
  return (jnp.roll(dh, -offset, axis=0).reshape(h.shape),
          jnp.concatenate([zero, dkernel]), jnp.concatenate([zero[:, 0], jnp.sum(g, axis=1)]))


def _is_blocked(t, trajectory_length: int):
  """Whether t (B,) is a stratified draw that _blocked reads out: T-1 divides B."""
  if t.shape[0] == 0 or t.shape[0] % (trajectory_length - 1):
    return False
  return jnp.all(t == diffusion.stratified_t(t[0] - 1, trajectory_length, t.shape[0]))


def _choose(t, trajectory_length, blocked, gathered):
  flag = _is_blocked(t, trajectory_length)
  if flag is False:
    return gathered()
  return jax.lax.cond(flag, blocked, gathered)


@jax.custom_vjp
def per_step_readout(h, t, kernel, bias):
  """h (B, K) @ kernel[t] (B, K, O) + bias[t], kernel (T, K, O), t (B,) integer.

  A stratified draw of t (diffusion.stratified_t) with T-1 dividing the batch
  is read out block by block, several times faster than a kernel gathered
  per example and its scatter-add backward; any other t takes the gather.
  Both give the same values. (A custom VJP, so that the backward pass runs
  only the chosen branch; forward-mode differentiation, jvp, is not defined.)
  """
  return _choose(t, kernel.shape[0], lambda: _blocked(h, t, kernel, bias),
                 lambda: _gathered(h, t, kernel, bias))


def _readout_fwd(h, t, kernel, bias):
  return per_step_readout(h, t, kernel, bias), (h, t, kernel, bias)


def _readout_bwd(res, g):
  h, t, kernel, bias = res
  vjp = lambda fn: lambda: jax.vjp(lambda h, k, b: fn(h, t, k, b), h, kernel, bias)[1](g)
  dh, dkernel, dbias = _choose(t, kernel.shape[0], lambda: _blocked_vjp(h, t, kernel, g),
                               vjp(_gathered))
  return dh, None, dkernel, dbias


per_step_readout.defvjp(_readout_fwd, _readout_bwd)
