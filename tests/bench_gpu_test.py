"""bench/gpu.py end to end on CPU: the tiny config, tiny sizes, every field of its JSON.

Two rows, bfloat16 training and float32 sampling, in subprocesses on one CPU device (the script's
target is one GPU; the 8 fake devices of conftest would only slow the compiles down). The float32
and multi-step train rows are left to the smoke command in the script's docstring: each more row
adds ~20 s of compilation on 2 shared cores.
"""

import json
import math
import os

from bench import gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _in_unit(x):
  return x is not None and math.isfinite(x) and 0 < x <= 1


def test_tiny_cpu_run_writes_every_field(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv("XLA_FLAGS", "")
  out = tmp_path / "bench_gpu.json"
  results = gpu.main(["--config=tiny", "--batch=16", "--steps=2", "--windows=1", "--warmup=1",
                      "--train_dtypes=bfloat16", "--sample_batch=16", "--nfe=4",
                      "--sample_dtypes=float32", "--n_jitted_steps=1", "--peak_tflops=10",
                      f"--out={out}"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))
  assert results["failed"] == [] and results["skipped"] == [] and results["total_s"] > 0
  hw = results["hardware"]
  assert hw["platform"] == "cpu" and hw["device_count"] == 1 and hw["jax"] and hw["device_kind"]
  assert [(r["kind"], r["dtype"]) for r in results["rows"]] == [("train", "bfloat16"),
                                                               ("sample", "float32")]
  train, sample = results["rows"]

  for field in ("steps_per_s", "images_per_s", "compile_s", "lower_s", "first_call_s",
                "forward_flop", "xla_step_flop_per_device", "model_tflops", "xla_tflops",
                "xla_temp_bytes"):
    assert _positive(train[field]), (field, train[field])
  assert math.isclose(train["images_per_s"], 16 * train["steps_per_s"])
  assert train["n_jitted_steps"] == 1 and train["batch"] == 16 and math.isfinite(train["loss"])
  assert train["remat"] is False
  assert train["peak_bytes"] is None  # no memory stats on CPU
  # Mixed precision keeps float32 master weights (and EMA).
  assert train["param_dtypes"] == {"params": ["float32"], "ema_params": ["float32"]}
  # XLA's whole step is about 3 forwards per image (backward ~2x forward) plus Adam and EMA.
  per_image = train["xla_step_flop_per_device"] / 16 / train["forward_flop"]
  assert 2.5 < per_image < 4.0, per_image
  assert train["peak_source"] == "--peak_tflops" and train["peak_tflops_per_chip"] == 10
  assert _in_unit(train["mfu"]) and _in_unit(train["mfu_xla"])

  for field in ("samples_per_s", "projected_s_50k", "compile_s", "forward_flop", "model_tflops"):
    assert _positive(sample[field]), (field, sample[field])
  assert math.isclose(sample["projected_s_50k"], 50_000 / sample["samples_per_s"])
  assert sample["nfe"] == 4 and sample["batch"] == 16 and sample["finite"]
  assert _in_unit(sample["mfu"])

  table = gpu.tables(results)
  assert "| step | bfloat16 | 1 | 16 | no |" in table
  assert "| dpm_solver++ (2M) | float32 | 4 | 16 |" in table


def test_peaks_by_device_kind():
  h100 = gpu.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16", None, {})
  assert h100[0] == 989.4
  # float32 runs in TF32 at JAX's default precision, on CUDA cores at "highest".
  assert gpu.peak_tflops("NVIDIA H200", "float32", None, {})[0] == 494.7
  assert gpu.peak_tflops("NVIDIA H200", "float32", "highest", {})[0] == 66.9
  assert gpu.peak_tflops("NVIDIA H100 PCIe", "bfloat16", None, {})[0] == 756.0
  assert gpu.peak_tflops("cpu", "float32", None, {})[0] is None  # so MFU is None on a CPU
  assert gpu.peak_tflops("cpu", "bfloat16", None, {"bfloat16": 5.0}) == (5.0, "--peak_tflops")
