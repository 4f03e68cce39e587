"""Canonical Huffman coding of small-alphabet symbol streams (index and position streams).

The code is described by one length per symbol (0 for an unused symbol, at most
:data:`HUFFMAN_MAX_BITS`); codes are assigned in order of (length, symbol) and bits are
packed most significant first. Decoding refuses impossible code tables and streams that
do not end in their last byte.
"""
from __future__ import annotations

import heapq

import numpy as np

__all__ = ["HUFFMAN_MAX_BITS", "huffman_code_lengths", "check_code_lengths", "canonical_codes",
           "huffman_encode", "huffman_decode"]

#: Longest Huffman code; longer codes are avoided by flattening the symbol counts.
HUFFMAN_MAX_BITS = 15


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
