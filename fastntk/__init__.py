"""fastntk: exact empirical Neural Tangent Kernels of dense MLPs, computed
layer by layer from cached activations and backpropagated signals, never
forming a Jacobian.

>>> import torch, fastntk
>>> net = fastntk.MLP([16, 64, 64, 3], activation="relu", sigma_w=2**0.5)
>>> fastntk.ntk(net, torch.randn(8, 16)).shape
torch.Size([8, 8, 3, 3])
"""

from ._ops import backend, backend_info
from .models import MLP, Activation, DenseLayer, Erf, MirroredMLP, parse_model
from .ntk import Outputs, ntk, ntk_diag
from .scale import KernelRegression, NTKOperator, distributed, eigh, kernel_regression, ntk_operator, ntk_vp
from .training import (LinearizedModel, NTKPrediction, NTKPredictionEnsemble, NTKTracker, linearize, ntk_predict,
                       ntk_predict_ensemble)

__version__ = "0.1.0"

__all__ = [
    "MLP", "MirroredMLP", "Erf", "Activation", "DenseLayer", "Outputs", "parse_model",
    "ntk", "ntk_diag", "backend", "backend_info", "__version__",
    "ntk_vp", "ntk_operator", "NTKOperator", "eigh", "kernel_regression", "KernelRegression", "distributed",
    "NTKTracker", "linearize", "LinearizedModel", "ntk_predict", "NTKPrediction",
    "ntk_predict_ensemble", "NTKPredictionEnsemble",
]
