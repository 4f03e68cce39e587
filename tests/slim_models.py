"""Models for the .slim tests: one small model that uses every codec."""
import torch
import torch.nn as nn

from slimkit import storage
from slimkit.nn import Int8Linear, MaskedLinear, QuantizedLinear
from slimkit_plugins import quantize as qz


def every_codec_model():
    """csr with codebook indices and Huffman-coded streams, codebook indices packed without
    Huffman, int8 with a mask, the 1-bit ``masked`` codec, csr with fp32 values, dense."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), QuantizedLinear(36, 24, num_codes=16, index_bits=4, pos_bits=3),
                          nn.ReLU(), QuantizedLinear(24, 16, num_codes=8, huffman=False), nn.ReLU(),
                          Int8Linear(16, 12), nn.ReLU(), MaskedLinear(12, 8), MaskedLinear(8, 4))
    for layer, sparsity in ((model[1], 0.8), (model[3], 0.0)):
        k = layer.weight_codebook.numel()
        layer.set_codes(torch.sort(torch.randn(k)).values, torch.randint(0, k, layer.weight.shape),
                        torch.rand(layer.weight.shape) >= sparsity)
    mask = (torch.rand(12, 16) > 0.3).float()
    q, scale = qz.int8_quantize(model[5].weight, mask)
    with torch.no_grad():
        model[5].weight_scale.copy_(scale)
        model[5].weight.copy_(storage.int8_dequantize(q, scale))
        model[5].weight_mask.copy_(mask)
    model[7].set_mask((torch.rand(8, 12) > 0.6).float())
    model[7].slimkit_storage = {"codec": "csr", "pos_bits": 2}
    model[8].set_mask((torch.rand(4, 8) > 0.5).float())
    return model
