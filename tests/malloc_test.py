"""diffusion_jax.malloc: main.py's re-run with tcmalloc preloaded, and its opt-out.

Runs child processes; the re-run cases need tcmalloc installed (.ci/run installs it where apt
can) and are skipped without it.
"""

import os
import subprocess
import sys

import pytest

from diffusion_jax import malloc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The child calls reexec_with_tcmalloc on its own command line, then reports what it runs with.
CHILD = """
import os, sys
from diffusion_jax import malloc
malloc.reexec_with_tcmalloc(sys.argv)
print("loaded:", malloc.loaded(), "| pid:", os.getpid(), "|", malloc.describe())
"""


def _run(env_extra: dict, script: str) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", malloc.OPT_OUT)}
  env.update(env_extra, PYTHONPATH=REPO)  # the child script lies outside the repository
  return subprocess.run([sys.executable, script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120, check=True).stdout


@pytest.fixture
def child(tmp_path):
  path = tmp_path / "child.py"
  path.write_text(CHILD)
  return str(path)


@pytest.mark.skipif(malloc.find_tcmalloc() is None, reason="tcmalloc is not installed")
def test_reruns_itself_with_tcmalloc_once(child):
  out = _run({}, child)
  assert "loaded: /" in out and "tcmalloc" in out.split("|")[0]  # the re-run process has it
  assert out.count("loaded:") == 1  # the first process was replaced, not forked
  assert "malloc: tcmalloc" in out


def test_opt_out_keeps_the_system_malloc(child):
  out = _run({malloc.OPT_OUT: "system"}, child)
  assert "loaded: None" in out and "DIFFUSION_JAX_MALLOC=system" in out


@pytest.fixture
def fake_exec(monkeypatch):
  """An installed but not loaded "libfake.so"; execve records its arguments instead."""
  calls = []
  monkeypatch.setattr(malloc, "find_tcmalloc", lambda: "libfake.so")
  monkeypatch.setattr(malloc, "loaded", lambda: None)
  monkeypatch.setattr(malloc.os, "execve", lambda *args: calls.append(args))
  monkeypatch.delenv(malloc.OPT_OUT, raising=False)
  return calls


def test_the_exec_prepends_the_library_and_keeps_the_arguments(fake_exec, monkeypatch):
  monkeypatch.setenv("LD_PRELOAD", "libother.so")
  malloc.reexec_with_tcmalloc(["main.py", "--config=configs/tiny.py"])
  (executable, argv, env), = fake_exec
  assert executable == sys.executable and argv == [sys.executable, "main.py",
                                                   "--config=configs/tiny.py"]
  assert env["LD_PRELOAD"] == "libfake.so:libother.so"


def test_a_preload_that_failed_is_not_retried(fake_exec, monkeypatch):
  """LD_PRELOAD names the library but it is not mapped (it failed to load): no exec loop."""
  monkeypatch.setenv("LD_PRELOAD", "libfake.so")
  malloc.reexec_with_tcmalloc(["main.py"])
  monkeypatch.setenv(malloc.OPT_OUT, "system")
  monkeypatch.delenv("LD_PRELOAD")
  malloc.reexec_with_tcmalloc(["main.py"])
  assert not fake_exec
