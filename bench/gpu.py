"""Accelerator throughput of one config: train steps/s, 20-NFE sampling, compile time, memory, MFU.

  python -m bench.gpu                                # configs/cifar10.py; budgeted to 8 min (--budget_s)
  python -m bench.gpu --skip_bf16 --n_jitted_steps=1 # float32 only, no multi-step row
  python -m bench.gpu --train_dtypes=bfloat16 --sample_dtypes= --batch=256   # one row
  python -m bench.gpu --config=tiny --batch=16 --steps=2 --windows=2 --sample_batch=16  # CPU smoke
  python -m bench.gpu --config=celebahq --batch=16 --remat --sample_dtypes=  # 256 px, remat

Rows (each in its own subprocess, so its peak device memory is its own; persistent compilation
cache off, so compile times are real):
  train  --train_dtypes (float32, bfloat16) at --batch: the trainer's pmapped step
         (`train.make_train_step`, `train.pmap_train_step` over `parallel.make_mesh()`, state
         from `experiment.init_train_state`) on one fixed in-memory batch (no input pipeline);
         bfloat16 is `config.model.dtype`: compute in bf16, parameters, Adam moments and EMA in
         float32. One more row runs --n_jitted_steps steps per dispatch (`train.make_multi_step`).
         --remat sets `config.model.remat` (residual blocks recomputed in the backward pass).
  sample --sample_dtypes (bfloat16, float32): DPM-Solver++(2M) at --nfe model evaluations
         (`inference.make_sampler`, the path of --mode=sample) at --sample_batch, timed to the
         images on the host; the 50k projection is 50,000 / (samples/s).
Each row warms up, times --windows windows and keeps the fastest. compile s: of the train step,
trace + lower + XLA compile (`.lower().compile()`, autotuning included); of the sampler, its
first call minus a steady-state call. Peak memory is the device's `peak_bytes_in_use` (None
where the platform has no memory stats, e.g. CPU); "XLA temp" is the compiled step's temporary
buffer as XLA planned it (`memory_analysis()`: activations, gradients, optimizer temporaries).

FLOPs and MFU. The model's forward FLOPs per image are XLA's cost analysis of the lowered
(unoptimized) forward at batch 1: 2 FLOPs per multiply-add of every convolution and matmul,
taps on the zero padding not counted, plus the elementwise ops (11.67 GFLOP for configs/cifar10.py
on XLA:CPU; counting the padding taps too gives 12.44). Training counts 3x the forward per image (forward,
and a backward of twice its cost); sampling 1 forward per image per NFE.
MFU = achieved model FLOP/s / (peak FLOP/s per chip x chips). "MFU (XLA)" uses XLA's cost analysis
of the whole train step instead (its real backward, loss, Adam, EMA). The peaks are dense (no
sparsity) figures of NVIDIA's H100 / H200 datasheets, whose tensor-core headline numbers assume
2:4 sparsity and are halved here. float32 rows are held against the TF32 tensor-core peak, since
under JAX's default matmul precision float32 convolutions and matmuls run in TF32 on Hopper
(against the CUDA-core FP32 peak when jax_default_matmul_precision is float32/highest). Unknown
devices (CPU) have no peak, so MFU is None unless --peak_tflops is given.

Writes --out (JSON: hardware, settings, rows, skipped and failed rows) after every row, so a run cut
short keeps what it measured, and prints markdown tables. Rows that would start past --budget_s
are skipped, in the order train float32, train bf16, sample bf16, sample float32, multi-step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
from typing import Optional

from bench import common

SAMPLER = "dpm_solver++"  # order 2, multistep: DPM-Solver++(2M)
PROJECTED_SAMPLES = 50_000
GIB = 2.0 ** 30

# Dense peak TFLOP/s per chip by `device_kind` substring, first match wins: NVIDIA H100 datasheet
# (SXM5, PCIe, NVL) and H200 datasheet (SXM, NVL), sparsity figures halved. GH200 has the H100 SXM
# compute.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
)


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="cifar10", help="a name in configs/ (cifar10, tiny ...)")
  parser.add_argument("--batch", type=int, default=128, help="GLOBAL train batch")
  parser.add_argument("--steps", type=int, default=40, help="train steps per timed window")
  parser.add_argument("--windows", type=int, default=3, help="timed windows per row")
  parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first")
  parser.add_argument("--n_jitted_steps", type=int, default=4,
                      help="steps per dispatch of the multi-step row; 1 or 0 = no such row")
  parser.add_argument("--sample_batch", type=int, default=1000, help="GLOBAL sampling batch")
  parser.add_argument("--nfe", type=int, default=20, help="DPM-Solver++(2M) model evaluations")
  parser.add_argument("--train_dtypes", default="float32,bfloat16",
                      help="train rows (model.dtype), comma-separated; empty = none")
  parser.add_argument("--sample_dtypes", default="bfloat16,float32",
                      help="sampling rows, comma-separated; empty = none")
  parser.add_argument("--skip_bf16", action="store_true", help="float32 rows only")
  parser.add_argument("--remat", action="store_true",
                      help="train rows with config.model.remat (recompute residual blocks)")
  parser.add_argument("--peak_tflops", default="",
                      help="peak TFLOP/s per chip: one number for every row, or "
                           "float32=X,bfloat16=Y; empty = the datasheet table by device kind")
  parser.add_argument("--budget_s", type=float, default=450.0,
                      help="no row starts after this many seconds; a running row is cut there")
  parser.add_argument("--out", default="bench_gpu.json")
  parser.add_argument("--worker", choices=["train", "sample"], default=None, help=argparse.SUPPRESS)
  parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
  parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


# ---------------------------------------------------------------- worker side (imports jax)


def _config(args: argparse.Namespace):
  from bench import peers
  config = peers.config(args.config)
  config.model.dtype = args.dtype
  config.model.remat = args.remat
  config.training.batch_size = args.batch
  config.sampling.sampler = SAMPLER
  config.sampling.num_steps = args.nfe
  config.sampling.batch_size = args.sample_batch
  config.sampling.dpm_solver.order = 2
  config.sampling.dpm_solver.method = "multistep"
  return config


def _hardware() -> dict:
  import flax
  import jax
  import jaxlib
  return {"device_kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "default_matmul_precision": jax.config.jax_default_matmul_precision}


def _flops(lowered) -> Optional[float]:
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
  return float(cost["flops"]) if cost and "flops" in cost else None


def _forward_flop(config, model) -> Optional[float]:
  """XLA's FLOPs of one image's forward pass (lowered, not compiled)."""
  import jax
  import jax.numpy as jnp
  from diffusion_jax import experiment
  size, ch = config.data.image_size, config.data.num_channels
  params = jax.eval_shape(lambda: experiment.init_params(config, model))
  x = jax.ShapeDtypeStruct((1, size, size, ch), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if config.model.num_classes else None
  return _flops(jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y, train=False))
                .lower(params, x, t, y))


def _peak_bytes() -> Optional[int]:
  import jax
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _time_calls(call, sync, calls: int, windows: int) -> list[float]:
  """Wall seconds of each of `windows` windows of `calls` calls."""
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(calls):
      out = call()
    sync(out)
    times.append(time.perf_counter() - start)
  return times


def _first_and_warm(call, sync, warmup: int) -> float:
  start = time.perf_counter()
  sync(call())
  first = time.perf_counter() - start
  for _ in range(warmup):
    sync(call())
  return first


def _train_row(args: argparse.Namespace) -> dict:
  import jax
  import numpy as np
  from diffusion_jax import config_validation, parallel, train

  config = _config(args)
  config_validation.validate_config(config, num_devices=jax.device_count())
  mesh = parallel.make_mesh()
  model, step_fn, state, host = common.train_setup(config, mesh)
  one_batch = parallel.shard(host, mesh)
  k = args.k
  batch = parallel.shard(train.stack_batches([host] * k), mesh) if k > 1 else one_batch
  start = time.perf_counter()
  lowered = train.pmap_train_step(train.make_multi_step(step_fn, k), mesh).lower(state, batch)
  lower_s = time.perf_counter() - start
  p_step = lowered.compile()
  compile_s = time.perf_counter() - start
  # A scan's body may count once in XLA's cost analysis: take the FLOPs of the single step.
  step_lowered = lowered if k == 1 else train.pmap_train_step(step_fn, mesh).lower(state,
                                                                                   one_batch)
  holder = {"state": state}

  def call():
    holder["state"], metrics = p_step(holder["state"], batch)
    return metrics

  first = _first_and_warm(call, jax.block_until_ready, args.warmup)
  calls = max(1, args.steps // k)
  times = _time_calls(call, jax.block_until_ready, calls, args.windows)
  metrics = call()
  best = min(times)
  trees = {"params": holder["state"].params, "ema_params": holder["state"].ema_params}
  return {"kind": "train", "dtype": args.dtype, "n_jitted_steps": k, "batch": args.batch,
          "remat": args.remat, "xla_temp_bytes": p_step.memory_analysis().temp_size_in_bytes,
          "steps_per_s": calls * k / best, "images_per_s": calls * k * args.batch / best,
          "compile_s": compile_s, "lower_s": lower_s, "first_call_s": first,
          "window_s": times, "steps_per_window": calls * k,
          "peak_bytes": _peak_bytes(), "forward_flop": _forward_flop(config, model),
          "xla_step_flop_per_device": _flops(step_lowered),
          "loss": float(np.asarray(metrics["loss"]).reshape(-1)[-1]),
          "param_dtypes": {name: sorted({str(x.dtype) for x in jax.tree.leaves(tree)})
                           for name, tree in trees.items()}}


def _sample_row(args: argparse.Namespace) -> dict:
  import jax
  import numpy as np
  from diffusion_jax import config_validation, experiment, inference, parallel

  config = _config(args)
  config_validation.validate_config(config, num_devices=jax.device_count())
  mesh = parallel.make_mesh()
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  params = parallel.replicate(jax.device_get(experiment.init_params(config, model)), mesh)
  sampler = inference.make_sampler(config, model, diffusion_, mesh, args.sample_batch)
  key = jax.random.PRNGKey(0)
  holder = {}

  def call():
    holder["images"] = sampler(params, key)[0]  # numpy on the host: already synchronized
    return holder["images"]

  first = _first_and_warm(call, lambda _: None, min(args.warmup, 1))
  times = _time_calls(call, lambda _: None, 1, args.windows)
  best = min(times)
  return {"kind": "sample", "dtype": args.dtype, "sampler": f"{SAMPLER} (2M)", "nfe": args.nfe,
          "batch": args.sample_batch, "samples_per_s": args.sample_batch / best,
          "projected_s_50k": PROJECTED_SAMPLES * best / args.sample_batch,
          "compile_s": first - best, "first_call_s": first, "window_s": times,
          "peak_bytes": _peak_bytes(), "forward_flop": _forward_flop(config, model),
          "finite": bool(np.isfinite(holder["images"]).all())}


def _worker(args: argparse.Namespace) -> None:
  import jax
  jax.config.update("jax_enable_compilation_cache", False)  # compile times must be real
  row = _train_row(args) if args.worker == "train" else _sample_row(args)
  row["hardware"] = _hardware()
  common.emit_result(row)


# ---------------------------------------------------------------- driver side (no jax)


def _plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
  """(worker, dtype, steps per dispatch) in priority order."""
  skip = {"bfloat16"} if args.skip_bf16 else set()
  dtypes = lambda text: [d for d in text.split(",") if d and d not in skip]
  train = dtypes(args.train_dtypes)
  rows = [("train", d, 1) for d in train] + [("sample", d, 1) for d in dtypes(args.sample_dtypes)]
  if args.n_jitted_steps > 1 and train:
    rows.append(("train", "bfloat16" if "bfloat16" in train else train[0], args.n_jitted_steps))
  return rows


def _spawn(args: argparse.Namespace, worker: str, dtype: str, k: int, timeout: float) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
  return common.run_worker(
      ["-m", "bench.gpu", f"--worker={worker}", f"--dtype={dtype}", f"--k={k}",
       f"--config={args.config}", f"--batch={args.batch}", f"--steps={args.steps}",
       f"--windows={args.windows}", f"--warmup={args.warmup}",
       f"--sample_batch={args.sample_batch}", f"--nfe={args.nfe}",
       *(["--remat"] if args.remat else [])], env,
      what=f"{worker} worker", timeout=timeout)


def _parse_peak(text: str) -> dict[str, float]:
  """'500' -> every dtype; 'float32=495,bfloat16=989' -> per dtype."""
  if not text:
    return {}
  if "=" not in text:
    return {"float32": float(text), "bfloat16": float(text)}
  return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}


def peak_tflops(device_kind: str, dtype: str, precision: Optional[str],
                override: dict[str, float]) -> tuple[Optional[float], str]:
  """Peak dense TFLOP/s of one chip for a row's dtype, and where the number comes from."""
  if dtype in override:
    return override[dtype], "--peak_tflops"
  if dtype == "bfloat16":
    unit = "bf16"
  else:
    unit = "fp32" if str(precision).lower() in ("float32", "highest", "f32_f32_f32") else "tf32"
  for pattern, peaks in PEAK_TFLOPS:
    if pattern in device_kind:
      return peaks[unit], f"{unit} dense, NVIDIA datasheet ({pattern})"
  return None, f"unknown for {device_kind!r}"


