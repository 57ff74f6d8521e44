"""`python main.py ARGS` inside the test process, for tests that go through main.py's flags."""

import os
import sys
from unittest import mock

from absl import flags

import main as main_py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args: str, config: str = "tiny.py") -> None:
  """Parses ARGS as main.py would (config_flags reads its overrides from sys.argv) and runs it."""
  argv = ["main.py", f"--config={os.path.join(REPO, 'configs', config)}", *args]
  saved, sys.argv = sys.argv, argv
  try:
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # a previous run's overrides
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    # The backend exists, so main.py's xla_flags.apply leaves XLA_FLAGS alone (it warns); the
    # patch keeps whatever main.py sets from reaching later tests' subprocesses.
    with mock.patch.dict(os.environ):
      main_py.main(["main.py"])
  finally:
    sys.argv = saved
