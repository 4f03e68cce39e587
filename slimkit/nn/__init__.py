"""Module building blocks that slimkit can save, rebuild and compress."""
from slimkit.nn.spec import BUILTINS, ModuleRegistry, serializable, type_name
from slimkit.nn.masked import MaskedConv2d, MaskedLinear, MaskedMixin, prunable_layers, to_masked, to_plain, zero_pruned

__all__ = ["BUILTINS", "ModuleRegistry", "serializable", "type_name", "MaskedConv2d", "MaskedLinear",
           "MaskedMixin", "prunable_layers", "to_masked", "to_plain", "zero_pruned"]
