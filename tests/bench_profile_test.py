"""bench/profile_step.py: thunk names sort into kinds, HLO names map back to JAX operations, and
the tiny config's profile prints a table whose shares add up (a subprocess: the config's XLA
flags act only in a fresh process)."""

import os
import re
import subprocess
import sys

from bench import profile_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HLO = """
%fused_computation.7 (param_0.1: f32[8,3,3,8], param_1.1: f32[8,8,8,8]) -> f32[8,3,3,8] {
  %param_0.1 = f32[8,3,3,8]{3,2,1,0} parameter(0)
  ROOT %convolution.3 = f32[8,3,3,8]{3,2,1,0} convolution(%param_0.1, %param_1.1), window={size=8x8}
}

%fused_computation.9 (param_0.2: f32[8]) -> f32[8] {
  %param_0.2 = f32[8]{0} parameter(0)
  ROOT %negate.1 = f32[8]{0} negate(%param_0.2), metadata={op_name="jit(f)/UNet/neg"}
}

ENTRY %main (p: f32[8]) -> f32[8] {
  %ynn_fusion.7 = f32[8,3,3,8]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.7
  %negate_fusion = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_computation.9
  ROOT %dot.2 = f32[8]{0} dot(%p, %p), metadata={op_name="jit(f)/UNet/dense/dot_general"}
}
"""


def test_kinds_and_op_names():
  kinds = {name: profile_step.kind_of(name) for name in (
      "ynn_fusion.12", "convolution.3", "conv_general_dilated", "dot.7", "transpose_copy_fusion.2",
      "copy.1183", "wrapped_reduce-window.5", "multiply_reduce_fusion.81", "all-reduce.1",
      "add_divide_fusion.4")}
  assert [kinds[n].split()[0] for n in kinds] == [
      "YNNPACK", "convolution", "convolution", "dot", "transpose", "transpose", "reduction",
      "reduction", "collective", "other"]
  names = profile_step.op_names(_HLO)
  assert names["dot.2"] == "jit(f)/UNet/dense/dot_general"  # its own metadata
  assert names["negate_fusion"] == "jit(f)/UNet/neg"  # from the computation it calls
  assert names["ynn_fusion.7"] == "convolution -> f32[8,3,3,8]"  # no metadata: the root op


def test_tiny_profile_prints_a_table_that_adds_up():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-m", "bench.profile_step", "--config=tiny",
                        "--batch=16", "--steps=2", "--top=3", "--threads=1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600, check=True).stdout
  assert "tiny batch 16, YNNPACK off, threads 1:" in out, out
  rows = dict(re.findall(r"^\| ([^|]+?) +\| ([\d.]+) \| \d+% \|$", out, re.M))
  assert "convolution (Eigen)" in rows and "YNNPACK fusion (conv / dot + elementwise)" not in rows
  total = float(re.search(r"([\d.]+) ms in \d+ thunks", out).group(1))
  assert abs(sum(map(float, rows.values())) - total) < 0.05 * total + 0.2, out
  assert len(re.findall(r"^  +[\d.]+  \S+", out, re.M)) == 3, out  # --top=3 operations
