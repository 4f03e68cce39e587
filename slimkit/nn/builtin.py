"""The engine's own module types, registered like any plugin's."""
from slimkit import hookimpl
from slimkit.nn.masked import MaskedConv2d, MaskedLinear


@hookimpl
def register_modules(register):
    register(MaskedConv2d)
    register(MaskedLinear)
