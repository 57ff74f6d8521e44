"""Bad input gets a short message that names the field, a non-zero exit and no traceback.

Every case runs `python main.py` as a user would (a subprocess, one CPU device, nothing
downloaded); two run at a time.
"""

import concurrent.futures
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/tiny.py"

# (what is wrong, the arguments after `python main.py`, fragments the output must contain)
CASES = [
    ("negative batch size", [TINY, "--config.training.batch_size=-8"],
     ["config.training.batch_size=-8", ">= 1"]),
    ("non-numeric learning rate", [TINY, "--config.training.learning_rate=abc"],
     ["learning_rate", "abc"]),
    ("NaN learning rate", [TINY, "--config.training.learning_rate=nan"],
     ["config.training.learning_rate=nan", "finite"]),
    ("unknown data set", [TINY, "--config.data.dataset=imagenet2"],
     ["config.data.dataset='imagenet2'", "cifar10"]),
    ("unknown beta schedule", [TINY, "--config.diffusion.beta_schedule=sigmoid"],
     ["config.diffusion.beta_schedule='sigmoid'", "'cosine'"]),
    ("unknown mean type", [TINY, "--config.diffusion.mean_type=noise"],
     ["config.diffusion.mean_type='noise'", "'eps'"]),
    ("unknown variance type", [TINY, "--config.diffusion.var_type=learned_small"],
     ["config.diffusion.var_type='learned_small'", "'fixedlarge'"]),
    ("unknown loss type", [TINY, "--config.diffusion.loss_type=l1"],
     ["config.diffusion.loss_type='l1'", "'mse'"]),
    ("unknown sampler", [TINY, "--config.sampling.sampler=plms"],
     ["config.sampling.sampler='plms'", "'ddim'"]),
    ("bad sampler option", [TINY, "--config.sampling.sampler=ddim", "--config.sampling.ddim.eta=-1"],
     ["config.sampling.ddim.eta=-1", ">= 0"]),
    ("misspelt sampler option", [TINY, "--config.sampling.ddim.etaa=0.5"],
     ["etaa", "Did you mean"]),
    ("zero sampling steps", [TINY, "--config.sampling.num_steps=0"],
     ["config.sampling.num_steps=0", ">= 1"]),
    ("seven ch_mult entries for 8 px", [TINY, "--config.model.ch_mult=(1,1,1,1,1,1,1)"],
     ["config.data.image_size=8", "divisible by 64"]),
    ("dropout 1.5", [TINY, "--config.model.dropout=1.5"], ["config.model.dropout=1.5", "[0, 1)"]),
    ("attention where no feature map has that size", [TINY, "--config.model.attn_resolutions=(3,)"],
     ["config.model.attn_resolutions=(3,)", "[8, 4]"]),
    ("image size 7", [TINY, "--config.data.image_size=7"],
     ["config.data.image_size=7", "divisible by 2"]),
    ("negative steps", [TINY, "--config.training.num_train_steps=-5"],
     ["config.training.num_train_steps=-5", ">= 1"]),
    ("unknown mode", [TINY, "--mode=sampel"], ["--mode='sampel'", "'sample'"]),
    ("unknown config file", ["--config=configs/nope.py"], ["configs/nope.py"]),
    ("FID with only half of its files", [TINY, "--config.eval.reference_stats=/nope.npz"],
     ["config.eval.inception_weights", "reference_stats"]),
    ("folder data set without a folder", [TINY, "--config.data.dataset=folder",
                                          "--config.data.data_dir=/nonexistent/images"],
     ["data.data_dir", "/nonexistent/images"]),
    ("CIFAR-10 on a machine without network", ["--config=configs/cifar10.py", "DATA_DIR"],
     ["'cifar10'", "data.data_dir", "tfds build cifar10"]),
]


def _run(args, workdir, data_dir):
  args = [a.replace("DATA_DIR", f"--config.data.data_dir={data_dir}") for a in args]
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={workdir}")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout + proc.stderr


def _problems(returncode, output, fragments, what):
  """What is wrong with one invocation's outcome ([] when it is as it should be)."""
  if returncode == 0:
    return [f"{what}: exit 0\n{output[-1500:]}"]
  if "Traceback" in output:
    return [f"{what}: traceback\n{output[-2500:]}"]
  return [f"{what}: {f!r} not in\n{output[-1500:]}" for f in fragments if f not in output]


@pytest.mark.slow
def test_malformed_invocations_fail_with_a_message_and_no_traceback(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  cases = CASES + [
      ("a file as workdir", [TINY, f"--workdir={a_file}"], ["--workdir=", "is a file"]),
      ("sampling from an empty workdir", [TINY, "--mode=sample"], ["No checkpoint", "train first"]),
  ]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = [pool.submit(_run, args, str(tmp_path / f"w{i}"), str(tmp_path / f"data{i}"))
               for i, (_, args, _) in enumerate(cases)]
    results = [f.result() for f in futures]
  problems = [p for (what, _, fragments), (returncode, output) in zip(cases, results)
              for p in _problems(returncode, output, fragments, what)]
  assert not problems, "\n\n".join(problems)


@pytest.mark.slow
def test_debug_flag_shows_the_traceback(tmp_path):
  returncode, output = _run([TINY, "--config.training.batch_size=-8", "--debug"],
                            str(tmp_path / "w"), str(tmp_path))
  assert returncode != 0 and "Traceback" in output and "ConfigError" in output


def test_a_config_error_returns_before_tensorflow_is_imported(tmp_path):
  """Validation runs before the input pipeline: a bad field costs seconds, not a TF import."""
  args = [TINY, f"--workdir={tmp_path}", "--config.training.batch_size=-8"]
  probe = ("import atexit, runpy, sys\n"
           "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))\n"
           f"sys.argv = ['main.py', *{args!r}]\n"
           "runpy.run_path('main.py', run_name='__main__')\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # DIFFUSION_JAX_MALLOC=system: no re-exec with tcmalloc, which would replace the probe.
  env.update(JAX_PLATFORMS="cpu", DIFFUSION_JAX_MALLOC="system")
  out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2 and "config.training.batch_size=-8" in out.stderr, out.stderr[-2000:]
  assert "tensorflow imported: False" in out.stdout, out.stdout
