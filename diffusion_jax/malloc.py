"""tcmalloc for `main.py`: XLA:CPU's per-step buffers without a page fault per 4 KB.

XLA:CPU allocates the temporary buffer of every execution with malloc and frees it when the
execution ends: 82 MB per train step of the digits model at batch 128, about 640 MB for the
CIFAR-10 model at batch 8. glibc's malloc serves blocks that large with mmap and returns them
with munmap, so each step faults its buffer's pages in afresh (20,000 minor faults and ~35 ms of
kernel time per digits step on 2 cores). tcmalloc keeps freed memory for the next request.
Measured on the same machine, tcmalloc made the digits train step at batch 128 about 20% faster
(10.48 against 8.70 steps/s; torch's gained as much), `python -m bench.train_step --configs=digits
--batch=128 --malloc=tcmalloc` against `--malloc=system` (README).

An allocator can only be swapped when a process starts (LD_PRELOAD), so `main.py` replaces
itself (`os.execve`, same PID and arguments) with a copy that preloads tcmalloc, when the library
is installed (Debian / Ubuntu: `apt install libtcmalloc-minimal4`) and not yet loaded.
DIFFUSION_JAX_MALLOC=system keeps glibc's allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Optional, Sequence

OPT_OUT = "DIFFUSION_JAX_MALLOC"


def find_tcmalloc() -> Optional[str]:
  """The installed tcmalloc's library name (e.g. "libtcmalloc_minimal.so.4"), or None."""
  for name in ("tcmalloc_minimal", "tcmalloc"):
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def loaded() -> Optional[str]:
  """The tcmalloc library mapped into this process, or None (Linux only: /proc/self/maps)."""
  try:
    with open("/proc/self/maps") as f:
      names = {line.split()[-1] for line in f if "tcmalloc" in line}
  except OSError:
    return None
  return min(names, default=None)


def reexec_with_tcmalloc(argv: Sequence[str]) -> None:
  """Replaces this process by `python argv...` with tcmalloc preloaded; returns (doing
  nothing) when tcmalloc is loaded already, is not installed, was preloaded and failed to load,
  or DIFFUSION_JAX_MALLOC=system."""
  if os.environ.get(OPT_OUT) == "system" or loaded() or not sys.platform.startswith("linux"):
    return
  library = find_tcmalloc()
  preload = os.environ.get("LD_PRELOAD", "")
  if library is None or library in preload.split(":"):
    return
  env = dict(os.environ, LD_PRELOAD=":".join(p for p in (library, preload) if p))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv], env)


def describe() -> str:
  """One line for the log: which allocator this process uses, and how to get tcmalloc."""
  library = loaded()
  if library:
    return f"malloc: tcmalloc ({library})"
  if os.environ.get(OPT_OUT) == "system":
    return f"malloc: the system's ({OPT_OUT}=system)"
  return ("malloc: the system's; installing tcmalloc (apt install libtcmalloc-minimal4) makes "
          "CPU training faster (diffusion_jax/malloc.py)")