def _times(*xs: Optional[float]) -> Optional[float]:
  """The product, or None if any factor is None."""
  return None if any(x is None for x in xs) else math.prod(xs)


def _add_mfu(row: dict, hardware: dict, override: dict[str, float]) -> None:
  """Adds achieved TFLOP/s (model: 3x forward per trained image, 1x per sample and NFE; XLA:
  the whole compiled step) and their MFU against the peak of all chips."""
  peak, source = peak_tflops(hardware["device_kind"], row["dtype"],
                             hardware["default_matmul_precision"], override)
  chips = hardware["device_count"]
  total = _times(peak, chips)
  inverse = None if total is None else 1.0 / total
  if row["kind"] == "train":
    row["model_tflops"] = _times(3e-12, row["forward_flop"], row["images_per_s"])
    row["xla_tflops"] = _times(1e-12, row["xla_step_flop_per_device"], chips, row["steps_per_s"])
    row["mfu_xla"] = _times(row["xla_tflops"], inverse)
  else:
    row["model_tflops"] = _times(1e-12, row["forward_flop"], row["nfe"], row["samples_per_s"])
  row["peak_tflops_per_chip"], row["peak_source"] = peak, source
  row["mfu"] = _times(row["model_tflops"], inverse)


def _fmt(x, spec: str = ".2f") -> str:
  return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _gib(row: dict) -> Optional[float]:
  return None if row["peak_bytes"] is None else row["peak_bytes"] / GIB


