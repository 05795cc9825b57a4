"""The NTK during training: a tracker for any training loop, the linearized
network, and closed-form NTK predictions.

- :class:`NTKTracker`: records the empirical NTK on a probe set at chosen
  steps (relative change, kernel-target alignment, spectrum, class-block
  structure, per-layer shares), without disturbing training.
- :func:`linearize`: f_lin(x; w) = f(x; w0) + J(x)(w - w0) as a trainable module.
- :func:`ntk_predict`: outputs under gradient flow / gradient descent on the
  squared loss at any times, and their t = inf limit, kernel regression.
- :func:`ntk_predict_ensemble`: the same for many random inits of an MLP at
  once (kernels batched over inits), with the mean and variance over inits.
- :mod:`fastntk.training.kernel_stats`: the statistics as pure functions.
"""

from .kernel_stats import class_block_means, kernel_alignment, relative_change, spectrum
from .ensemble_predict import NTKPredictionEnsemble, ntk_predict_ensemble
from .linearize import LinearizedModel, linearize
from .predict import NTKPrediction, ntk_predict
from .tracker import NTKTracker, log_steps

__all__ = ["NTKTracker", "log_steps", "linearize", "LinearizedModel", "ntk_predict", "NTKPrediction",
           "ntk_predict_ensemble", "NTKPredictionEnsemble",
           "class_block_means", "kernel_alignment", "relative_change", "spectrum"]
