"""The engine's own module types, registered like any plugin's."""
from slimkit import hookimpl
from slimkit.nn.masked import MaskedConv2d, MaskedLinear
from slimkit.nn.quantized import QUANTIZED_MODULES


@hookimpl
def register_modules(register):
    from slimkit.ops.conv import SparseConv2d  # inference-only layers of --sparse-inference
    from slimkit.ops.linear import SparseLinear

    register(MaskedConv2d)
    register(MaskedLinear)
    register(SparseConv2d)
    register(SparseLinear)
    for cls in QUANTIZED_MODULES:  # QuantizedLinear/Conv2d, Int8Linear/Conv2d (quantize, sws, any plugin)
        register(cls)
