"""Speed of the JAX model, side by side with the seed's PyTorch model, in one process.

  python -m benchmarks.run            # MNIST and CIFAR-10 models, writes benchmarks/results.json
  python -m benchmarks.run --quick    # a smoke run (MNIST model, small batches, T = 50),
                                      # writes runs/benchmark_quick.json

For each model it measures, after compilation: train-step images/s (median of
several steps), compile time, sampling images/s over the full reverse
trajectory, evaluation images/s (the forward bound, one t per batch), XLA's
FLOPs per train step and per trajectory and the fraction of this machine's
measured matmul peak each reaches, and memory (XLA's buffer sizes, the process's peak RSS). The seed's
PyTorch model (benchmarks/seed_torch.py) runs the same work when torch is
installed, eagerly and under torch.compile (its compile time reported);
otherwise it is skipped with a note.

On a CPU, JAX is shown one device per core (as the entry points do, see
dpm_jax.execution; --cpu_devices overrides) and the JAX model runs with the
batch split over all devices, then on one device. The default configuration
is what the entry points run (dpm_jax.execution.plan): every batch split over
every device. The headline ratios in the results JSON are the first model's
default configuration over the PyTorch rows of the same run:
train_speedup_vs_torch, sample_speedup_vs_torch (eager),
train_speedup_vs_torch_compile, sample_speedup_vs_torch_compile, and
one_device_peak_fraction, default_over_one_device_train (and _sample),
default_over_best_train (below 1 where the other device count was faster in
this run); the run prints the faster --cpu_devices for this machine. Where a
device computes several micro-batches side by side
(compute.concurrent_micro_batches), its step is timed one micro-batch at a
time too: concurrent_over_one_at_a_time_train (one device).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import execution
from dpm_jax import experiment as experiment_lib
from dpm_jax import optim
from dpm_jax import parallel
from dpm_jax import registry
from dpm_jax import sampling
from dpm_jax import step as step_lib

from . import output_path, shipped_config

HERE = os.path.dirname(os.path.abspath(__file__))
STATS = data_lib.DataStats(scale=3.25, shift=-0.42, uniform_noise=3.25 / 255)


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """float32 matmul throughput of this backend (the denominator of the peak fraction)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  return 2 * n**3 / _median_time(lambda: f(a).block_until_ready(), repeats) / 1e9


def experiment_config(name: str, quick: bool, conv: str = "auto", batch: int = 512):
  """The experiment config of a model preset, with the given convolution kernel."""
  config = shipped_config(name)
  config.compute.conv = conv
  config.train.batch_size = batch
  if quick:
    config.model.trajectory_length = 50
  return config


def random_task(config, batch: int) -> experiment_lib.Task:
  """The image task of a config on random uint8 images (the benchmark's data)."""
  m = config.model
  images = np.random.default_rng(0).integers(
      0, 256, (batch, m.spatial_width, m.spatial_width, m.n_colors), dtype=np.uint8)
  return experiment_lib.build(registry.of_config(config), config,
                             data_lib.Dataset(images, images, "random"), STATS.to_dict())


def bench_jax_train(config, steps: int, par: parallel.DataParallel) -> dict:
  """The training loop's own jitted train step (train.jit_train_step) on random uint8 images."""
  batch = config.train.batch_size
  task = random_task(config, batch)
  params = diffusion.init_params(task.model, jax.random.key(0))
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1000)
  state = par.put_replicated(step_lib.create_train_state(task.model, params, tx))
  plan = execution.plan(config.compute, batch, task.model, list(par.mesh.devices.flat))
  step_fn = step_lib.jit_train_step(task, plan)
  micro, concurrent = plan.micro_batch_size, plan.concurrent_micro_batches
  images = par.put_batch(task.data.train)
  key = jax.random.key(1)
  start = time.perf_counter()
  compiled = step_fn.lower(state, images, key).compile()
  compile_s = time.perf_counter() - start
  flops = model_flops_per_step(config)
  mem = compiled.memory_analysis()

  def step():
    nonlocal state
    state, metrics = compiled(state, images, key)
    jax.block_until_ready((state, metrics))

  for _ in range(2):  # warm up
    step()
  step_s = _median_time(step, steps)
  out = {"images_per_sec": batch / step_s, "step_ms": step_s * 1e3, "compile_s": compile_s,
         "micro_batch_size": micro, "concurrent_micro_batches": concurrent,
         "flops_per_step": flops, "achieved_gflops": flops / step_s / 1e9}
  if mem is not None:
    out["xla_temp_mib"] = mem.temp_size_in_bytes / 2**20
    out["xla_argument_mib"] = mem.argument_size_in_bytes / 2**20
    out["xla_output_mib"] = mem.output_size_in_bytes / 2**20
  return out


