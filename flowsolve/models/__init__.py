"""Network models: state layout, initialisation, right-hand side, observables."""

from .activations import ACTIVATIONS, Activation, get_activation
from .three_layer import ThreeLayer
from .two_layer import TwoLayer

__all__ = ["TwoLayer", "ThreeLayer", "ACTIVATIONS", "Activation", "get_activation"]
