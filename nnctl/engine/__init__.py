"""nnctl's pure-NumPy engine: layers, activations, initializers, losses, optimizers, the model.

Importing the package imports every module that registers components, so the registries
(LAYERS, ACTIVATIONS, INITIALIZERS, LOSSES, ...) are complete for anyone who imports
`nnctl.engine` or any of its modules. The engine never prints and never imports yaml,
typer or rich.
"""
from nnctl.engine import activations, gradcheck, initializers, layers, losses  # noqa: F401  (registration)
from nnctl.engine import attention, conv, generative, optimizers, recurrent, schedules  # noqa: F401  (registration)
from nnctl.engine.activations import ACTIVATIONS
from nnctl.engine.base import LAYERS, Layer
from nnctl.engine.initializers import INITIALIZERS
from nnctl.engine.losses import LOSSES
from nnctl.engine.model import Sequential, build_layer

__all__ = ["ACTIVATIONS", "INITIALIZERS", "LAYERS", "LOSSES", "Layer", "Sequential", "build_layer"]
