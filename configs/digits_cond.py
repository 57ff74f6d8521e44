"""Class-conditional DDPM on the 8x8 digits with label dropout: one model for conditional,
unconditional and classifier-free guided sampling (the CPU demo of guidance).

  python main.py --config=configs/digits_cond.py --workdir=/tmp/digits_cond
  python main.py --config=configs/digits_cond.py --workdir=/tmp/digits_cond --mode=sample \\
      --config.sampling.guidance.kind=classifier_free --config.sampling.guidance.grid_scales="(0.,1.,2.,4.)"

configs/digits.py's U-Net and training with 10 classes (a learned class embedding added to the
time embedding, as in ADM) and label dropout 0.1: a label is replaced by the null label 10 with
probability 0.1, so `sampling.guidance.kind=classifier_free` works on the same checkpoint. The
noisy classifier for classifier guidance on this model is trained by configs/digits_classifier.py
into the same workdir. Expect the files of configs/digits.py's run in the workdir and digits of
the requested classes in samples/<step>/ (measured accuracies and Frechet distances per
guidance scale: README, "Guidance on the digits").
"""

from configs import digits


def get_config():
  """Returns the class-conditional digits configuration."""
  config = digits.get_config()
  config.model.num_classes = 10
  config.training.label_dropout = 0.1
  config.sampling.guidance.classes = tuple(range(10))
  return config