def model_flops_per_step(config) -> float:
  """The train step's arithmetic, from XLA's cost analysis with XLA's convolution.

  The CPU kernel runs its backward pass in loops over chunks, which the cost
  analysis counts once, so the step with XLA's convolution (the same
  function) is what is analysed, on one device without micro-batches. The
  same model and batch are analysed once per process.
  """
  config = config.copy_and_resolve_references()
  config.compute.conv, config.compute.micro_batch_size, config.compute.cpu_devices = "xla", 0, 0
  config.compute.concurrent_micro_batches = 1
  key = config.to_json(sort_keys=True)
  if key not in _FLOPS:
    _FLOPS[key] = _analysed_flops(config)
  return _FLOPS[key]


_FLOPS = {}


def _analysed_flops(config) -> float:
  task = random_task(config, config.train.batch_size)
  params = jax.eval_shape(lambda: diffusion.init_params(task.model, jax.random.key(0)))
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1000)
  state = jax.eval_shape(lambda p: step_lib.create_train_state(task.model, p, tx), params)
  plan = execution.plan(config.compute, config.train.batch_size, task.model, jax.devices()[:1])
  step_fn = step_lib.jit_train_step(task, plan)
  return xla_flops(step_fn, state, task.data.train, jax.random.key(0))


def xla_flops(jitted, *args) -> float:
  """XLA's cost analysis of a jitted function's program for these arguments (arrays or
  shapes): its FLOPs, NaN where the backend reports none."""
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def one_at_a_time(config, steps: int, par: parallel.DataParallel) -> dict:
  """The train step with compute.concurrent_micro_batches=1 (one micro-batch after
  another), to set beside the same step with the micro-batches side by side."""
  config = config.copy_and_resolve_references()
  config.compute.concurrent_micro_batches = 1
  return bench_jax_train(config, steps, par)


def sample_flops(config, num_images: int) -> float:
  """The arithmetic of a whole reverse trajectory: XLA's cost analysis of one learned
  reverse step, with XLA's convolution on one device, times the T - 1 steps (the
  fixed first step has no network). The same model and images are analysed once per
  process."""
  key = (config.model.to_json(sort_keys=True), num_images)
  if key not in _FLOPS:
    model = diffusion.make_model(config.model, "xla")
    params = jax.eval_shape(lambda: diffusion.init_params(model, jax.random.key(0)))
    x = jax.ShapeDtypeStruct((num_images,) + tuple(model.data_shape), jnp.float32)
    step = jax.jit(lambda p, x: model.apply(p, x, jnp.float32(1), method="reverse"))
    _FLOPS[key] = xla_flops(step, params, x) * (config.model.trajectory_length - 1)
  return _FLOPS[key]


def bench_jax_sample(config, num_images: int, repeats: int, par: parallel.DataParallel) -> dict:
  """The full reverse trajectory (T - 1 learned steps and the fixed one) as one scan."""
  cfg = config.model
  model = diffusion.make_model(cfg, execution.conv_kernel(config.compute.conv))
  params = diffusion.init_params(model, jax.random.key(0))
  sample = sampling.make_sampler(model, num_images=num_images, par=par)
  start = time.perf_counter()
  sample(params, jax.random.key(0)).block_until_ready()
  first = time.perf_counter() - start
  seconds = _median_time(lambda: sample(params, jax.random.key(1)).block_until_ready(), repeats)
  flops = sample_flops(config, num_images)
  return {"images_per_sec": num_images / seconds, "seconds": seconds,
          "compile_and_first_s": first, "trajectory_length": cfg.trajectory_length,
          "flops": flops, "achieved_gflops": flops / seconds / 1e9}


def bench_jax_eval(config, repeats: int, par: parallel.DataParallel) -> dict:
  """The test-set bound's forward pass (one t per batch), no gradients."""
  cfg, batch = config.model, config.train.batch_size
  model = diffusion.make_model(cfg, execution.conv_kernel(config.compute.conv))
  params = par.put_replicated(diffusion.init_params(model, jax.random.key(0)))
  loss_fn = diffusion.make_loss_fn(model, uniform_noise=STATS.uniform_noise, train=False)
  f = jax.jit(lambda p, x, k: loss_fn(p, data_lib.to_model_units(x, STATS), k)[0])
  images = par.put_batch(np.random.default_rng(0).integers(
      0, 256, (batch, cfg.spatial_width, cfg.spatial_width, cfg.n_colors), dtype=np.uint8))
  f(params, images, jax.random.key(0)).block_until_ready()
  seconds = _median_time(lambda: f(params, images, jax.random.key(0)).block_until_ready(), repeats)
  return {"images_per_sec": batch / seconds}


