"""The engine's own module types, registered like any plugin's."""
from slimkit import hookimpl
from slimkit.nn.masked import MaskedConv2d, MaskedLinear


@hookimpl
def register_modules(register):
    from slimkit.ops.conv import SparseConv2d  # inference-only layer of --sparse-inference

    register(MaskedConv2d)
    register(MaskedLinear)
    register(SparseConv2d)
