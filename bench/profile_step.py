"""Where our train step's CPU time goes: XLA:CPU's per-operation times from a JAX profiler trace.

  python -m bench.profile_step --config=digits --batch=128
  python -m bench.profile_step --config=cifar10 --batch=8 --steps=3
  python -m bench.profile_step --config=digits --batch=128 --xla_cpu_ynnpack=on
  python -m bench.profile_step --config=digits --batch=128 --threads=1   # all work in the spans

Traces --steps calls of the pmapped train step of `bench/train_step.py` (one CPU device, the
config's XLA flags, after a warm-up), sums the duration of every XLA:CPU thunk (a fused loop, a
library call, a copy) over all threads, and prints CPU ms per step by kind of operation, as the
thunk's name tells it, then the --top single operations with the JAX operation they came from
(the compiled HLO's op_name). A thunk's span is the time of the thread that ran it: the tasks
Eigen hands to its other threads and the thread pools' spin-waiting are outside every span, so
the "thunks" total is well below the process CPU time. With --threads=1 (XLA:CPU's PJRT_NPROC)
every operation runs on the calling thread, so the spans hold all of the step's work.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

from bench import common

# (kind, test on the thunk name without its ".N" suffix), first match wins.
KINDS = (
    ("YNNPACK fusion (conv / dot + elementwise)", lambda n: n.startswith("ynn_fusion")),
    ("convolution (Eigen)", lambda n: "conv" in n),
    ("dot (Eigen)", lambda n: n.startswith("dot")),
    ("transpose / copy (layout)", lambda n: "transpose" in n or "copy" in n),
    ("collective (pmean)", lambda n: n == "all-reduce"),
    ("reduction (norm statistics, bias gradients)", lambda n: "reduce" in n),
    ("other elementwise fusion", lambda n: True),
)


def kind_of(name: str) -> str:
  base = re.sub(r"\.\d+$", "", name)
  return next(kind for kind, test in KINDS if test(base))


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> where it came from: its JAX op_name, or else the op_name of the
  last instruction that has one in the computation it calls, or else that computation's root
  (XLA leaves e.g. weight-gradient convolutions without metadata)."""
  names, called, described = {}, {}, {}
  computation = None
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
    if header:
      computation = header.group(1)
      continue
    inst = re.match(r"\s*(ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
    if not inst:
      continue
    op_name = re.search(r'op_name="([^"]+)"', line)
    if op_name:
      names[inst.group(2)] = described[computation] = op_name.group(1)
    elif inst.group(1) and computation not in described:
      described[computation] = f"{inst.group(4)} -> {inst.group(3).split('{')[0]}"
    calls = re.search(r"calls=%([\w.\-]+)", line)
    if calls:
      called[inst.group(2)] = calls.group(1)
  for inst, computation in called.items():
    if inst not in names and computation in described:
      names[inst] = described[computation]
  return names


def thunk_times(trace_dir: str) -> collections.Counter:
  """Total ns per XLA:CPU thunk name over the trace's threads (the Python thread excluded)."""
  import jax  # pylint: disable=g-import-not-at-top
  path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
  plane = next(p for p in jax.profiler.ProfileData.from_file(path).planes
               if p.name == "/host:CPU")
  times = collections.Counter()
  for line in plane.lines:
    if line.name == "python":
      continue
    for event in line.events:  # executor and thread-pool bookkeeping are not operations
      if not re.match(r"(ThunkExecutor|SlinkyThreadPool|end: )", event.name):
        times[event.name] += event.duration_ns
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--xla_cpu_ynnpack", choices=common.YNNPACK_CHOICES, default="config",
                      help="XLA:CPU's YNNPACK fusions as the config sets them, or on / off")
  parser.add_argument("--threads", type=int, default=0,
                      help="XLA:CPU's thread-pool size (PJRT_NPROC); 0: all cores")
  args = parser.parse_args()
  if args.threads:
    os.environ["PJRT_NPROC"] = str(args.threads)  # read when JAX creates its CPU backend

  from bench import peers  # pylint: disable=g-import-not-at-top
  config = peers.config(args.config)
  config.training.batch_size = args.batch
  common.apply_xla_flags(config, args.xla_cpu_ynnpack)
  import jax  # pylint: disable=g-import-not-at-top
  from diffusion_jax import parallel, train  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh(jax.local_devices()[:1])
  _, step_fn, state, host_batch = common.train_setup(config, mesh)
  batch = parallel.shard(host_batch, mesh)
  # One compile: its HLO names the operations, and it is the executable that is traced.
  p_step = train.pmap_train_step(step_fn, mesh).lower(state, batch).compile()
  names = op_names(p_step.as_text())
  for _ in range(3):
    state, _ = p_step(state, batch)
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
      state, _ = p_step(state, batch)
    jax.block_until_ready(state)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    jax.profiler.stop_trace()
    times = thunk_times(trace_dir)

  per_step = lambda ns: ns / 1e6 / args.steps
  total = sum(times.values())
  by_kind = collections.Counter()
  for name, ns in times.items():
    by_kind[kind_of(name)] += ns
  print(f"{args.config} batch {args.batch}, YNNPACK {'on' if config.xla_cpu_ynnpack else 'off'}, "
        f"threads {args.threads or 'all'}: "
        f"{wall / args.steps * 1e3:.1f} ms wall, {cpu / args.steps * 1e3:.1f} ms process CPU per "
        f"step (traced), {per_step(total):.1f} ms in {len(times)} thunks, all threads\n")
  print(f"| {'kind of operation':44} | CPU ms / step | share |")
  print(f"|{'-' * 46}|---:|---:|")
  for kind, ns in by_kind.most_common():
    print(f"| {kind:44} | {per_step(ns):.1f} | {100 * ns / total:.0f}% |")
  print(f"\ntop {args.top} operations (CPU ms / step, thunk, from):")
  for name, ns in times.most_common(args.top):
    print(f"  {per_step(ns):7.2f}  {name:28} {names.get(name, '')[:90]}")


if __name__ == "__main__":
  main()
