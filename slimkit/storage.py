"""The ``.slim`` artifact: a safetensors file whose metadata holds a JSON header.

Nothing is pickled. The header (metadata key ``slimkit``) holds the architecture as a
module spec (see :mod:`slimkit.nn.spec`), the input shape, classes, normalisation and
one entry per state-dict tensor naming the codec that stored it. Every entry is
``{"codec", "shape", "dtype", "meta", "parts"}``; the tensor data of part ``P`` of key
``K`` is the safetensors tensor ``K::P`` (``slimkit info`` adds up the parts' bytes).
docs/format.md describes the layout byte by byte.

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
symbol of the alphabet, 0 for an unused symbol and at most :data:`HUFFMAN_MAX_BITS`;
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

How a model asks for a codec (the convention :func:`default_plan` reads)
------------------------------------------------------------------------
The engine saves with ``save_model(path, model, registry, info=...)`` and no plan, so
everything flows from the modules themselves. For a module with a ``weight``:

* a float32 buffer ``weight_codebook`` (1-D, 1-256 entries) declares that every weight
  (every kept weight when there is a ``weight_mask`` buffer; pruned weights are zero)
  equals one of its entries exactly. The weight is stored as codebook indices: ``csr``
  when the mask removes anything, ``codebook`` otherwise. The codebook is stored once,
  inside the weight's entry; ``weight_codebook`` and ``weight_mask`` are derived.
* a float32 buffer ``weight_scale`` (one per output channel) declares an int8 grid:
  ``weight == q * scale`` with integer ``|q| <= 127``. Stored with ``int8``.
* a ``weight_mask`` buffer alone: ``masked`` (or ``csr`` with fp32 values when the hints
  say ``codec="csr"``).
* hints: an attribute ``slimkit_storage`` (a dict; a property computed from constructor
  arguments survives saving and loading, a plain instance attribute only lasts while
  the model is in memory) with keys ``index_bits`` (1-8, default the fewest bits that
  index the codebook), ``pos_bits`` (1-8; 0 or absent = try all and keep the smallest),
  ``huffman`` (bool, default True for codebook weights, False for fp32 ``csr``) and
  ``codec`` (``"csr"`` or ``"masked"``, for masked weights without a codebook).

A module whose weights do not match its declaration (a value not in its codebook) is
stored losslessly the generic way with a warning, never approximately.

Hostile files
-------------
Every count in a header is checked against the shape and against the bytes actually
stored before anything is allocated; the architecture is first built on PyTorch's
``meta`` device (no memory) to check its size and its tensors against the header.
Any problem is a :class:`~slimkit.errors.UserError` naming the file.
"""
from __future__ import annotations

import heapq
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from slimkit.errors import UserError

FORMAT = "slimkit"
VERSION = 1
MAX_ELEMENTS = 2**34  # refuse headers describing absurd tensors before allocating
#: A model may hold at most max(MAX_MODEL_ELEMENTS, ELEMENTS_PER_FILE_BYTE x file size)
#: elements: a sparse file can describe far more elements than it has bytes, but not
#: without bound (0.125 bit per element is beyond any codec here on a real model).
MAX_MODEL_ELEMENTS = 2**26
ELEMENTS_PER_FILE_BYTE = 64
#: Longest Huffman code; longer codes are avoided by flattening the symbol counts.
HUFFMAN_MAX_BITS = 15

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

def _numel(shape) -> int:
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


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    bits = np.packbits(mask.reshape(-1).to(torch.uint8).cpu().numpy())
    return torch.from_numpy(bits)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    if packed.dtype != torch.uint8 or packed.numel() != (count + 7) // 8:
        raise ValueError(f"mask bitmap has {packed.numel()} bytes, expected {(count + 7) // 8}")
    return torch.from_numpy(np.unpackbits(packed.reshape(-1).numpy(), count=count).astype(bool))


def pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers in [0, 2**bits) at ``bits`` (1-8) bits each, most significant bit first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"cannot pack at {bits} bits; 1 to 8 are supported")
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"a value does not fit into {bits} bits")
    if v.size == 0:
        return np.zeros(0, np.uint8)
    return np.packbits(np.unpackbits(v[:, None], axis=1)[:, 8 - bits:].reshape(-1))


