"""Writes tests/fixtures/parity.npz: the seed's PyTorch model, step by step.

The fixture pins the JAX model (dpm_jax) to the seed notebook's PyTorch model
as made runnable in benchmarks/seed_torch.py. For a few small configurations
it holds the weights (converted to the JAX parameter tree layout), the inputs
and fixed random draws, and every intermediate value of one training-cost
evaluation; tests/test_parity.py recomputes them with dpm_jax. The tests read
the fixture with numpy only and never import torch.

How to run (torch is not a dependency of the project; use a separate venv):

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch==2.13.0 numpy
    /tmp/venv-torch/bin/python tools/make_parity_fixture.py [--out tests/fixtures/parity.npz]

The output is deterministic: torch is seeded per case, runs in float32 on one
CPU thread with deterministic algorithms, and the archive is written with
fixed entry order and timestamps.

Layout of the archive (flat keys; images NHWC, the JAX layout):

  schedule/T1000/...          full-size (T = 1000, J = 10) schedule values:
                              temporal_basis (J, T), beta_arr_logit,
                              beta_arr_log, beta_arr_seed_min_beta (the seed's
                              scalar minimum beta, which ignores step1_beta),
                              alpha_cum_logit (T,).
  cases                       the case names, e.g. ['a', 'b', 'c'].
  <case>/config/<field>       dpm_jax model-config overrides (ints, floats,
                              strings, bools).
  <case>/params/<path>        weights under the JAX parameter tree
                              (`params/network/mlp_conv/layer0/kernel_scale0`,
                              ...): conv weights (O, I, kh, kw) -> HWIO,
                              Linear weights (out, in) -> (in, out), and the
                              dense lower pathway's first-layer rows permuted
                              from NCHW (C, H, W) flattening to NHWC (H, W, C).
  <case>/inputs/...           x0, noise, uniform (NHWC), t, t_frac,
                              uniform_noise; t_replay, noise_replay,
                              uniform_replay: the draws the seed's
                              cost_single_t makes from a fixed torch seed.
  <case>/outputs/...          temporal_basis, beta_arr, t_weights (at t),
                              t_weights_frac (at t_frac), beta_t, alpha_cum_t,
                              Z (network output), mu_coeff, beta_coeff, x_t,
                              mu_posterior, sigma_posterior, mu, sigma (reverse
                              kernel at x_t), kl, bound_T (bits per pixel,
                              KL multiplied by T as the seed), cost_T
                              (cost_single_t at the replayed draws).

The weights are re-drawn after the model is built (conv and Linear weights
~ N(0, 1 / fan_in), biases ~ N(0, 0.1^2)), so that every bias is nonzero and
every pathway contributes at order one; the seed's own initialisation makes
the convolutions' contribution tiny and the biases zero.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import zipfile

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import seed_torch  # noqa: E402  (benchmarks/seed_torch.py)

# Each case: seed-model constructor arguments, batch size, time steps, noise.
CASES = {
    "a": dict(
        model=dict(spatial_width=8, n_colors=1, trajectory_length=1000, n_temporal_basis=10,
                   n_hidden_dense_lower=16, n_hidden_dense_lower_output=2,
                   n_hidden_dense_upper=12, n_hidden_conv=4, n_layers_conv=2,
                   n_layers_dense_lower=3, n_layers_dense_upper=2, n_scales=2,
                   step1_beta=0.001, link="logit"),
        batch=3, t=537.0, t_frac=537.25, uniform_noise=0.05, seed=1),
    "b": dict(
        model=dict(spatial_width=8, n_colors=3, trajectory_length=1000, n_temporal_basis=10,
                   n_hidden_dense_lower=24, n_hidden_dense_lower_output=3,
                   n_hidden_dense_upper=16, n_hidden_conv=5, n_layers_conv=2,
                   n_layers_dense_lower=2, n_layers_dense_upper=3, n_scales=2,
                   step1_beta=0.001, link="logit"),
        batch=4, t=537.0, t_frac=12.5, uniform_noise=0.1, seed=2),
    # The seed's 'log' link, no dense lower pathway, three scales.
    "c": dict(
        model=dict(spatial_width=4, n_colors=2, trajectory_length=1000, n_temporal_basis=10,
                   n_hidden_dense_lower=0, n_hidden_dense_lower_output=2,
                   n_hidden_dense_upper=8, n_hidden_conv=3, n_layers_conv=1,
                   n_layers_dense_lower=2, n_layers_dense_upper=2, n_scales=3,
                   step1_beta=0.001, link="log"),
        batch=3, t=998.0, t_frac=998.5, uniform_noise=0.05, seed=3),
}

# Seed-model arguments that are dpm_jax model-config fields of the same name.
CONFIG_FIELDS = ("spatial_width", "n_colors", "trajectory_length", "n_temporal_basis",
                 "n_hidden_dense_lower", "n_hidden_dense_lower_output",
                 "n_hidden_dense_upper", "n_hidden_conv", "n_layers_conv",
                 "n_layers_dense_lower", "n_layers_dense_upper", "n_scales", "step1_beta")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(_np(x).transpose(0, 2, 3, 1))


def _redraw_parameters(model: seed_torch.DiffusionModel) -> None:
    """N(0, 1/fan_in) weights and N(0, 0.01) biases, in named_parameters order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape) / math.sqrt(fan_in))