def bench_torch(cfg, batch: int, steps: int, num_images: int, compile: bool = False) -> dict:
  """The seed's PyTorch model: a train step (RMSprop) and the sampling loop.

  compile=True wraps the training cost and the reverse step in torch.compile
  (its default inductor backend); their first calls, which compile, are timed
  apart as compile_s.
  """
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(HERE))
  from . import seed_torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  kwargs = {k: cfg[k] for k in (
      "trajectory_length", "n_temporal_basis", "n_hidden_dense_lower", "n_hidden_dense_lower_output",
      "n_hidden_dense_upper", "n_hidden_conv", "n_layers_conv", "n_layers_dense_lower",
      "n_layers_dense_upper", "n_t_per_minibatch", "n_scales", "step1_beta")}
  model = seed_torch.DiffusionModel(cfg.spatial_width, cfg.n_colors,
                                    uniform_noise=STATS.uniform_noise, **kwargs)
  opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-10)
  cost = torch.compile(model.cost) if compile else model.cost
  mu_sigma = torch.compile(model.get_mu_sigma) if compile else model.get_mu_sigma
  x = torch.randn(batch, cfg.n_colors, cfg.spatial_width, cfg.spatial_width)

  def step():
    opt.zero_grad()
    cost(x).backward()
    opt.step()

  start = time.perf_counter()
  step()  # compiles, under torch.compile
  first_step_s = time.perf_counter() - start
  step()
  step_s = _median_time(step, steps)
  out = {"train_images_per_sec": batch / step_s, "step_ms": step_s * 1e3,
         "torch_version": torch.__version__, "threads": torch.get_num_threads(),
         "mode": "compile" if compile else "eager"}

  xs = torch.randn(num_images, cfg.n_colors, cfg.spatial_width, cfg.spatial_width)
  T = cfg.trajectory_length
  with torch.no_grad():
    start = time.perf_counter()
    mu_sigma(xs, torch.tensor([[float(T - 1)]]))  # compiles, under torch.compile
    first_sample_s = time.perf_counter() - start
    start = time.perf_counter()
    for t in range(T - 1, 0, -1):
      mu, sigma = mu_sigma(xs, torch.tensor([[float(t)]]))
      xs = mu + sigma * torch.randn_like(xs)
    seconds = time.perf_counter() - start
  out.update(sample_images_per_sec=num_images / seconds, sample_seconds=seconds)
  if compile:
    out["compile_s"] = (first_step_s - step_s) + (first_sample_s - seconds / (T - 1))
  return out


def default_configuration(config, rows: dict, sample_images: int) -> dict:
  """Which rows the entry points' default configuration runs (execution.plan): the
  training step on every device, sampling on the most that divide its images."""
  from dpm_jax import registry  # pylint: disable=g-import-not-at-top
  model = registry.of_config(config).make_model(config)
  train_devices = len(execution.plan(config.compute, config.train.batch_size, model).devices)
  forward = execution.forward_par(sample_images).num_devices
  return {"train_devices": train_devices, "train_how": "the execution plan",
          "sample_devices": forward, "train": rows[train_devices]["train"],
          "sample": rows[forward]["sample"], "eval": rows[max(rows)]["eval"]}


def headline_ratios(results: dict, name: str) -> dict:
  """The speed-ups of the default configuration of one model over the seed's PyTorch
  model (eager and torch.compile), from this run."""
  entry = results["models"][name]
  default, out = entry.get("default"), {}
  if default is None:
    return out
  for mode, suffix in (("eager", ""), ("compile", "_compile")):
    t = entry["torch"].get(mode, {})
    ok = "train_images_per_sec" in t
    out[f"train_speedup_vs_torch{suffix}"] = (
        default["train"]["images_per_sec"] / t["train_images_per_sec"] if ok else None)
    out[f"sample_speedup_vs_torch{suffix}"] = (
        default["sample"]["images_per_sec"] / t["sample_images_per_sec"] if ok else None)
  one = next((j for label, j in entry["jax"].items()
              if label.startswith("auto") and j["devices"] == 1), None)
  if one is not None:
    out["one_device_peak_fraction"] = one["train"]["achieved_gflops"] / results[
        "matmul_peak_gflops"]
    out["default_over_one_device_train"] = (default["train"]["images_per_sec"]
                                            / one["train"]["images_per_sec"])
    # Below 1 where the other device count was faster in this run.
    out["default_over_best_train"] = default["train"]["images_per_sec"] / max(
        j["train"]["images_per_sec"] for label, j in entry["jax"].items()
        if label.startswith("auto"))
    out["default_over_one_device_sample"] = (default["sample"]["images_per_sec"]
                                             / one["sample"]["images_per_sec"])
    if "train_one_at_a_time" in one:
      out["concurrent_over_one_at_a_time_train"] = (
          one["train"]["images_per_sec"] / one["train_one_at_a_time"]["images_per_sec"])
  out["headline_model"] = name
  return out