def unpack_uint(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`; the byte count must be exactly ``ceil(count * bits / 8)``."""
    if not 1 <= bits <= 8:
        raise ValueError(f"cannot unpack {bits}-bit values; 1 to 8 are supported")
    need = (count * bits + 7) // 8
    if packed.size != need:
        raise ValueError(f"{count} values of {bits} bits take {need} bytes, found {packed.size}")
    if count == 0:
        return np.zeros(0, np.uint8)
    flat = np.unpackbits(packed, count=count * bits).reshape(count, bits)
    if bits < 8:
        flat = np.concatenate([np.zeros((count, 8 - bits), np.uint8), flat], axis=1)
    return np.packbits(flat, axis=1).reshape(-1)


def min_index_bits(k: int) -> int:
    """The fewest bits (>= 1) that index ``k`` codebook entries."""
    return max(1, (max(k, 1) - 1).bit_length())


# --------------------------------------------------------------------------- Huffman

def huffman_code_lengths(counts, max_bits: int = HUFFMAN_MAX_BITS) -> np.ndarray:
    """Code length per symbol (0 for unused symbols) of a Huffman code for ``counts``.

    One used symbol gets a 1-bit code. Codes longer than ``max_bits`` are avoided by
    halving the counts (each used symbol keeps a count of at least 1) and building
    again, which converges to a balanced code.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    lengths = np.zeros(counts.size, np.uint8)
    used = np.flatnonzero(counts > 0)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    if used.size > 2**max_bits:
        raise ValueError(f"{used.size} symbols do not fit into codes of at most {max_bits} bits")
    weights = counts[used].copy()
    while True:
        depth = _huffman_depths(weights)
        if depth.max() <= max_bits:
            break
        weights = np.maximum(weights >> 1, 1)
    lengths[used] = depth
    return lengths


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    heap = [(int(w), i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = np.zeros(len(weights), np.int64)
    order = len(weights)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        merged = s1 + s2
        depth[merged] += 1
        heapq.heappush(heap, (w1 + w2, order, merged))
        order += 1
    return depth


def check_code_lengths(lengths: np.ndarray, max_bits: int = HUFFMAN_MAX_BITS) -> None:
    """Refuse code lengths that no prefix code has (too long, or Kraft sum above 1)."""
    if lengths.size and int(lengths.max()) > max_bits:
        raise ValueError(f"Huffman code length {int(lengths.max())} exceeds the maximum {max_bits}")
    used = lengths[lengths > 0].astype(np.int64)
    if int(np.sum(np.left_shift(1, max_bits - used))) > 1 << max_bits:
        raise ValueError("Huffman code lengths are impossible (their Kraft sum exceeds 1)")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes: symbols in order of (length, symbol) get consecutive codes."""
    codes = np.zeros(lengths.size, np.int64)
    code, prev = 0, 0
    for sym in sorted(np.flatnonzero(lengths > 0).tolist(), key=lambda s: (int(lengths[s]), s)):
        length = int(lengths[sym])
        code <<= length - prev
        prev = length
        codes[sym] = code
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bit stream (uint8, MSB first, zero padded to a byte) of ``symbols``."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size == 0:
        return np.zeros(0, np.uint8)
    codes = canonical_codes(lengths)
    sym_len = lengths.astype(np.int64)[symbols]
    if (sym_len == 0).any():
        raise ValueError("a symbol has no Huffman code")
    pieces = []
    columns = np.arange(16)[None, :]
    for start in range(0, symbols.size, 1 << 18):
        s = symbols[start:start + (1 << 18)]
        ln = sym_len[start:start + (1 << 18)]
        aligned = (codes[s] << (16 - ln)).astype(">u2")  # each code left-aligned in 16 bits
        bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 2), axis=1)
        pieces.append(bits[columns < ln[:, None]])
    return np.packbits(np.concatenate(pieces))


def huffman_decode(data: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode exactly ``count`` symbols; the stream must end in its last byte."""
    check_code_lengths(lengths)
    if count == 0:
        if data.size:
            raise ValueError(f"an empty Huffman stream has {data.size} bytes")
        return np.zeros(0, np.int64)
    if count > 8 * data.size:
        raise ValueError(f"{count} Huffman symbols cannot fit into {data.size} bytes")
    width = int(lengths.max()) if lengths.size else 0
    if width == 0:
        raise ValueError("Huffman stream without any code")
    codes = canonical_codes(lengths)
    table_len = np.zeros(1 << width, np.uint8)
    table_sym = np.zeros(1 << width, np.int64)
    for sym in np.flatnonzero(lengths > 0).tolist():
        length = int(lengths[sym])
        lo = int(codes[sym]) << (width - length)
        hi = (int(codes[sym]) + 1) << (width - length)
        table_len[lo:hi] = length
        table_sym[lo:hi] = sym
    nbits = 8 * data.size
    padded = np.concatenate([data, np.zeros(3, np.uint8)]).astype(np.int64)
    w24 = (padded[:-2] << 16) | (padded[1:-1] << 8) | padded[2:]  # 24 bits from each byte on
    mask = (1 << width) - 1

    def windows(offsets):
        return (w24[offsets >> 3] >> (24 - width - (offsets & 7))) & mask

    starts = np.empty(count, np.int64)
    pos, done, block = 0, 0, 1 << 20
    while done < count:
        if pos >= nbits:
            raise ValueError(f"Huffman stream ends after {done} of {count} symbols")
        end = min(pos + block, nbits)
        step = table_len[windows(np.arange(pos, end, dtype=np.int64))].tolist()
        base, local = pos, []
        append = local.append
        remaining = count - done
        while pos < end and remaining:
            n = step[pos - base]
            if n == 0:
                raise ValueError(f"invalid Huffman code at bit {pos}")
            append(pos)
            pos += n
            remaining -= 1
        starts[done:done + len(local)] = local
        done += len(local)
    if pos > nbits:
        raise ValueError("the last Huffman code runs past the end of the stream")
    if (pos + 7) // 8 != data.size:
        raise ValueError(f"Huffman stream has {data.size} bytes, its {count} symbols take {(pos + 7) // 8}")
    return table_sym[windows(starts)]


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

def codebook_indices(values: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
    """Index into ``codebook`` of every value, matched bit for bit (first match on duplicates).

    Raises ValueError when a value is not in the codebook.
    """
    if values.dtype != torch.float32 or codebook.dtype != torch.float32:
        raise ValueError("codebook weights must be float32")
    cb = codebook.detach().cpu().contiguous().reshape(-1).view(torch.int32).numpy()
    vb = values.detach().cpu().contiguous().reshape(-1).view(torch.int32).numpy()
    if cb.size == 0:
        if vb.size:
            raise ValueError("an empty codebook cannot encode any weight")
        return np.zeros(0, np.int64)
    order = np.argsort(cb, kind="stable")
    ordered = cb[order]
    pos = np.clip(np.searchsorted(ordered, vb), 0, cb.size - 1)
    bad = ordered[pos] != vb
    if bad.any():
        first = values.reshape(-1)[int(np.flatnonzero(bad)[0])].item()
        raise ValueError(f"{int(bad.sum())} weight(s) are not codebook values (e.g. {first!r})")
    return order[pos].astype(np.int64)


def _codebook_part(tensors: dict, meta: dict, index_bits: int) -> torch.Tensor:
    size = _meta_int(meta, "codebook_size", 1, 1 << index_bits)
    return _part(tensors, "codebook", torch.float32, size)


def _codebook_lookup(codebook: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    if idx.size and int(idx.max()) >= codebook.numel():
        raise ValueError(f"an index ({int(idx.max())}) points past the codebook's {codebook.numel()} entries")
    return codebook[torch.from_numpy(idx.astype(np.int64))]


def _index_bits(extra: dict, codebook: torch.Tensor) -> int:
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
    return unpack_bits(_part(tensors, "bits", torch.uint8), _numel(shape))


def _decode_masked(tensors, meta, shape, dtype):
    count = _numel(shape)
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
        index_bits = _index_bits(extra, codebook)
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
    numel = _numel(shape)
    positions, _, _, _ = _csr_read_positions(tensors, meta, numel)
    kept = torch.zeros(numel, dtype=torch.bool)
    kept[torch.from_numpy(positions)] = True
    return kept


def _decode_csr(tensors, meta, shape, dtype):
    numel = _numel(shape)
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
    index_bits = _index_bits(extra, codebook)
    huffman = bool(extra.get("huffman", True))
    idx = codebook_indices(flat, codebook)
    parts = _stream_parts("idx", *_stream_encode(idx, index_bits, huffman))
    parts["codebook"] = codebook
    return parts, {"index_bits": index_bits, "huffman": huffman, "codebook_size": int(codebook.numel())}


def _kept_all(tensors, meta, shape):
    return torch.ones(_numel(shape), dtype=torch.bool)


def _decode_codebook(tensors, meta, shape, dtype):
    index_bits = _meta_int(meta, "index_bits", 1, 8)
    huffman = _meta_bool(meta, "huffman")
    codebook = _codebook_part(tensors, meta, index_bits)
    idx = _stream_decode(tensors, "idx", _numel(shape), index_bits, huffman)
    return _codebook_lookup(codebook, idx).reshape(shape).to(dtype)


# --------------------------------------------------------------------------- int8

def int8_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in float32, one scale per output channel (dimension 0)."""
    return q.to(torch.float32) * scale.to(torch.float32).reshape(-1, *([1] * (q.dim() - 1)))


def int8_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int8 ``q`` with ``int8_dequantize(q, scale) == weight`` bit for bit, or ValueError."""
    w = weight.detach().cpu().float()
    s = scale.detach().cpu().float().reshape(-1)
    if w.dim() == 0 or s.numel() != w.shape[0]:
        raise ValueError(f"{s.numel()} scales for a weight of shape {tuple(w.shape)}")
    safe = torch.where(s == 0, torch.ones_like(s), s).reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.round(w / safe)
    if not bool(torch.isfinite(q).all()) or bool((q.abs() > 127).any()):
        raise ValueError("weights are not on the int8 grid (|q| > 127)")
    q = q.to(torch.int8)
    back = int8_dequantize(q, s)
    if not torch.equal(back.view(torch.int32), w.contiguous().view(torch.int32)):
        raise ValueError("weights are not exactly q * scale")
    return q


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
        return unpack_bits(_part(tensors, "bits", torch.uint8), _numel(shape))
    return _kept_all(tensors, meta, shape)


def _decode_int8(tensors, meta, shape, dtype):
    if len(shape) == 0:
        raise ValueError("an int8 weight needs an output-channel dimension")
    q = _part(tensors, "q", torch.int8, _numel(shape)).reshape(shape)
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
    """``(parts, meta)`` of ``tensor`` under ``codec`` (what :func:`save_model` writes)."""
    extra = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in (extra or {}).items()}
    return CODECS[codec].encode(tensor.detach().cpu(), extra)


def decode_tensor(parts: dict, meta: dict, codec: str, shape, dtype=torch.float32) -> torch.Tensor:
    """Inverse of :func:`encode_tensor` (what :func:`load_model` does per entry)."""
    return CODECS[codec].decode(parts, meta, [int(s) for s in shape], dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool, "int8": torch.int8}


# --------------------------------------------------------------------------- plans

def storage_hints(module: torch.nn.Module) -> dict:
    """The module's ``slimkit_storage`` dict (see the module docstring), or {}."""
    hints = getattr(module, "slimkit_storage", None)
    return dict(hints) if isinstance(hints, dict) else {}


def _buffer(module, name, like=None):
    value = module._buffers.get(name)
    if not isinstance(value, torch.Tensor):
        return None
    if like is not None and value.shape != like.shape:
        return None
    return value


def _module_plan(prefix: str, module: torch.nn.Module) -> dict:
    weight = module._parameters.get("weight")
    if weight is None:
        weight = module._buffers.get("weight")
    if not isinstance(weight, torch.Tensor):
        return {}
    wkey = prefix + "weight"
    mask = _buffer(module, "weight_mask", weight)
    codebook = _buffer(module, "weight_codebook")
    scale = _buffer(module, "weight_scale")
    hints = storage_hints(module)
    plan: dict = {}
    pruned = mask is not None and bool((mask == 0).any())
    w = weight.detach().cpu()
    if codebook is not None:
        try:
            cb = codebook.detach().cpu()
            if cb.dim() != 1 or not 1 <= cb.numel() <= 256 or cb.dtype != torch.float32:
                raise ValueError("weight_codebook must be a float32 vector of 1 to 256 entries")
            extra = {"codebook": cb, "index_bits": hints.get("index_bits"),
                     "huffman": bool(hints.get("huffman", True))}
            _index_bits(extra, cb)
            if pruned:
                keep = mask.detach().cpu() != 0
                if bool((w[~keep] != 0).any()):
                    raise ValueError("pruned weights are not zero")
                codebook_indices(w[keep], cb)
                plan[wkey] = ("csr", {**extra, "mask": mask, "pos_bits": hints.get("pos_bits") or 0})
            else:
                codebook_indices(w, cb)
                plan[wkey] = ("codebook", extra)
            plan[prefix + "weight_codebook"] = ("from_part", {"of": wkey, "part": "codebook"})
            if mask is not None:
                plan[prefix + "weight_mask"] = ("from_mask", {"of": wkey})
            return plan
        except ValueError as exc:
            warnings.warn(f"slimkit: {wkey} declares a codebook it does not follow ({exc}); stored without it",
                          stacklevel=3)
    if scale is not None:
        try:
            if pruned and bool((w[mask.detach().cpu() == 0] != 0).any()):
                raise ValueError("pruned weights are not zero")
            int8_codes(w, scale)
            plan[wkey] = ("int8", {"scale": scale, "mask": mask})
            plan[prefix + "weight_scale"] = ("from_part", {"of": wkey, "part": "scale"})
            if mask is not None:
                plan[prefix + "weight_mask"] = ("from_mask", {"of": wkey})
            return plan
        except ValueError as exc:
            warnings.warn(f"slimkit: {wkey} declares an int8 grid it does not follow ({exc}); stored without it",
                          stacklevel=3)
    if mask is not None:
        if hints.get("codec") == "csr":
            plan[wkey] = ("csr", {"mask": mask, "pos_bits": hints.get("pos_bits") or 0,
                                  "huffman": bool(hints.get("huffman", False))})
        else:
            plan[wkey] = ("masked", {"mask": mask})
        plan[prefix + "weight_mask"] = ("from_mask", {"of": wkey})
    elif hints.get("codec") == "csr":
        plan[wkey] = ("csr", {"pos_bits": hints.get("pos_bits") or 0, "huffman": bool(hints.get("huffman", False))})
    return plan


def default_plan(model: torch.nn.Module) -> dict[str, tuple[str, dict]]:
    """Codec per state-dict key, read from the modules (the convention in the module docstring):
    codebook weights as indices (``csr`` when pruned, else ``codebook``), int8-grid weights as
    ``int8``, other masked weights ``masked``; masks, codebooks and scales derived; the rest dense."""
    plan: dict[str, tuple[str, dict]] = {}
    for mod_name, module in model.named_modules():
        plan.update(_module_plan(f"{mod_name}." if mod_name else "", module))
    return plan


# --------------------------------------------------------------------------- save

def save_model(path, model: torch.nn.Module, registry, *, info: dict, plan: dict | None = None) -> int:
    """Write ``model`` to ``path`` atomically; returns the size in bytes of the written file.

    ``info`` goes into the header (model name, input_shape, num_classes, data, ...).
    ``plan`` maps state-dict keys to ``(codec, extra)`` and overrides :func:`default_plan`.
    Keys whose codec is ``from_mask`` are rebuilt from the weight's kept positions,
    ``from_part`` from a part of another entry (``extra = {"of": key, "part": name}``).
    """
    path = Path(path)
    plan = {**default_plan(model), **(plan or {})}
    arch = registry.modules.spec(model)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    state = model.state_dict()
    for key, value in state.items():
        value = value.detach().cpu()
        codec_name, extra = plan.get(key, ("dense", {}))
        entry = {"codec": codec_name, "shape": list(value.shape), "dtype": _dtype_name(value.dtype)}
        if codec_name in DERIVED:
            entry["of"] = extra["of"]
            if codec_name == "from_part":
                entry["part"] = extra["part"]
        else:
            parts, meta = encode_tensor(value, codec_name, extra)
            entry["meta"] = meta
            entry["parts"] = sorted(parts)
            for part, tensor in parts.items():
                tensors[f"{key}::{part}"] = tensor.contiguous()
        entries[key] = entry
    for key, entry in entries.items():
        if entry["codec"] in DERIVED:
            source = entries.get(entry["of"], {})
            if entry["codec"] == "from_part" and entry["part"] not in source.get("parts", ()):
                raise ValueError(f"{key}: {entry['of']} has no part {entry['part']!r} to derive it from")
            codec = CODECS.get(source.get("codec"))
            if entry["codec"] == "from_mask" and (codec is None or codec.kept is None):
                raise ValueError(f"{key}: {entry['of']} is not stored by a codec that records kept positions")
    header = {"format": FORMAT, "version": VERSION, "architecture": arch, "tensors": entries, **info}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"slimkit": json.dumps(header, separators=(",", ":"))})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


# --------------------------------------------------------------------------- load

@dataclass
class LoadedModel:
    model: torch.nn.Module
    header: dict
    size_bytes: int
    path: Path


def read_header(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; expected a .slim file written by slimkit")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise UserError(f"{path} is not a valid .slim file (damaged or not safetensors): {exc}") from None
    if "slimkit" not in meta:
        raise UserError(f"{path} is a safetensors file without a slimkit header; expected a .slim file written by slimkit")
    try:
        header = json.loads(meta["slimkit"])
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path} has a corrupt slimkit header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{path} has a header that is not slimkit's format")
    if header.get("version") != VERSION:
        raise UserError(f"{path} is format version {header.get('version')}; this slimkit reads version {VERSION}")
    return header


def _checked_entries(header: dict) -> dict[str, dict]:
    """The header's tensor entries, each checked for form (codec, shape, dtype, parts, meta)."""
    entries = header.get("tensors")
    if not isinstance(entries, dict):
        raise ValueError("'tensors' must be an object")
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise ValueError(f"entry {key} must be an object")
        shape = entry.get("shape")
        if not isinstance(shape, list) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise ValueError(f"tensor {key} has an impossible shape {shape!r}")
        if _numel(shape) > MAX_ELEMENTS:
            raise ValueError(f"tensor {key} has an impossible shape {shape}")
        if entry.get("dtype") not in _DTYPES:
            raise ValueError(f"tensor {key} has unknown dtype {entry.get('dtype')!r}")
        codec = entry.get("codec")
        if codec in DERIVED:
            source = entry.get("of")
            if not isinstance(source, str) or source == key or source not in entries:
                raise ValueError(f"tensor {key} is derived from {source!r}, which is not stored")
            if not isinstance(entries[source], dict) or entries[source].get("codec") in DERIVED:
                raise ValueError(f"tensor {key} is derived from {source}, which is itself derived")
            if codec == "from_part" and not isinstance(entry.get("part"), str):
                raise ValueError(f"tensor {key} names no part to derive it from")
            continue
        if not isinstance(codec, str) or codec not in CODECS:
            raise ValueError(f"tensor {key} uses unknown codec {codec!r} (known: {', '.join(CODECS)})")
        parts = entry.get("parts")
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"tensor {key} has no valid list of parts")
        if not isinstance(entry.get("meta", {}), dict):
            raise ValueError(f"tensor {key} has meta that is not an object")
    return entries


def _model_limit(size_bytes: int) -> int:
    return max(MAX_MODEL_ELEMENTS, ELEMENTS_PER_FILE_BYTE * size_bytes)


def _probe(registry, arch, entries: dict, limit: int) -> None:
    """Build the architecture on the meta device (no memory) and check it against the header."""
    try:
        with torch.device("meta"):
            probe = registry.modules.build(arch)
    except Exception:
        # A constructor that cannot run on the meta device (it computes with tensors, say):
        # skip the probe. The real build below reports any genuine problem (an unknown
        # type, bad arguments), and strict loading checks every tensor against the header.
        return
    state = probe.state_dict()
    total = sum(t.numel() for t in state.values())
    if total > limit:
        raise ValueError(f"the architecture has {total:,} elements, more than this file can hold ({limit:,})")
    missing = sorted(set(state) - set(entries))
    unexpected = sorted(set(entries) - set(state))
    if missing or unexpected:
        raise ValueError(f"the tensors do not match the architecture (missing: {', '.join(missing) or 'none'}; "
                         f"unexpected: {', '.join(unexpected) or 'none'})")
    for key, tensor in state.items():
        if tensor.numel() and tuple(tensor.shape) != tuple(entries[key]["shape"]):
            raise ValueError(f"tensor {key} has shape {entries[key]['shape']} in the header but "
                             f"{list(tensor.shape)} in the architecture")


def load_model(path, registry) -> LoadedModel:
    """Rebuild the model in ``path``; every check fails with a :class:`UserError`."""
    path = Path(path)
    header = read_header(path)
    where = str(path)
    size = path.stat().st_size
    try:
        entries = _checked_entries(header)
        limit = _model_limit(size)
        declared = sum(_numel(e["shape"]) for e in entries.values())
        if declared > limit:
            raise ValueError(f"the header declares {declared:,} elements, more than this file can hold ({limit:,})")
        arch = header.get("architecture")
        _probe(registry, arch, entries, limit)
        state: dict[str, torch.Tensor] = {}
        stored_parts: dict[str, dict] = {}
        with safe_open(str(path), framework="pt") as f:
            stored = set(f.keys())
            for key, entry in entries.items():
                if entry["codec"] in DERIVED:
                    continue
                parts = {}
                for part in dict.fromkeys(entry["parts"]):
                    name = f"{key}::{part}"
                    if name not in stored:
                        raise ValueError(f"tensor part {name} is missing")
                    parts[part] = f.get_tensor(name)
                stored_parts[key] = parts
                shape, dtype = entry["shape"], _DTYPES[entry["dtype"]]
                try:
                    state[key] = CODECS[entry["codec"]].decode(parts, entry.get("meta", {}), shape, dtype)
                except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
                    raise ValueError(f"tensor {key} ({entry['codec']}): {exc}") from None
        for key, entry in entries.items():
            if entry["codec"] not in DERIVED:
                continue
            source = entries[entry["of"]]
            shape, dtype = entry["shape"], _DTYPES[entry["dtype"]]
            if entry["codec"] == "from_mask":
                codec = CODECS[source["codec"]]
                if codec.kept is None:
                    raise ValueError(f"mask {key} refers to {entry['of']}, whose codec {source['codec']} "
                                     "records no kept positions")
                if _numel(shape) != _numel(source["shape"]):
                    raise ValueError(f"mask {key} has {_numel(shape)} elements, its weight {_numel(source['shape'])}")
                kept = codec.kept(stored_parts[entry["of"]], source.get("meta", {}), source["shape"])
                state[key] = kept.reshape(shape).to(dtype)
            else:
                part = stored_parts[entry["of"]].get(entry["part"])
                if part is None or tuple(part.shape) != tuple(shape) or not part.is_floating_point():
                    raise ValueError(f"tensor {key} is derived from part {entry['part']!r} of {entry['of']}, "
                                     f"which is missing or not shaped {shape}")
                state[key] = part.to(dtype).clone()
        model = registry.modules.build(arch)
        model.load_state_dict(state, strict=True)
    except UserError as exc:
        if where in str(exc):
            raise
        raise UserError(f"{where}: {exc}") from None
    except ValueError as exc:  # the codecs' and this module's own checks
        raise UserError(f"{where} is damaged or inconsistent: {exc}") from None
    except Exception as exc:
        raise UserError(f"{where} is damaged or inconsistent: {type(exc).__name__}: {exc}") from None
    model.eval()
    return LoadedModel(model, header, size, path)