def jax_params(model: seed_torch.DiffusionModel) -> dict:
    """The seed model's weights under the dpm_jax parameter tree's flat keys."""
    out = {}
    net = model.mlp
    for i, layer in enumerate(net.mlp_conv.layers):
        for scale, block in enumerate(layer.conv_layers):
            conv = block[0]
            prefix = f"params/network/mlp_conv/layer{i}"
            # (O, I, kh, kw) -> (kh, kw, I, O). Both frameworks cross-correlate.
            out[f"{prefix}/kernel_scale{scale}"] = _np(conv.weight).transpose(2, 3, 1, 0)
            out[f"{prefix}/bias_scale{scale}"] = _np(conv.bias)

    def linears(seq):
        return [m for m in seq if isinstance(m, torch.nn.Linear)]

    if net.mlp_dense_lower is not None:
        c, w = model.n_colors, model.spatial_width
        for j, lin in enumerate(linears(net.mlp_dense_lower)):
            kernel = _np(lin.weight).T  # (in, out)
            if j == 0:
                # Rows in torch's NCHW flattening (c, h, w) -> NHWC flattening (h, w, c).
                kernel = kernel.reshape(c, w, w, -1).transpose(1, 2, 0, 3).reshape(c * w * w, -1)
            out[f"params/network/mlp_dense_lower/dense{j}/kernel"] = np.ascontiguousarray(kernel)
            out[f"params/network/mlp_dense_lower/dense{j}/bias"] = _np(lin.bias)
    for j, lin in enumerate(linears(net.mlp_dense_upper)):
        out[f"params/network/mlp_dense_upper/dense{j}/kernel"] = np.ascontiguousarray(_np(lin.weight).T)
        out[f"params/network/mlp_dense_upper/dense{j}/bias"] = _np(lin.bias)
    return out


