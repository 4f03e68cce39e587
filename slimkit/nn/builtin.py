"""The engine's own module types, registered like any plugin's."""
from slimkit import hookimpl
from slimkit.nn.lowrank import LOWRANK_MODULES
from slimkit.nn.masked import MaskedConv2d, MaskedLinear
from slimkit.nn.quantized import QUANTIZED_MODULES
from slimkit.nn.sparse import SPARSE_MODULES


@hookimpl
def register_modules(register):
    register(MaskedConv2d)
    register(MaskedLinear)
    for cls in SPARSE_MODULES:  # SparseConv2d, SparseLinear: the inference-only layers of --sparse-inference
        register(cls)
    for cls in QUANTIZED_MODULES:  # QuantizedLinear/Conv2d, Int8Linear/Conv2d (quantize, sws, any plugin)
        register(cls)
    for cls in LOWRANK_MODULES:  # LowRankConv2d/Linear (lowrank, any plugin)
        register(cls)