# (header, cell) of the two tables.
TRAIN_COLUMNS = (
    ("train", lambda r: "step"), ("dtype", lambda r: r["dtype"]),
    ("k", lambda r: str(r["n_jitted_steps"])), ("batch", lambda r: str(r["batch"])),
    ("remat", lambda r: "yes" if r["remat"] else "no"),
    ("steps/s", lambda r: _fmt(r["steps_per_s"])),
    ("img/s", lambda r: _fmt(r["images_per_s"], ".1f")),
    ("compile s", lambda r: _fmt(r["compile_s"], ".1f")), ("peak GiB", lambda r: _fmt(_gib(r))),
    ("XLA temp GiB", lambda r: _fmt(r["xla_temp_bytes"] / GIB)),
    ("model TFLOP/s", lambda r: _fmt(r["model_tflops"], ".3f")),
    ("MFU", lambda r: _fmt(r["mfu"], ".3f")), ("MFU (XLA)", lambda r: _fmt(r["mfu_xla"], ".3f")))
SAMPLE_COLUMNS = (
    ("sample", lambda r: r["sampler"]), ("dtype", lambda r: r["dtype"]),
    ("NFE", lambda r: str(r["nfe"])), ("batch", lambda r: str(r["batch"])),
    ("samples/s", lambda r: _fmt(r["samples_per_s"], ".1f")),
    ("s per 50k", lambda r: _fmt(r["projected_s_50k"], ".1f")),
    ("compile s", lambda r: _fmt(r["compile_s"], ".1f")), ("peak GiB", lambda r: _fmt(_gib(r))),
    ("model TFLOP/s", lambda r: _fmt(r["model_tflops"], ".3f")),
    ("MFU", lambda r: _fmt(r["mfu"], ".3f")))