def run_case(name: str, spec: dict) -> dict:
    torch.manual_seed(spec["seed"])
    margs = dict(spec["model"])
    model = seed_torch.DiffusionModel(uniform_noise=spec["uniform_noise"], **margs)
    _redraw_parameters(model)
    model.eval()

    b, c, w = spec["batch"], margs["n_colors"], margs["spatial_width"]
    x0 = torch.randn(b, c, w, w)
    noise = torch.randn(b, c, w, w)
    uniform = torch.rand(b, c, w, w)
    t = torch.tensor([spec["t"]], dtype=torch.float32)
    t_frac = torch.tensor([spec["t_frac"]], dtype=torch.float32)

    with torch.no_grad():
        t_weights = model.get_t_weights(t)[:, 0]
        t_weights_frac = model.get_t_weights(t_frac)[:, 0]
        beta_t = model.get_beta_forward(t)
        alpha_cum_t = t_weights @ torch.cumprod(1. - model.beta_arr[:, 0], dim=0)
        x_t, t_out, mu_q, sigma_q = model.generate_forward_diffusion_sample(x0, t=t, N=noise, U=uniform)
        assert t_out is t
        z = model.mlp(x_t)
        mu_coeff, beta_coeff = model.temporal_readout(z, t)
        mu, sigma = model.get_mu_sigma(x_t, t)
        kl = (torch.log(sigma) - torch.log(sigma_q)
              + (sigma_q ** 2 + (mu_q - mu) ** 2) / (2 * sigma ** 2) - 0.5)
        bound_t = model.get_negL_bound(mu, sigma, mu_q, sigma_q)

        # The same number through the seed's own cost_single_t, with the draws
        # replayed: t, then N, then U, as generate_forward_diffusion_sample
        # draws them.
        state = torch.get_rng_state()
        torch.manual_seed(1000 + spec["seed"])
        t_draw = torch.floor(torch.rand(1) * (model.trajectory_length - 1) + 1)
        shape = (b, c, w, w)
        n_draw = torch.normal(mean=torch.zeros(shape), std=torch.ones(shape))
        u_draw = torch.rand_like(x0)
        torch.manual_seed(1000 + spec["seed"])
        cost_t = model.cost_single_t(x0)
        x_t2, _, mu_q2, sigma_q2 = model.generate_forward_diffusion_sample(
            x0, t=t_draw, N=n_draw, U=u_draw)
        mu2, sigma2 = model.get_mu_sigma(x_t2, t_draw)
        cost_check = model.get_negL_bound(mu2, sigma2, mu_q2, sigma_q2)
        assert torch.equal(cost_t, cost_check), (cost_t, cost_check)
        torch.set_rng_state(state)

    # The seed's cost runs forward and backward.
    loss = model.cost(x0)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    out = {}
    cfg = {k: margs[k] for k in CONFIG_FIELDS}
    cfg.update(beta_link=margs["link"], kl_multiplier="T", reference_dense_lower=False,
               filter_size=3, learn_beta=False, n_t_per_minibatch=1)
    for k, v in cfg.items():
        out[f"{name}/config/{k}"] = np.asarray(v)
    for k, v in jax_params(model).items():
        out[f"{name}/{k}"] = v
    inputs = dict(x0=_nhwc(x0), noise=_nhwc(noise), uniform=_nhwc(uniform),
                  t=np.float32(spec["t"]), t_frac=np.float32(spec["t_frac"]),
                  uniform_noise=np.float32(spec["uniform_noise"]),
                  t_replay=_np(t_draw)[0], noise_replay=_nhwc(n_draw),
                  uniform_replay=_nhwc(u_draw))
    for k, v in inputs.items():
        out[f"{name}/inputs/{k}"] = np.asarray(v)
    outputs = dict(
        temporal_basis=_np(model.temporal_basis), beta_arr=_np(model.beta_arr[:, 0]),
        t_weights=_np(t_weights), t_weights_frac=_np(t_weights_frac),
        beta_t=_np(beta_t).reshape(()), alpha_cum_t=_np(alpha_cum_t).reshape(()),
        Z=_np(z), mu_coeff=_nhwc(mu_coeff), beta_coeff=_nhwc(beta_coeff),
        x_t=_nhwc(x_t), mu_posterior=_nhwc(mu_q), sigma_posterior=_np(sigma_q).reshape(()),
        mu=_nhwc(mu), sigma=_nhwc(sigma), kl=_nhwc(kl), bound_T=_np(bound_t).reshape(()),
        cost_T=_np(cost_t).reshape(()))
    for k, v in outputs.items():
        out[f"{name}/outputs/{k}"] = np.asarray(v)
    return out


def full_schedule() -> dict:
    """T = 1000, J = 10 schedules: reference (logit), seed typo (log), and the
    seed's scalar minimum beta."""
    kw = dict(spatial_width=4, n_colors=1, n_hidden_dense_lower=0, n_hidden_conv=1,
              n_layers_conv=1, n_hidden_dense_upper=1)
    ref = seed_torch.DiffusionModel(**kw)
    log = seed_torch.DiffusionModel(link="log", **kw)
    seed_min = seed_torch.DiffusionModel(seed_min_beta=True, **kw)
    beta = ref.beta_arr[:, 0]
    return {
        "schedule/T1000/temporal_basis": _np(ref.temporal_basis),
        "schedule/T1000/beta_arr_logit": _np(beta),
        "schedule/T1000/beta_arr_log": _np(log.beta_arr[:, 0]),
        "schedule/T1000/beta_arr_seed_min_beta": _np(seed_min.beta_arr[:, 0]),
        "schedule/T1000/alpha_cum_logit": _np(torch.cumprod(1. - beta, dim=0)),
    }


def write_npz(path: str, arrays: dict) -> None:
    """np.savez_compressed with fixed entry timestamps, so equal arrays give
    byte-identical files."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "parity.npz"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    arrays = {"cases": np.asarray(sorted(CASES))}
    arrays.update(full_schedule())
    for name in sorted(CASES):
        arrays.update(run_case(name, CASES[name]))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_npz(args.out, arrays)
    print(f"wrote {args.out}: {len(arrays)} arrays, {os.path.getsize(args.out)} bytes")
    for name in sorted(CASES):
        print(f"  case {name}: bound_T = {float(arrays[f'{name}/outputs/bound_T']):.6f} bits/pixel")


if __name__ == "__main__":
    main()
