"""The per-tensor codecs of the ``.slim`` format and their registry.

Each codec turns one tensor into named *parts* (tensors stored in the safetensors file)
and a JSON ``meta`` dict, and back; :data:`CODECS` maps names to codecs.

Codecs
------
``dense``     the tensor as is (float32, or float16/bfloat16 when the model is half precision).
``masked``    a pruned weight: the kept values in order, plus the mask packed 1 bit per weight.
``csr``       a sparse weight as in Deep Compression (Han, Mao & Dally, ICLR 2016, §2):
              the kept positions as *relative* indices (gaps) of ``pos_bits`` bits (1-8).
              With ``M = 2**pos_bits - 1`` the code ``c < M`` means "the next kept weight is
              ``c + 1`` positions after the previous entry"; the code ``M`` is a padding
              entry ``M`` positions on, inserted wherever a gap exceeds ``M``. Padding
              entries are stored entries: they have a value slot (zero) like every other.
              Values are the weights themselves (``values="fp32"``: the weight's dtype) or
              ``index_bits``-bit indices into a float32 codebook (``values="index"``).
``codebook``  a weight-shared dense weight: one ``index_bits``-bit (1-8) index per weight
              into a float32 codebook of at most ``2**index_bits`` entries.
``int8``      symmetric per-output-channel linear quantisation: int8 ``q`` and a float32
              ``scale`` per output channel, the weight being ``q * scale`` (float32).

Index and position streams of ``csr`` and ``codebook`` are optionally Huffman coded
(canonical Huffman: the part ``<stream>_lengths`` holds one 4-bit code length per
symbol of the alphabet, 0 for an unused symbol and at most :data:`~slimkit.storage.huffman.HUFFMAN_MAX_BITS`;
codes are assigned in order of (length, symbol); bits are packed most significant
first). Without Huffman, a stream
of ``n`` symbols of ``b`` bits takes exactly ``ceil(n * b / 8)`` bytes.

Derived entries have no data of their own: ``from_mask`` (``{"of": K}``) is the 0/1
mask of the kept positions of weight ``K`` (decoded from its bitmap or positions), and
``from_part`` (``{"of": K, "part": P}``) is part ``P`` of entry ``K`` (a codebook or the
scales, stored once).

Exactness: decoding gives every element back bit for bit, except that a zero outside
the kept positions of a sparse codec reads back as ``+0.0`` (a ``-0.0`` that a mask
multiplication left behind compares equal but loses its sign bit).

Every decoder checks counts, sizes and dtypes against the shape before it allocates and
raises ``ValueError`` on bad data (the container turns that into a ``UserError``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from slimkit.nn.grids import codebook_indices, int8_codes, int8_dequantize, min_index_bits
from slimkit.storage.bits import pack_bits, pack_uint, unpack_bits, unpack_uint
from slimkit.storage.huffman import huffman_code_lengths, huffman_decode, huffman_encode

__all__ = ["DERIVED", "Codec", "CODECS", "register_codec", "encode_tensor", "decode_tensor", "csr_layout",
           "csr_positions"]

DERIVED = ("from_mask", "from_part")


@dataclass
class Codec:
    """How one tensor is stored. ``encode(tensor, extra) -> (tensors, meta)``;
    ``decode(tensors, meta, shape, dtype) -> tensor``. ``extra`` carries helper data
    (e.g. the mask of a pruned weight). ``kept(tensors, meta, shape) -> bool tensor``
    (optional) gives the kept positions, from which a ``from_mask`` entry is rebuilt."""

    name: str
    encode: Callable
    decode: Callable
    kept: Callable | None = None


# --------------------------------------------------------------------------- helpers

def shape_numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _meta_int(meta: dict, key: str, low: int, high: int) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"meta field {key!r} is {value!r}; expected an integer in [{low}, {high}]")
    return value


def _meta_bool(meta: dict, key: str) -> bool:
    value = meta.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"meta field {key!r} is {value!r}; expected true or false")
    return value


def _meta_choice(meta: dict, key: str, choices) -> str:
    value = meta.get(key)
    if value not in choices:
        raise ValueError(f"meta field {key!r} is {value!r}; expected one of {', '.join(choices)}")
    return value


def _part(tensors: dict, name: str, dtype: torch.dtype, numel: int | None = None) -> torch.Tensor:
    """Part ``name``, flat, checked for dtype and (optionally) element count."""
    if name not in tensors:
        raise ValueError(f"part {name!r} is missing")
    t = tensors[name]
    if t.dtype != dtype:
        raise ValueError(f"part {name!r} is {t.dtype}, expected {dtype}")
    t = t.reshape(-1)
    if numel is not None and t.numel() != numel:
        raise ValueError(f"part {name!r} has {t.numel()} elements, expected {numel}")
    return t


def _u8(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().reshape(-1).numpy(), dtype=np.uint8)


# --------------------------------------------------------------------------- symbol streams

def _stream_encode(symbols: np.ndarray, bits: int, huffman: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(data, code lengths or None) of a stream of ``bits``-bit symbols."""
    if not huffman:
        return pack_uint(symbols, bits), None
    lengths = huffman_code_lengths(np.bincount(symbols.astype(np.int64), minlength=1 << bits))
    return huffman_encode(symbols, lengths), pack_uint(lengths, 4)


