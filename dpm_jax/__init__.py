"""dpm-jax: the 2015 diffusion probabilistic model (Sohl-Dickstein et al.) in JAX/Flax."""

__version__ = "0.1.0"