def machine_info() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  dev = jax.devices()[0]
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count()}


def markdown_table(results: dict) -> str:
  rows = ["| model | implementation | train img/s | step ms | compile s | GFLOP/step | % matmul peak "
          "| sample img/s (T steps) | sample % peak | eval img/s |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  peak = results["matmul_peak_gflops"]

  def train_cells(tr):
    return (f"{tr['images_per_sec']:.0f} | {tr['step_ms']:.0f} | {tr['compile_s']:.1f} | "
            f"{tr['flops_per_step'] / 1e9:.1f} | {100 * tr['achieved_gflops'] / peak:.0f}%")

  for name, r in results["models"].items():
    for impl, j in r["jax"].items():
      sample = j["sample"]
      rows.append(
          f"| {name} | JAX ({impl}) | {train_cells(j['train'])} | "
          f"{sample['images_per_sec']:.2f} ({sample['trajectory_length']}) | "
          f"{100 * sample['achieved_gflops'] / peak:.0f}% | {j['eval']['images_per_sec']:.0f} |")
      if "train_one_at_a_time" in j:
        rows.append(f"| {name} | JAX ({impl}, one micro-batch at a time) | "
                    f"{train_cells(j['train_one_at_a_time'])} | - | - | - |")
    for mode, t in r.get("torch", {}).items():
      if "train_images_per_sec" in t:
        compile_s = f"{t['compile_s']:.0f}" if "compile_s" in t else "-"
        rows.append(f"| {name} | PyTorch seed ({mode}, {t['threads']} threads) | "
                    f"{t['train_images_per_sec']:.0f} | {t['step_ms']:.0f} | {compile_s} | - | - | "
                    f"{t['sample_images_per_sec']:.2f} | - | - |")
  lines = ["\n".join(rows), ""]
  for name, r in results["models"].items():
    d = r.get("default")
    if d:
      lines.append(f"- {name}, the default configuration: training on {d['train_devices']} "
                   f"device(s) ({d['train_how']}), sampling on {d['sample_devices']}")
      auto = {j["devices"]: j["train"]["images_per_sec"] for label, j in r["jax"].items()
              if label.startswith("auto")}
      if len(auto) > 1:
        best = max(auto, key=auto.get)
        lines.append(f"- {name}: on this machine, in this run, training was fastest with "
                     f"--cpu_devices={best} ({auto[best]:.0f} img/s)")
  for key in ("train_speedup_vs_torch", "sample_speedup_vs_torch",
              "train_speedup_vs_torch_compile", "sample_speedup_vs_torch_compile",
              "one_device_peak_fraction", "default_over_one_device_train",
              "default_over_best_train", "default_over_one_device_sample",
              "concurrent_over_one_at_a_time_train"):
    if results.get(key) is not None:
      lines.append(f"- {key}: {results[key]:.2f}")
  return "\n".join(lines)


def default_output(quick: bool) -> str:
  """runs/benchmark_quick.json for a smoke run; the committed benchmarks/results.json
  when run from a checkout, else runs/benchmark.json (never inside site-packages)."""
  if quick:
    return os.path.join("runs", "benchmark_quick.json")
  return output_path("results.json", "benchmark.json")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run: small batches, T = 50, few repeats; by default only the "
                      "MNIST model, its 'auto' kernel on all devices, written to "
                      "runs/benchmark_quick.json")
  parser.add_argument("--models", default=None, help="default: mnist,cifar10 (--quick: mnist)")
  parser.add_argument("--impls", default=None,
                      help="JAX convolution kernels to time ('auto' resolves per backend); "
                      "default: auto,xla (--quick: auto)")
  parser.add_argument("--devices", default=None,
                      help="device counts to run the JAX model on ('all': every device); "
                      "default: all,1")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="CPU devices JAX shows (0: one per core, as many as divide the batches)")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch seed model")
  parser.add_argument("--output", default=None,
                      help="default: benchmarks/results.json in a checkout, else "
                      "runs/benchmark.json (--quick: runs/benchmark_quick.json)")
  args = parser.parse_args(argv)

  quick = args.quick
  args.models = args.models or ("mnist" if quick else "mnist,cifar10")
  args.impls = args.impls or ("auto" if quick else "auto,xla")
  args.devices = args.devices or "all,1"
  args.output = args.output or default_output(quick)
  # The CIFAR-10 model's trajectory costs ~30x the MNIST model's per image:
  # few images, timed once after the compiling run.
  setups = {"mnist": dict(batch=512, sample=64, sample_repeats=2),
            "cifar10": dict(batch=200, sample=4, sample_repeats=1)}
  if quick:
    setups = {"mnist": dict(batch=32, sample=8, sample_repeats=1),
              "cifar10": dict(batch=8, sample=2, sample_repeats=1)}
  steps = 3 if quick else 7
  impls = [i.strip() for i in args.impls.split(",") if i.strip()]
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  # Before JAX runs anything (it fixes its devices then).
  execution.show_cpu_devices(args.cpu_devices or execution.cpu_devices_for(
      *[v for n in names for v in (setups[n]["batch"], setups[n]["sample"])]))
  counts = []
  for c in args.devices.split(","):
    n = jax.device_count() if c.strip() == "all" else int(c)
    if n not in counts and 1 <= n <= jax.device_count():
      counts.append(n)
  results = {"machine": machine_info(), "quick": quick, "command": " ".join(["python -m benchmarks.run"] + (argv if argv is not None else sys.argv[1:])),
             "matmul_peak_gflops": matmul_peak_gflops(512 if quick else 2048), "models": {}}
  print(f"machine: {results['machine']}\nmatmul peak: {results['matmul_peak_gflops']:.0f} GFLOP/s",
        flush=True)
  for name in names:
    s = setups[name]
    entry = {"batch_size": s["batch"], "sample_images": s["sample"], "jax": {}}
    for impl in impls:
      rows = {}
      for n in counts:
        par = parallel.DataParallel(jax.devices()[:n])
        config = experiment_config(name, quick, impl, s["batch"])
        label = (f"{impl}->{execution.conv_kernel(impl)}" if impl == "auto" else impl) + (
            f" conv, {n} device" + ("s" if n > 1 else ""))
        print(f"[{name}] JAX {label}: train step, batch {s['batch']} ...", flush=True)
        j = {"devices": n, "train": bench_jax_train(config, steps, par)}
        if j["train"]["concurrent_micro_batches"] > 1:
          print(f"[{name}] JAX {label}: train step, one micro-batch at a time ...", flush=True)
          j["train_one_at_a_time"] = one_at_a_time(config, steps, par)
        print(f"[{name}] JAX {label}: sampling {s['sample']} images, "
              f"T={config.model.trajectory_length} ...", flush=True)
        j["sample"] = bench_jax_sample(config, s["sample"], s["sample_repeats"], par)
        j["eval"] = bench_jax_eval(config, steps, par)
        j["peak_rss_mib"] = peak_rss_mib()
        entry["jax"][label] = rows[n] = j
        print(f"  train {j['train']['images_per_sec']:.0f} img/s, sample "
              f"{j['sample']['images_per_sec']:.2f} img/s, eval {j['eval']['images_per_sec']:.0f} img/s",
              flush=True)
      if impl == "auto":
        entry["default"] = default_configuration(
            experiment_config(name, quick, impl, s["batch"]), rows, s["sample"])
    entry["torch"] = {}
    for mode in ("eager", "compile"):
      if args.no_torch:
        entry["torch"][mode] = {"skipped": "--no_torch"}
        print(f"[{name}] PyTorch seed model ({mode}) skipped (--no_torch): no ratios against it",
              flush=True)
      elif importlib.util.find_spec("torch") is None:
        entry["torch"][mode] = {"skipped": "torch is not installed (pip install torch==2.13.0 "
                                           "to compare)"}
        print(f"[{name}] PyTorch seed model skipped: torch is not installed", flush=True)
      else:
        print(f"[{name}] PyTorch seed model ({mode}) ...", flush=True)
        t = entry["torch"][mode] = bench_torch(experiment_config(name, quick).model, s["batch"],
                                               steps, s["sample"], compile=mode == "compile")
        print(f"  train {t['train_images_per_sec']:.0f} img/s, sample "
              f"{t['sample_images_per_sec']:.2f} img/s"
              + (f", compile {t['compile_s']:.0f} s" if "compile_s" in t else ""), flush=True)
    results["models"][name] = entry

  results.update(headline_ratios(results, names[0]))
  table = markdown_table(results)
  results["markdown"] = table
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=2)
  print("\n" + table + f"\n\nwrote {args.output}")
  return results


if __name__ == "__main__":
  main()
