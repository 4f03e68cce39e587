"""The ``.slim`` format: save a model, read its header, load it back (re-exports).

One job per module:

* :mod:`~slimkit.storage.container`: the file itself: save (atomically), read the
  header, load with every check, checksums.
* :mod:`~slimkit.storage.plan`: which codec stores each tensor, read from the modules'
  storage hints (the protocol of :mod:`slimkit.nn.spec`).
* :mod:`~slimkit.storage.codecs`: the per-tensor codecs (dense, masked, csr, codebook,
  int8) and their registry.
* :mod:`~slimkit.storage.huffman`: canonical Huffman coding of index/position streams.
* :mod:`~slimkit.storage.bits`: bit packing.

docs/format.md describes the layout byte by byte. The math of the value grids
(codebook lookup, int8 codes) lives in :mod:`slimkit.nn.grids` and is re-exported here.
"""
from slimkit.nn.grids import codebook_indices, int8_codes, int8_dequantize, min_index_bits
from slimkit.nn.spec import storage_hints
from slimkit.storage.bits import pack_bits, pack_uint, unpack_bits, unpack_uint
from slimkit.storage.codecs import (CODECS, DERIVED, Codec, csr_layout, csr_positions, decode_tensor, encode_tensor,
                                    register_codec)
from slimkit.storage.container import (CHECKSUM, FORMAT, VERSION, LoadedModel, integrity, load_model, read_header,
                                       save_model, tensor_crc32)
from slimkit.storage.huffman import (HUFFMAN_MAX_BITS, canonical_codes, check_code_lengths, huffman_code_lengths,
                                     huffman_decode, huffman_encode)
from slimkit.storage.plan import default_plan, stored_bytes

__all__ = ["codebook_indices", "int8_codes", "int8_dequantize", "min_index_bits", "storage_hints",
           "pack_bits", "pack_uint", "unpack_bits", "unpack_uint",
           "CODECS", "DERIVED", "Codec", "csr_layout", "csr_positions", "decode_tensor", "encode_tensor",
           "register_codec", "CHECKSUM", "FORMAT", "VERSION", "LoadedModel", "integrity", "load_model", "read_header",
           "save_model", "tensor_crc32", "HUFFMAN_MAX_BITS", "canonical_codes", "check_code_lengths",
           "huffman_code_lengths", "huffman_decode", "huffman_encode", "default_plan", "stored_bytes"]