def _stream_size(symbols: np.ndarray, bits: int, huffman: bool) -> int:
    """Bytes :func:`_stream_encode` produces, lengths table included, without encoding."""
    if not huffman:
        return (symbols.size * bits + 7) // 8
    counts = np.bincount(symbols.astype(np.int64), minlength=1 << bits)
    lengths = huffman_code_lengths(counts)
    return (int(np.dot(counts, lengths.astype(np.int64))) + 7) // 8 + _table_bytes(bits)


def _table_bytes(bits: int) -> int:
    """Bytes of the code-length table of a ``bits``-bit alphabet (4 bits per symbol)."""
    return ((1 << bits) * 4 + 7) // 8


def _stream_decode(tensors: dict, name: str, count: int, bits: int, huffman: bool) -> np.ndarray:
    data = _u8(_part(tensors, name, torch.uint8))
    if not huffman:
        return unpack_uint(data, count, bits)
    table = _u8(_part(tensors, f"{name}_lengths", torch.uint8, _table_bytes(bits)))
    return huffman_decode(data, unpack_uint(table, 1 << bits, 4), count)


def _stream_parts(name: str, data: np.ndarray, lengths: np.ndarray | None) -> dict:
    parts = {name: torch.from_numpy(data)}
    if lengths is not None:
        parts[f"{name}_lengths"] = torch.from_numpy(lengths)
    return parts


# --------------------------------------------------------------------------- codebooks

def _codebook_part(tensors: dict, meta: dict, index_bits: int) -> torch.Tensor:
    size = _meta_int(meta, "codebook_size", 1, 1 << index_bits)
    return _part(tensors, "codebook", torch.float32, size)


