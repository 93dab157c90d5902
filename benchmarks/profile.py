"""Where a training step's time goes: a per-op profile of the training loop's jitted step.

  python -m benchmarks.profile                      # MNIST model, batch 512, one device
  python -m benchmarks.profile --devices=2          # the batch split over two CPU devices

Traces a few steps with jax.profiler (its Perfetto trace, plain JSON), adds up the
time of every XLA op by name, and labels each with what it computes, read from the
compiled program's HLO: a convolution, a matmul (dot), a fusion (and the ops fused
into it), a copy; then groups the labels (matmuls, convolutions, copies, the rest).
Writes benchmarks/profile.json, or profile_<n>devices.json for n > 1 (runs/ outside a
checkout), and prints the groups and the ops that took most of a step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from . import output_path


def op_kinds(hlo_text: str) -> dict:
  """{instruction name: a short description}: its opcode, and for a fusion the
  heavy ops of its fused computation (convolution, dot, reduce, ...)."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line.strip())
    if m and not line.startswith(" "):
      current = computations.setdefault(m.group(1), [])
      continue
    m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
    if m and current is not None:
      current.append((m.group(1), m.group(2), line))
  kinds = {}
  heavy = ("convolution", "dot", "reduce", "reduce-window", "select-and-scatter", "scatter",
           "gather", "dynamic-update-slice", "dynamic-slice", "concatenate", "pad", "transpose")
  for instructions in computations.values():
    for name, opcode, line in instructions:
      kind = opcode
      if opcode == "fusion":
        called = re.search(r"calls=%?([\w.\-]+)", line)
        inner = {op for _, op, _ in computations.get(called.group(1), [])} if called else set()
        parts = [op for op in heavy if op in inner]
        kind = "fusion(" + ", ".join(parts or sorted(inner - {"parameter"})[:3]) + ")"
      kinds[name] = kind
  return kinds


GROUPS = ("matmuls", "convolutions", "copies", "elementwise and reductions")


def op_group(kind: str) -> str:
  """Which of GROUPS an op_kinds label falls in: a convolution or a dot (fused or not),
  data movement without arithmetic (concatenate, pad, slices, transposes, copies), or
  the rest."""
  if "convolution" in kind:
    return "convolutions"
  if "dot" in kind:
    return "matmuls"
  moves = ("concatenate", "pad", "slice", "transpose", "copy")
  if any(m in kind for m in moves) and "reduce" not in kind:
    return "copies"
  return "elementwise and reductions"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="mnist")
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--devices", type=int, default=1, help="CPU devices the batch splits over")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--output", default=None)
  args = parser.parse_args(argv)
  from dpm_jax import execution, parallel  # pylint: disable=g-import-not-at-top
  execution.show_cpu_devices(max(args.devices, execution.cpu_devices_for(args.batch)))
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  from dpm_jax import diffusion, optim, step as step_lib  # pylint: disable=g-import-not-at-top

  config = run.experiment_config(args.model, False, "auto", args.batch)
  task = run.random_task(config, args.batch)
  par = parallel.DataParallel(jax.devices()[:args.devices])
  params = diffusion.init_params(task.model, jax.random.key(0))
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1000)
  state = par.put_replicated(step_lib.create_train_state(task.model, params, tx))
  step_fn = step_lib.jit_train_step(task, execution.plan(config.compute, args.batch, task.model,
                                                          jax.devices()[:args.devices]))
  images, key = par.put_batch(task.data.train), jax.random.key(1)
  compiled = step_fn.lower(state, images, key).compile()
  kinds = op_kinds(compiled.as_text())
  for _ in range(2):
    state, m = compiled(state, images, key)
  jax.block_until_ready((state, m))
  folder = tempfile.mkdtemp(prefix="dpm_jax_profile_")
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, m = compiled(state, images, key)
      jax.block_until_ready((state, m))
    wall = (time.perf_counter() - start) / args.steps
  (path,) = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kinds:
      per_op[e["name"]] += e.get("dur", 0) / 1e6 / args.steps  # seconds per step
  # Ops run on several threads at once (devices, intra-op work), so their times can
  # add up to more than the wall time; shares are of the summed op time.
  total = sum(per_op.values())
  by_kind, by_group = collections.Counter(), dict.fromkeys(GROUPS, 0.0)
  for name, seconds in per_op.items():
    by_kind[kinds[name]] += seconds
    by_group[op_group(kinds[name])] += seconds
  flops = run.model_flops_per_step(config)
  results = {
      "command": "python -m benchmarks.profile" + "".join(
          f" --{k}={v}" for k, v in (("model", args.model), ("batch", args.batch),
                                     ("devices", args.devices)) if v != parser.get_default(k)),
      "machine": run.machine_info(), "model": args.model, "batch": args.batch,
      "devices": args.devices, "step_s": wall, "op_seconds_per_step": total,
      "gflop_per_step": flops / 1e9, "achieved_gflops": flops / wall / 1e9,
      "ops": [{"name": n, "kind": kinds[n], "seconds": s, "share": s / total}
              for n, s in per_op.most_common(args.top)],
      "kinds": [{"kind": k, "seconds": s, "share": s / total} for k, s in by_kind.most_common()],
      "groups": [{"group": g, "seconds": s, "share": s / total} for g, s in by_group.items()]}
  name = "profile.json" if args.devices == 1 else f"profile_{args.devices}devices.json"
  output = args.output or output_path(name, name)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(results, f, indent=2)
  print(f"{args.model}, batch {args.batch}, {args.devices} device(s): {1e3 * wall:.0f} ms a step "
        f"({results['achieved_gflops']:.0f} GFLOP/s), XLA ops {1e3 * total:.0f} ms summed")
  print("| op group | ms / step | share |\n|---|---|---|")
  for r in results["groups"]:
    print(f"| {r['group']} | {1e3 * r['seconds']:.1f} | {100 * r['share']:.0f}% |")
  print("\n| op kind | ms / step | share |\n|---|---|---|")
  for r in results["kinds"][:12]:
    print(f"| {r['kind']} | {1e3 * r['seconds']:.1f} | {100 * r['share']:.0f}% |")
  print(f"\ntop ops:\n| op | kind | ms / step | share |\n|---|---|---|---|")
  for r in results["ops"]:
    print(f"| {r['name']} | {r['kind']} | {1e3 * r['seconds']:.1f} | {100 * r['share']:.0f}% |")
  print(f"\nwrote {output}")
  return results


if __name__ == "__main__":
  main()
