"""Network models: state layout, initialisation, right-hand side, observables."""

from .activations import ACTIVATIONS, Activation, get_activation
from .two_layer import TwoLayer

__all__ = ["TwoLayer", "ACTIVATIONS", "Activation", "get_activation"]