def _codebook_lookup(codebook: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    if idx.size and int(idx.max()) >= codebook.numel():
        raise ValueError(f"an index ({int(idx.max())}) points past the codebook's {codebook.numel()} entries")
    return codebook[torch.from_numpy(idx.astype(np.int64))]


def index_bits_for(extra: dict, codebook: torch.Tensor) -> int:
    need = min_index_bits(codebook.numel())
    bits = extra.get("index_bits") or need
    if not need <= bits <= 8:
        raise ValueError(f"index_bits={bits} cannot index a codebook of {codebook.numel()} entries "
                         f"(need {need} to 8)")
    return int(bits)


# --------------------------------------------------------------------------- dense and masked

def _encode_dense(tensor, extra):
    return {"data": tensor.contiguous()}, {}


def _decode_dense(tensors, meta, shape, dtype):
    data = tensors.get("data")
    if data is None:
        raise ValueError("part 'data' is missing")
    if tuple(data.shape) != tuple(shape):
        raise ValueError(f"stored shape {tuple(data.shape)} differs from the header's {tuple(shape)}")
    return data.to(dtype)


def _encode_masked(tensor, extra):
    mask = extra["mask"].bool()
    return {"values": tensor[mask].contiguous(), "bits": pack_bits(mask)}, {}


def _kept_masked(tensors, meta, shape):
    return unpack_bits(_part(tensors, "bits", torch.uint8), shape_numel(shape))


def _decode_masked(tensors, meta, shape, dtype):
    count = shape_numel(shape)
    mask = _kept_masked(tensors, meta, shape)
    values = tensors.get("values")
    if values is None:
        raise ValueError("part 'values' is missing")
    kept = int(mask.sum())
    if values.numel() != kept:
        raise ValueError(f"{values.numel()} stored values for {kept} kept weights")
    out = torch.zeros(count, dtype=values.dtype)
    out[mask] = values.reshape(-1)
    return out.reshape(shape).to(dtype)


# --------------------------------------------------------------------------- csr

def csr_layout(positions: np.ndarray, pos_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index codes of sorted kept ``positions`` and where the real entries are.

    Returns ``(codes, real)``: ``codes`` has one ``pos_bits``-bit code per stored entry
    (padding included), ``real`` the entry numbers of the kept weights.
    """
    top = (1 << pos_bits) - 1
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    gaps = np.diff(positions, prepend=-1)
    pads = (gaps - 1) // top
    real = np.cumsum(pads + 1) - 1
    codes = np.full(int(real[-1]) + 1, top, np.uint8)
    codes[real] = (gaps - pads * top - 1).astype(np.uint8)
    return codes, real


def csr_positions(codes: np.ndarray, pos_bits: int, numel: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`csr_layout`: ``(positions of the kept weights, their entry numbers)``."""
    top = (1 << pos_bits) - 1
    codes = codes.astype(np.int64)
    pad = codes == top
    where = np.cumsum(np.where(pad, top, codes + 1)) - 1
    if where.size and int(where[-1]) >= numel:
        raise ValueError(f"sparse positions run past the tensor's {numel} elements")
    real = np.flatnonzero(~pad)
    return where[real], real


def _csr_kept_positions(weight: torch.Tensor, extra: dict) -> np.ndarray:
    flat = weight.reshape(-1)
    mask = extra.get("mask")
    keep = (mask.reshape(-1) != 0) if mask is not None else (flat != 0)
    if bool((flat[~keep] != 0).any()):
        raise ValueError("a weight outside the mask is not zero; csr stores only the kept weights")
    return torch.nonzero(keep).reshape(-1).numpy()


def _encode_csr(tensor, extra):
    flat = tensor.detach().cpu().reshape(-1)
    positions = _csr_kept_positions(flat, extra)
    codebook = extra.get("codebook")
    huffman = bool(extra.get("huffman", codebook is not None))
    if codebook is not None:
        codebook = codebook.detach().cpu().float().reshape(-1).contiguous()
        index_bits = index_bits_for(extra, codebook)
        idx = codebook_indices(flat[torch.from_numpy(positions)], codebook)
    pos_bits = extra.get("pos_bits") or 0
    if pos_bits and not 1 <= pos_bits <= 8:
        raise ValueError(f"pos_bits={pos_bits}; expected 1 to 8 (0 = the smallest)")

    def values_for(codes, real):
        if codebook is None:
            return None
        symbols = np.zeros(codes.size, np.int64)  # padding entries hold index 0
        symbols[real] = idx
        return symbols

    def size(bits):
        codes, real = csr_layout(positions, bits)
        total = _stream_size(codes, bits, huffman)
        if codebook is None:
            return total + codes.size * flat.element_size()
        return total + _stream_size(values_for(codes, real), index_bits, huffman)

    if not pos_bits:
        pos_bits = min(range(1, 9), key=size)
    codes, real = csr_layout(positions, pos_bits)
    parts = _stream_parts("pos", *_stream_encode(codes, pos_bits, huffman))
    meta = {"entries": int(codes.size), "pos_bits": int(pos_bits), "huffman": huffman}
    if codebook is None:
        values = torch.zeros(codes.size, dtype=flat.dtype)
        values[torch.from_numpy(real)] = flat[torch.from_numpy(positions)]
        parts["values"] = values
        meta["values"] = "fp32"
    else:
        parts.update(_stream_parts("idx", *_stream_encode(values_for(codes, real), index_bits, huffman)))
        parts["codebook"] = codebook
        meta.update(values="index", index_bits=index_bits, codebook_size=int(codebook.numel()))
    return parts, meta


def _csr_read_positions(tensors, meta, numel):
    pos_bits = _meta_int(meta, "pos_bits", 1, 8)
    huffman = _meta_bool(meta, "huffman")
    entries = _meta_int(meta, "entries", 0, numel)  # every entry advances at least one position
    codes = _stream_decode(tensors, "pos", entries, pos_bits, huffman)
    positions, real = csr_positions(codes, pos_bits, numel)
    return positions, real, entries, huffman


def _kept_csr(tensors, meta, shape):
    numel = shape_numel(shape)
    positions, _, _, _ = _csr_read_positions(tensors, meta, numel)
    kept = torch.zeros(numel, dtype=torch.bool)
    kept[torch.from_numpy(positions)] = True
    return kept


def _decode_csr(tensors, meta, shape, dtype):
    numel = shape_numel(shape)
    kind = _meta_choice(meta, "values", ("fp32", "index"))
    positions, real, entries, huffman = _csr_read_positions(tensors, meta, numel)
    if kind == "fp32":
        values = tensors.get("values")
        if values is None or not values.is_floating_point() or values.numel() != entries:
            raise ValueError(f"csr values must be {entries} floating-point numbers")
        kept = values.reshape(-1)[torch.from_numpy(real)]
    else:
        index_bits = _meta_int(meta, "index_bits", 1, 8)
        codebook = _codebook_part(tensors, meta, index_bits)
        idx = _stream_decode(tensors, "idx", entries, index_bits, huffman)
        kept = _codebook_lookup(codebook, idx[real])
    out = torch.zeros(numel, dtype=kept.dtype)
    out[torch.from_numpy(positions)] = kept
    return out.reshape(shape).to(dtype)


# --------------------------------------------------------------------------- codebook (dense)

def _encode_codebook(tensor, extra):
    flat = tensor.detach().cpu().reshape(-1)
    codebook = extra["codebook"].detach().cpu().float().reshape(-1).contiguous()
    index_bits = index_bits_for(extra, codebook)
    huffman = bool(extra.get("huffman", True))
    idx = codebook_indices(flat, codebook)
    parts = _stream_parts("idx", *_stream_encode(idx, index_bits, huffman))
    parts["codebook"] = codebook
    return parts, {"index_bits": index_bits, "huffman": huffman, "codebook_size": int(codebook.numel())}


def _kept_all(tensors, meta, shape):
    return torch.ones(shape_numel(shape), dtype=torch.bool)


def _decode_codebook(tensors, meta, shape, dtype):
    index_bits = _meta_int(meta, "index_bits", 1, 8)
    huffman = _meta_bool(meta, "huffman")
    codebook = _codebook_part(tensors, meta, index_bits)
    idx = _stream_decode(tensors, "idx", shape_numel(shape), index_bits, huffman)
    return _codebook_lookup(codebook, idx).reshape(shape).to(dtype)


# --------------------------------------------------------------------------- int8

def _encode_int8(tensor, extra):
    scale = extra["scale"].detach().cpu().float().reshape(-1).contiguous()
    parts = {"q": int8_codes(tensor, scale).contiguous(), "scale": scale}
    mask = extra.get("mask")
    has_mask = mask is not None and bool((mask == 0).any())
    if has_mask:
        parts["bits"] = pack_bits(mask != 0)
    return parts, {"mask": has_mask}


def _kept_int8(tensors, meta, shape):
    if _meta_bool(meta, "mask"):
        return unpack_bits(_part(tensors, "bits", torch.uint8), shape_numel(shape))
    return _kept_all(tensors, meta, shape)


def _decode_int8(tensors, meta, shape, dtype):
    if len(shape) == 0:
        raise ValueError("an int8 weight needs an output-channel dimension")
    q = _part(tensors, "q", torch.int8, shape_numel(shape)).reshape(shape)
    scale = _part(tensors, "scale", torch.float32, shape[0])
    _kept_int8(tensors, meta, shape)  # the mask, when there is one, must be well formed
    return int8_dequantize(q, scale).to(dtype)


CODECS: dict[str, Codec] = {
    "dense": Codec("dense", _encode_dense, _decode_dense),
    "masked": Codec("masked", _encode_masked, _decode_masked, _kept_masked),
    "csr": Codec("csr", _encode_csr, _decode_csr, _kept_csr),
    "codebook": Codec("codebook", _encode_codebook, _decode_codebook, _kept_all),
    "int8": Codec("int8", _encode_int8, _decode_int8, _kept_int8),
}


def register_codec(codec: Codec) -> None:
    if codec.name in DERIVED:
        raise ValueError(f"codec name {codec.name!r} is reserved")
    if codec.name in CODECS and CODECS[codec.name] is not codec:
        raise ValueError(f"codec {codec.name!r} registered twice")
    CODECS[codec.name] = codec


def encode_tensor(tensor: torch.Tensor, codec: str, extra: dict | None = None) -> tuple[dict, dict]:
    """``(parts, meta)`` of ``tensor`` under ``codec`` (what :func:`slimkit.storage.save_model` writes)."""
    extra = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in (extra or {}).items()}
    return CODECS[codec].encode(tensor.detach().cpu(), extra)


def decode_tensor(parts: dict, meta: dict, codec: str, shape, dtype=torch.float32) -> torch.Tensor:
    """Inverse of :func:`encode_tensor` (what :func:`slimkit.storage.load_model` does per entry)."""
    return CODECS[codec].decode(parts, meta, [int(s) for s in shape], dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """The name a header gives ``dtype`` (a key of :data:`DTYPES`)."""
    return str(dtype).replace("torch.", "")


#: The dtypes a header may name, by name.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool, "int8": torch.int8}