def _markdown(columns, rows: list[dict]) -> list[str]:
  if not rows:
    return []
  lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
  return lines + [""]


def tables(results: dict) -> str:
  """The markdown tables of a results dict, with a header and a footer line."""
  hw = results["hardware"] or {}
  lines = [f"{hw.get('device_kind', '?')} x{hw.get('device_count', '?')}, "
           f"jax {hw.get('jax', '?')}, config {results['settings']['config']}", ""]
  for kind, columns in (("train", TRAIN_COLUMNS), ("sample", SAMPLE_COLUMNS)):
    lines += _markdown(columns, [r for r in results["rows"] if r["kind"] == kind])
  fwd = next((r["forward_flop"] for r in results["rows"] if r["forward_flop"]), None)
  lines.append(f"forward {_fmt(None if fwd is None else fwd / 1e9, '.3f')} GFLOP/image (XLA cost "
               "analysis); train = 3x forward; MFU against "
               f"{', '.join(sorted({r['peak_source'] for r in results['rows']})) or 'n/a'}")
  for item in results["skipped"] + results["failed"]:
    lines.append(f"not measured: {item['row']}: {item['why'].strip().splitlines()[-1]}")
  return "\n".join(lines)


def _write(results: dict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(results, f, indent=1)


def main(argv: Optional[list[str]] = None) -> Optional[dict]:
  """Runs every row (or, with --worker, one row) and returns the results written to --out."""
  args = _parse(argv)
  if args.worker:
    _worker(args)
    return None
  override = _parse_peak(args.peak_tflops)
  settings = {k: v for k, v in vars(args).items() if k not in ("worker", "dtype", "k")}
  results = {"hardware": None, "settings": settings, "rows": [], "skipped": [], "failed": []}
  start = time.perf_counter()
  for worker, dtype, k in _plan(args):
    name = f"{worker} {dtype} k={k}" if worker == "train" else f"{worker} {dtype}"
    left = args.budget_s - (time.perf_counter() - start)
    if left <= 0:
      results["skipped"].append({"row": name, "why": f"past --budget_s={args.budget_s:g}"})
      continue
    try:
      row = _spawn(args, worker, dtype, k, timeout=left)
      results["hardware"] = row.pop("hardware")
      _add_mfu(row, results["hardware"], override)
      results["rows"].append(row)
      status = "done"
    except subprocess.TimeoutExpired:
      results["failed"].append({"row": name, "why": f"cut at --budget_s={args.budget_s:g}"})
      status = "cut"
    except RuntimeError as e:
      results["failed"].append({"row": name, "why": str(e)})
      status = "FAILED"
    _write(results, args.out)
    print(f"  {name}: {status} at {time.perf_counter() - start:.0f} s", flush=True)
  results["total_s"] = time.perf_counter() - start
  _write(results, args.out)
  print("\n" + tables(results))
  return results


if __name__ == "__main__":
  main()
