"""The seed notebook's PyTorch diffusion model, made to run.

This module is the model code of the seed notebook (a PyTorch port of the
2015 reference code): LeakyRelu, MultiScaleConvolution, MultiLayerConvolution,
make_mlp, MLP_conv_dense, DiffusionModel, get_norms and logit. It keeps the
seed's structure and layout (NCHW images, the dense lower pathway with
n_layers_dense_lower layers and no final activation, PyTorch's default Linear
initialisation, the bound with the KL multiplied by T) and changes only what
is needed for a forward and backward pass to run, plus two switches that
select the seed's or the reference code's semantics. It depends on `torch`
and `numpy` only; the notebook's data loading, argument parsing, training
loop, `logit_np` and `create_log_dir` are not part of it.

Changes from the seed notebook:

1. MultiScaleConvolution.__init__: `torch.sqrt(1.0 / num_filters)` on a Python
   float raised a TypeError; it is `math.sqrt` now.
2. MultiScaleConvolution.isotropic_gaussian_init: the MultivariateNormal with
   covariance `eye(numel) * std^2` (O(numel^2) memory) is replaced by
   `torch.randn(shape) * std`, the same distribution.
3. DiffusionModel.get_t_weights: the maximum of the stacked (1 - |t - i|)
   and 0 was taken over dim=1 (the time axis), giving a (2, 1) tensor; it is
   taken over dim=0 (the stacking axis) now, giving the (T, 1) weights.
4. DiffusionModel.temporal_readout: `Z @ coeff_weights` keeps a trailing axis
   of size 1, so the mu / beta slices were 5-D and `.permute(0, 3, 1, 2)`
   failed; the trailing axis is dropped before the permutation. The outputs
   are (B, n_colors, H, W), as the seed intended.
5. DiffusionModel.get_negL_bound: `(python float).astype(torch.float32)` (a
   numpy call with a torch dtype) raised; the entropy constant is a Python
   float now.
6. DiffusionModel.cost: the seed's training loop calls `dpm.cost(inputs)`,
   which did not exist. `cost` is added: the mean over n_t_per_minibatch of
   cost_single_t, as the reference code (and as the seed's `forward`).
7. The beta link. The seed writes `log` where the reference code writes
   `logit`, in two places: the baseline offset of the forward schedule
   (generate_beta_arr) and the offset of the reverse beta (get_mu_sigma).
   DiffusionModel takes `link='logit'` (default, the reference code's
   semantics) or `link='log'` (the seed's typo, in both places). With 'logit'
   the schedule offset is computed in float64 numpy before the cast to
   float32, as the reference code.
8. step1_beta. The seed builds the per-step minimum `min_beta_values` (1e-6,
   plus step1_beta at t = 0) and then uses the scalar 1e-6 instead, so
   step1_beta has no effect (beta_0 ~= 0.0010 instead of the reference code's
   ~= 0.0020). DiffusionModel takes `seed_min_beta=False` (default: the
   per-step minimum, as the reference code); True restores the seed's scalar,
   which equals the reference schedule with step1_beta = 0.
9. generate_forward_diffusion_sample takes optional keyword arguments `t`
   (time step), `N` (standard normal noise, NCHW) and `U` (U(0, 1) draws for
   the dequantisation noise, NCHW) so that fixed draws can be injected; when
   one is not given it is drawn as the seed draws it.
10. Devices. The temporal basis and the beta schedule are registered as
   non-persistent buffers (the state_dict is unchanged), and the tensors
   created inside the forward pass (t, the time grid, the noise) are created
   on the input's device, so that `.to(device)` as in the seed's training
   loop moves the whole model. On CPU the random draws are the seed's.
11. MLP_conv_dense.forward: without the dense lower pathway the permuted
   convolution output is not contiguous and `.view` raised; it is
   `.reshape` now (the same values; with the pathway `torch.cat` made the
   tensor contiguous and nothing changes).
12. Comments and docstrings are in English and shortened.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LINKS = ("logit", "log")


def logit(u):
    """log(u / (1 - u)), the inverse of the logistic sigmoid."""
    return torch.log(u / (1. - u))


def get_norms(model):
    """Per-parameter L2 norm of the weights and of their gradients, divided by
    the number of elements (0 for a parameter without a gradient)."""
    norms = []
    grad_norms = []
    for param in model.parameters():
        norm = torch.sqrt(torch.sum(torch.square(param))) / torch.prod(
            torch.tensor(param.shape, dtype=torch.float32))
        norms.append(norm)
        if param.grad is not None:
            grad_norm = torch.sqrt(torch.sum(torch.square(param.grad))) / torch.prod(
                torch.tensor(param.shape, dtype=torch.float32))
            grad_norms.append(grad_norm)
        else:
            grad_norms.append(torch.tensor(0.0))
    return norms, grad_norms


class LeakyRelu(nn.Module):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope=0.05):
        super(LeakyRelu, self).__init__()
        self.negative_slope = negative_slope

    def forward(self, input):
        return F.leaky_relu(input, negative_slope=self.negative_slope)


# The same nonlinearity for the dense and the convolutional layers.
dense_nonlinearity = LeakyRelu(negative_slope=0.05)
conv_nonlinearity = LeakyRelu(negative_slope=0.05)


class MultiScaleConvolution(nn.Module):
    """A multi-scale convolution layer.

    For each scale, from the coarsest to the finest: mean-pool the input by
    2**scale, convolve ("full" convolution cropped back to the input size),
    apply the nonlinearity, add to the running sum and upsample the sum by 2
    (nearest neighbour) unless at the finest scale. Returns the sum divided by
    the number of scales.

    Args:
        num_channels: input channels.
        num_filters: output channels.
        spatial_width: image width (square images).
        num_scales: number of scales.
        filter_size: convolution filter size (square, odd).
        downsample_method: kept from the seed; mean pooling is used.
        name: layer name, for debugging.
    """

    def __init__(self, num_channels, num_filters, spatial_width, num_scales, filter_size,
                 downsample_method='meanout', name=""):
        super(MultiScaleConvolution, self).__init__()
        self.num_scales = num_scales
        self.filter_size = filter_size
        self.num_filters = num_filters
        self.spatial_width = spatial_width
        self.downsample_method = downsample_method
        self.name = name
        # Extra border produced by the "full" convolution.
        self.overshoot = (filter_size - 1) // 2

        # One convolution + nonlinearity block per scale.
        self.conv_layers = nn.ModuleList()
        for scale in range(num_scales):
            # padding = filter_size - 1 gives a "full" convolution.
            conv = nn.Conv2d(
                in_channels=num_channels,
                out_channels=num_filters,
                kernel_size=filter_size,
                padding=filter_size - 1
            )
            # Isotropic Gaussian weights (change 1: math.sqrt on a float).
            std = math.sqrt(1.0 / num_filters) / (filter_size ** 2)
            self.isotropic_gaussian_init(conv.weight, std=std)
            nn.init.constant_(conv.bias, 0)
            layer = nn.Sequential(conv, conv_nonlinearity)
            self.conv_layers.append(layer)

    def isotropic_gaussian_init(self, tensor, std=1.0):
        """Fills `tensor` with N(0, std^2) draws (change 2: an independent normal
        draw instead of a MultivariateNormal with an identity covariance)."""
        shape = tensor.shape
        w = torch.randn(tensor.numel()) * std
        tensor.data = w.view(shape)

    def downsample(self, imgs, scale):
        """Mean-pools (batch, channels, height, width) images by 2**scale."""
        if scale == 0:
            return imgs
        kernel_size = 2 ** scale
        return F.avg_pool2d(imgs, kernel_size=kernel_size, stride=kernel_size)

    def forward(self, X):
        """(batch, channels, W, W) -> (batch, num_filters, W, W)."""
        acc = None
        # From the coarsest scale to the finest.
        for scale in reversed(range(self.num_scales)):
            X_down = self.downsample(X, scale)
            out = self.conv_layers[scale](X_down)
            # Crop the border of the "full" convolution.
            if self.overshoot > 0:
                out = out[:, :, self.overshoot:-self.overshoot, self.overshoot:-self.overshoot]
            if acc is None:
                acc = out
            else:
                acc = acc + out
            if scale > 0:
                acc = F.interpolate(acc, scale_factor=2, mode='nearest')
        return acc / self.num_scales


class MultiLayerConvolution(nn.Module):
    """A stack of n_layers MultiScaleConvolution layers with n_hidden channels."""

    def __init__(self, n_layers, n_hidden, spatial_width, n_colors, n_scales, filter_size=3):
        super(MultiLayerConvolution, self).__init__()
        self.layers = nn.ModuleList()
        num_channels = n_colors
        for i in range(n_layers):
            layer = MultiScaleConvolution(
                num_channels=num_channels,
                num_filters=n_hidden,
                spatial_width=spatial_width,
                num_scales=n_scales,
                filter_size=filter_size,
                name=f"layer{i}_"
            )
            self.layers.append(layer)
            num_channels = n_hidden

    def forward(self, X):
        out = X
        for layer in self.layers:
            out = layer(out)
        return out


def make_mlp(layer_dims, activations):
    """Linear layers of sizes layer_dims, layer i followed by activations[i]
    where there is one."""
    layers = []
    for i in range(len(layer_dims) - 1):
        layers.append(nn.Linear(layer_dims[i], layer_dims[i + 1]))
        if i < len(activations):
            layers.append(activations[i])
    return nn.Sequential(*layers)


class MLP_conv_dense(nn.Module):
    """The network: a lower pathway (multi-scale convolutions in parallel with
    a dense MLP on the flattened image) and an upper per-pixel MLP.

    Args:
        n_layers_conv: multi-scale convolution layers.
        n_layers_dense_lower: layers of the lower dense MLP.
        n_layers_dense_upper: layers of the upper per-pixel MLP.
        n_hidden_conv: channels of the convolution layers.
        n_hidden_dense_lower: hidden units of the lower dense MLP.
        n_hidden_dense_lower_output: lower dense MLP outputs per pixel.
        n_hidden_dense_upper: hidden units of the upper MLP.
        spatial_width: image width.
        n_colors: image channels.
        n_scales: scales of the convolution layers.
        n_temporal_basis: temporal basis functions.
    """

    def __init__(self, n_layers_conv, n_layers_dense_lower, n_layers_dense_upper,
                 n_hidden_conv, n_hidden_dense_lower, n_hidden_dense_lower_output,
                 n_hidden_dense_upper, spatial_width, n_colors, n_scales, n_temporal_basis):
        super(MLP_conv_dense, self).__init__()
        self.n_colors = n_colors
        self.spatial_width = spatial_width
        self.n_hidden_conv = n_hidden_conv
        self.n_hidden_dense_lower = n_hidden_dense_lower
        self.n_hidden_dense_lower_output = n_hidden_dense_lower_output
        self.n_layers_dense_lower = n_layers_dense_lower

        # Lower pathway, convolutional.
        self.mlp_conv = MultiLayerConvolution(n_layers_conv, n_hidden_conv, spatial_width,
                                              n_colors, n_scales)

        # Lower pathway, dense (optional): no activation after the last layer.
        if n_hidden_dense_lower > 0 and n_layers_dense_lower > 0:
            n_input = n_colors * (spatial_width ** 2)
            n_output = n_hidden_dense_lower_output * (spatial_width ** 2)
            activations = [dense_nonlinearity] * (n_layers_dense_lower - 1)
            self.mlp_dense_lower = make_mlp(
                [n_input] + [n_hidden_dense_lower] * (n_layers_dense_lower - 1) + [n_output],
                activations
            )
        else:
            self.mlp_dense_lower = None
            self.n_hidden_dense_lower_output = 0

        # Upper pathway: per-pixel MLP with a linear output of
        # n_colors * 2 * n_temporal_basis values (mu and beta coefficients).
        n_output = n_colors * n_temporal_basis * 2
        activations_upper = [dense_nonlinearity] * (n_layers_dense_upper - 1) + [nn.Identity()]
        self.mlp_dense_upper = make_mlp(
            [n_hidden_conv + self.n_hidden_dense_lower_output]
            + [n_hidden_dense_upper] * (n_layers_dense_upper - 1) + [n_output],
            activations_upper
        )

    def forward(self, X):
        """(batch, n_colors, W, W) -> (batch, W, W, n_colors * 2 * n_temporal_basis)."""
        Y = self.mlp_conv(X)  # (batch, n_hidden_conv, W, W)
        Y = Y.permute(0, 2, 3, 1)  # (batch, W, W, n_hidden_conv)

        if self.mlp_dense_lower is not None:
            batch_size = X.size(0)
            X_flat = X.view(batch_size, -1)  # (batch, n_colors * W^2), NCHW order
            Y_dense = self.mlp_dense_lower(X_flat)
            Y_dense = Y_dense.view(batch_size, self.spatial_width, self.spatial_width,
                                   self.n_hidden_dense_lower_output)
            # Each pathway scaled by the square root of its number of units.
            Y = torch.cat([
                Y / math.sqrt(self.n_hidden_conv),
                Y_dense / math.sqrt(self.n_hidden_dense_lower_output)
            ], dim=3)

        # Per-pixel upper MLP (change 11: reshape, as Y is not contiguous
        # without the dense pathway).
        batch_size, H, W, channels = Y.shape
        Y_flat = Y.reshape(batch_size * H * W, channels)
        Z_flat = self.mlp_dense_upper(Y_flat)
        Z = Z_flat.view(batch_size, H, W, -1)
        return Z


class DiffusionModel(nn.Module):
    """The diffusion model: forward process, learned reverse kernel, bound.

    Args:
        spatial_width: image width (square images).
        n_colors: image channels.
        trajectory_length: T, number of diffusion steps.
        n_temporal_basis: number of temporal basis functions.
        n_hidden_dense_lower, n_hidden_dense_lower_output, n_hidden_dense_upper,
        n_hidden_conv, n_layers_conv, n_layers_dense_lower, n_layers_dense_upper,
        n_scales: network sizes (see MLP_conv_dense).
        n_t_per_minibatch: time steps sampled per minibatch in `cost`.
        step1_beta: extra variance of the first step.
        uniform_noise: width of the dequantisation noise.
        link: 'logit' (the reference code) or 'log' (the seed's typo), used in
            the forward schedule and in the reverse beta.
        seed_min_beta: True uses the seed's scalar minimum beta, which ignores
            step1_beta; False (default) the reference code's per-step minimum.
    """

    def __init__(self,
                 spatial_width,
                 n_colors,
                 trajectory_length=1000,
                 n_temporal_basis=10,
                 n_hidden_dense_lower=500,
                 n_hidden_dense_lower_output=2,
                 n_hidden_dense_upper=20,
                 n_hidden_conv=20,
                 n_layers_conv=4,
                 n_layers_dense_lower=4,
                 n_layers_dense_upper=2,
                 n_t_per_minibatch=1,
                 n_scales=1,
                 step1_beta=0.001,
                 uniform_noise=0,
                 link='logit',
                 seed_min_beta=False):
        super(DiffusionModel, self).__init__()
        if link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}, got {link!r}")
        self.spatial_width = spatial_width
        self.n_colors = n_colors
        self.trajectory_length = trajectory_length
        self.n_temporal_basis = n_temporal_basis
        self.n_t_per_minibatch = n_t_per_minibatch
        self.uniform_noise = uniform_noise
        self.link = link
        self.seed_min_beta = seed_min_beta

        self.mlp = MLP_conv_dense(n_layers_conv, n_layers_dense_lower, n_layers_dense_upper,
                                  n_hidden_conv, n_hidden_dense_lower, n_hidden_dense_lower_output,
                                  n_hidden_dense_upper, spatial_width, n_colors, n_scales,
                                  n_temporal_basis)

        # Change 10: buffers follow .to(device) and stay out of the state_dict.
        self.register_buffer(
            'temporal_basis',
            self.generate_temporal_basis(trajectory_length, n_temporal_basis),
            persistent=False)
        self.register_buffer('beta_arr', self.generate_beta_arr(step1_beta), persistent=False)

    def _link(self, u):
        """The offset of the reverse beta: logit (reference) or log (seed)."""
        return logit(u) if self.link == 'logit' else torch.log(u)

    def generate_beta_arr(self, step1_beta):
        """The forward variances beta_t, shape (T, 1).

        beta_t = min_beta_t + sigmoid(perturb_t + link(b_t)) * (1 - min_beta_t - 1e-5)
        with b = 1 / linspace(T, 2, T) (a constant fraction of the remaining
        variance destroyed per step) and perturb = basis^T @ 0.
        """
        min_beta_val = 1e-6
        min_beta_values = np.ones((self.trajectory_length,)) * min_beta_val
        # The first step gets more noise than the minimum.
        min_beta_values[0] += step1_beta

        # TODO add beta_perturb_coefficients to the parameters to be learned
        beta_perturb_coefficients_values = np.zeros((self.n_temporal_basis,))
        beta_perturb = torch.matmul(self.temporal_basis.T,
                                    torch.tensor(beta_perturb_coefficients_values,
                                                 dtype=torch.float32))

        beta_baseline = 1. / np.linspace(self.trajectory_length, 2., self.trajectory_length)
        # Change 7: logit (reference code) or log (the seed).
        if self.link == 'logit':
            offset = np.log(beta_baseline / (1. - beta_baseline))
        else:
            offset = np.log(beta_baseline)
        beta_baseline_offset = torch.tensor(offset, dtype=torch.float32)

        beta_arr = torch.sigmoid(beta_perturb + beta_baseline_offset)
        # Change 8: the per-step minimum (reference code) or the scalar (seed).
        if self.seed_min_beta:
            min_beta = min_beta_val
        else:
            min_beta = torch.tensor(min_beta_values, dtype=torch.float32)
        beta_arr = min_beta + beta_arr * (1 - min_beta - 1e-5)
        return beta_arr.view(self.trajectory_length, 1)

    def get_t_weights(self, t):
        """Weights max(0, 1 - |t - i|) over i = 0 .. T-1, shape (T, 1): one-hot
        for integer t, linear interpolation otherwise."""
        n_seg = self.trajectory_length
        t_compare = torch.arange(n_seg, dtype=torch.float32, device=t.device).view(1, n_seg)
        diff = torch.abs(t.view(1, 1) - t_compare)
        # Change 3: reduce over the stacking axis.
        t_weights = torch.max(torch.stack([(1 - diff).view(n_seg, 1),
                                           torch.zeros((n_seg, 1), device=t.device)]), dim=0)[0]
        return t_weights.view(-1, 1)

    def get_beta_forward(self, t):
        """beta_t read out with the t-weights, shape (1, 1)."""
        t_weights = self.get_t_weights(t)
        return torch.matmul(t_weights.T, self.beta_arr)

    def get_mu_sigma(self, X_noisy, t):
        """Mean and standard deviation of the reverse step p(x_{t-1} | x_t).

        beta_rev = sigmoid(beta_coeff / sqrt(T) + link(beta_t)),
        mu = x_t sqrt(1 - beta_t) + mu_coeff sqrt(beta_t), sigma = sqrt(beta_rev).
        """
        Z = self.mlp(X_noisy)
        mu_coeff, beta_coeff = self.temporal_readout(Z, t)
        beta_forward = self.get_beta_forward(t)
        beta_coeff_scaled = beta_coeff / torch.sqrt(
            torch.tensor(self.trajectory_length, dtype=torch.float32))
        # Change 7: logit (reference code) or log (the seed).
        beta_reverse = torch.sigmoid(beta_coeff_scaled + self._link(beta_forward))
        mu = X_noisy * torch.sqrt(1 - beta_forward) + mu_coeff * torch.sqrt(beta_forward)
        sigma = torch.sqrt(beta_reverse)
        return mu, sigma

    def generate_forward_diffusion_sample(self, X_noiseless, t=None, N=None, U=None):
        """Corrupts X_noiseless to x_t and computes the posterior q(x_{t-1} | x_t, x_0).

        Args:
            X_noiseless: clean images, viewable as (batch, n_colors, W, W).
            t: optional time step (tensor of shape (1,)); default uniform on
                {1, ..., T-1}.
            N: optional standard normal noise, (batch, n_colors, W, W).
            U: optional U(0, 1) draws for the dequantisation noise, same shape.

        Returns:
            (X_noisy, t, mu, sigma): x_t, the time step, and the posterior mean
            and standard deviation.
        """
        X_noiseless = X_noiseless.view(-1, self.n_colors, self.spatial_width, self.spatial_width)
        n_images = X_noiseless.size(0)
        device = X_noiseless.device
        if t is None:
            t = torch.floor(torch.rand(1) * (self.trajectory_length - 1) + 1).to(device)
        t_weights = self.get_t_weights(t)

        if N is None:
            shape = (n_images, self.n_colors, self.spatial_width, self.spatial_width)
            N = torch.normal(mean=torch.zeros(shape, device=device),
                             std=torch.ones(shape, device=device))

        beta_forward = self.get_beta_forward(t)
        alpha_forward = 1. - beta_forward
        alpha_arr = 1. - self.beta_arr
        alpha_cum_forward_arr = torch.cumprod(alpha_arr, dim=0).view(self.trajectory_length, 1)
        alpha_cum_forward = torch.matmul(t_weights.T, alpha_cum_forward_arr)

        beta_cumulative = 1. - alpha_cum_forward
        beta_cumulative_prior_step = 1. - alpha_cum_forward / alpha_forward

        if U is None:
            U = torch.rand_like(X_noiseless)
        X_uniformnoise = X_noiseless + (U - 0.5) * self.uniform_noise
        X_noisy = X_uniformnoise * torch.sqrt(alpha_cum_forward) + N * torch.sqrt(1. - alpha_cum_forward)

        # Posterior mean and standard deviation.
        mu1_scl = torch.sqrt(alpha_cum_forward / alpha_forward)
        mu2_scl = 1. / torch.sqrt(alpha_forward)
        cov1 = 1. - alpha_cum_forward / alpha_forward
        cov2 = beta_forward / alpha_forward
        lam = 1. / cov1 + 1. / cov2

        mu = (X_uniformnoise * mu1_scl / cov1 + X_noisy * mu2_scl / cov2) / lam
        sigma = torch.sqrt(1. / lam).view(1, 1, 1, 1)

        return X_noisy, t, mu, sigma

    def get_beta_full_trajectory(self):
        """1 - prod_t (1 - beta_t): the variance added by the whole trajectory."""
        alpha_arr = 1. - self.beta_arr
        beta_full_trajectory = 1. - torch.exp(torch.sum(torch.log(alpha_arr)))
        return beta_full_trajectory

    def get_negL_bound(self, mu, sigma, mu_posterior, sigma_posterior):
        """The bound -(K - L_null) in bits per pixel (colours summed), with the
        one-t KL multiplied by T."""
        KL = (torch.log(sigma) - torch.log(sigma_posterior)
              + (sigma_posterior ** 2 + (mu_posterior - mu) ** 2) / (2 * sigma ** 2) - 0.5)
        # Change 5: a Python float instead of numpy .astype(torch dtype).
        h_const = float(0.5 * (1 + np.log(2. * np.pi)))
        H_startpoint = h_const + 0.5 * torch.log(self.beta_arr[0])
        H_endpoint = h_const + 0.5 * torch.log(self.get_beta_full_trajectory())
        H_prior = h_const + 0.5 * torch.log(torch.tensor(1.))

        negL_bound = KL * self.trajectory_length + H_startpoint - H_endpoint + H_prior
        negL_gauss = h_const + 0.5 * torch.log(torch.tensor(1.))
        negL_diff = negL_bound - negL_gauss
        L_diff_bits = negL_diff / torch.log(torch.tensor(2.))
        L_diff_bits_avg = L_diff_bits.mean() * self.n_colors
        return L_diff_bits_avg

    def cost_single_t(self, X_noiseless):
        """The bound for one random time step and noise draw."""
        X_noisy, t, mu_posterior, sigma_posterior = self.generate_forward_diffusion_sample(X_noiseless)
        mu, sigma = self.get_mu_sigma(X_noisy, t)
        negL_bound = self.get_negL_bound(mu, sigma, mu_posterior, sigma_posterior)
        return negL_bound

    def cost(self, X_noiseless):
        """Change 6: the training cost, the mean over n_t_per_minibatch of cost_single_t."""
        cost = 0.
        for ii in range(self.n_t_per_minibatch):
            cost += self.cost_single_t(X_noiseless)
        return cost / self.n_t_per_minibatch

    def temporal_readout(self, Z, t):
        """Reads the network output Z (batch, W, W, n_colors * 2 * J), laid out as
        (colors, {mu, beta}, J), at time step t. Returns (mu_coeff, beta_coeff),
        each (batch, n_colors, W, W)."""
        n_images = Z.size(0)
        t_weights = self.get_t_weights(t)
        Z = Z.view(n_images, self.spatial_width, self.spatial_width, self.n_colors, 2,
                   self.n_temporal_basis)
        coeff_weights = torch.matmul(self.temporal_basis, t_weights)  # (J, 1)
        # Change 4: drop the trailing axis of size 1 before the permutation.
        concat_coeffs = torch.matmul(Z, coeff_weights)[..., 0]  # (batch, W, W, C, 2)
        mu_coeff = concat_coeffs[:, :, :, :, 0].permute(0, 3, 1, 2)
        beta_coeff = concat_coeffs[:, :, :, :, 1].permute(0, 3, 1, 2)
        return mu_coeff, beta_coeff

    def generate_temporal_basis(self, trajectory_length, n_basis):
        """Gaussian bumps over time, shape (J, T); each column sums to 1."""
        temporal_basis = np.zeros((trajectory_length, n_basis))
        xx = np.linspace(-1, 1, trajectory_length)
        x_centers = np.linspace(-1, 1, n_basis)
        width = (x_centers[1] - x_centers[0]) / 2.
        for ii in range(n_basis):
            temporal_basis[:, ii] = np.exp(-(xx - x_centers[ii]) ** 2 / (2 * width ** 2))
        temporal_basis /= np.sum(temporal_basis, axis=1).reshape((-1, 1))
        temporal_basis = temporal_basis.T
        return torch.tensor(temporal_basis, dtype=torch.float32)

    def forward(self, X_noiseless):
        """The training cost (as `cost`)."""
        cost = 0.
        for ii in range(self.n_t_per_minibatch):
            cost += self.cost_single_t(X_noiseless)
        return cost / self.n_t_per_minibatch
