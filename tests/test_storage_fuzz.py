"""Fuzzing the .slim reader: mutated files load (as the original or another valid model)
or are refused with a UserError -- never another exception, a hang or a huge allocation.

The file under attack has no checksums, as a file written before them (or a hostile one)
has: with them any changed tensor byte is refused before decoding
(tests/test_storage_integrity.py), and the decoders behind them must be safe on their own.
It holds every codec: csr with codebook indices and Huffman-coded
streams, csr with fp32 values, codebook indices packed without Huffman, int8 with a
mask, the 1-bit ``masked`` codec, dense tensors, and derived masks, codebooks and scales.
"""
import atexit
import json
import re
import resource
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimkit import storage
from slimkit.storage import container
from slimkit.errors import UserError
from slimkit.plugins import load_registry
from slim_models import every_codec_model

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

INFO = {"model": "fuzz", "input_shape": [1, 6, 6], "num_classes": 4, "data": {}}
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


REGISTRY = load_registry()  # the quantised layer types are the engine's (slimkit.nn.quantized)
MODEL = every_codec_model()
_DIR = Path(tempfile.mkdtemp(prefix="slimkit-fuzz-"))
atexit.register(shutil.rmtree, _DIR, True)
storage.save_model(_DIR / "original.slim", MODEL, REGISTRY, info=INFO)
_WRITTEN = (_DIR / "original.slim").read_bytes()
_WRITTEN_LEN = struct.unpack("<Q", _WRITTEN[:8])[0]
OUTER = json.loads(_WRITTEN[8:8 + _WRITTEN_LEN])
SLIMKIT = json.loads(OUTER["__metadata__"]["slimkit"])
SLIMKIT.pop("checksum")
for _entry in SLIMKIT["tensors"].values():
    _entry.pop("crc32", None)
OUTER["__metadata__"]["slimkit"] = json.dumps(SLIMKIT, separators=(",", ":"))
DATA = _WRITTEN[8 + _WRITTEN_LEN:]


def test_the_fuzzed_file_uses_every_codec():
    codecs = {e["codec"] for e in SLIMKIT["tensors"].values()}
    assert codecs == {"csr", "codebook", "int8", "masked", "dense", "from_mask", "from_part"}
    assert any(e.get("meta", {}).get("huffman") for e in SLIMKIT["tensors"].values())


def _file(outer: dict, data: bytes) -> bytes:
    blob = json.dumps(outer, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


ORIGINAL = _file(OUTER, DATA)
HEADER_LEN = struct.unpack("<Q", ORIGINAL[:8])[0]


def _with_slimkit_text(text: str) -> bytes:
    outer = json.loads(json.dumps(OUTER))
    outer["__metadata__"]["slimkit"] = text
    return _file(outer, DATA)


def _numbers(node, path=()):
    """Paths to every number (not bool) in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, path + (i,))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path


NUMBER_PATHS = list(_numbers(SLIMKIT))
TENSOR_PATHS = [p for p in NUMBER_PATHS if p[0] == "tensors"]
INTERESTING = [0, 1, -1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 255, 256, 257, 1000, 2**16, 2**31 - 1, 2**31, 2**40,
               2**63, 10**30, 0.5, -0.0, 1e308]


INCIDENTAL = re.compile(r"inconsistent: (IndexError|KeyError|TypeError|AttributeError|OverflowError|"
                        r"ZeroDivisionError|MemoryError|RecursionError|UnicodeDecodeError)")


def _check(raw: bytes) -> None:
    path = _DIR / "mutated.slim"
    path.write_bytes(raw)
    try:
        loaded = storage.load_model(path, REGISTRY)
    except UserError as exc:
        assert str(path) in str(exc) or "slimkit" in str(exc)
        # refused by a check, not by an accident inside a decoder
        assert not INCIDENTAL.search(str(exc)), str(exc)
    else:
        model = loaded.model
        assert isinstance(model, nn.Module)
        header = loaded.header["tensors"]
        for key, value in model.state_dict().items():
            assert list(value.shape) == list(header[key]["shape"]), key
        # a damaged file never makes the loader build more than the file can describe (the
        # bound that keeps loading fast; benchmarks/speed_targets.py times it)
        elements = sum(t.numel() for t in model.state_dict().values())
        assert elements <= max(container.MAX_MODEL_ELEMENTS, container.ELEMENTS_PER_FILE_BYTE * len(raw))
        if raw == ORIGINAL:
            for a, b in zip(MODEL.state_dict().values(), model.state_dict().values()):
                assert torch.equal(a, b)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(ORIGINAL) - 1), st.integers(1, 255)), min_size=1, max_size=6))
def test_flipped_bytes_anywhere(flips):
    raw = bytearray(ORIGINAL)
    for pos, xor in flips:
        raw[pos] ^= xor
    _check(bytes(raw))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(DATA) - 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_flipped_bytes_in_tensor_data(flips):
    data = bytearray(DATA)
    for pos, xor in flips:
        data[pos] ^= xor
    _check(ORIGINAL[:8 + HEADER_LEN] + bytes(data))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(OUTER["__metadata__"]["slimkit"]) - 1),
                          st.characters(codec="ascii")), min_size=1, max_size=4))
def test_flipped_characters_in_header_json(edits):
    text = list(OUTER["__metadata__"]["slimkit"])
    for pos, char in edits:
        text[pos] = char
    _check(_with_slimkit_text("".join(text)))


@FUZZ
@given(st.integers(0, len(ORIGINAL) - 1))
def test_truncated(length):
    _check(ORIGINAL[:length])


@FUZZ
@given(st.sampled_from(NUMBER_PATHS), st.one_of(st.sampled_from(INTERESTING), st.integers(-5, 5)), st.booleans())
def test_changed_numbers_in_header(path, value, relative):
    header = json.loads(json.dumps(SLIMKIT))
    node = header
    for key in path[:-1]:
        node = node[key]
    old = node[path[-1]]
    node[path[-1]] = old + value if relative and isinstance(value, int) and isinstance(old, int) else value
    _check(_with_slimkit_text(json.dumps(header)))


@FUZZ
@given(st.sampled_from(TENSOR_PATHS), st.sampled_from(INTERESTING),
       st.sampled_from(sorted(k for k in OUTER if k != "__metadata__")), st.integers(0, 1), st.integers(-64, 64))
def test_changed_counts_and_offsets(path, value, part, which, delta):
    """A header count and a safetensors offset changed together."""
    header = json.loads(json.dumps(SLIMKIT))
    node = header
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    outer = json.loads(json.dumps(OUTER))
    outer["__metadata__"]["slimkit"] = json.dumps(header)
    offsets = outer[part]["data_offsets"]
    offsets[which] = max(0, offsets[which] + delta)
    _check(_file(outer, DATA))


def test_hostile_meta_values_and_peak_memory():
    """Targeted hostile values for every codec field, and no huge allocation overall."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fields = {"entries": [0, 1, 10**9, -1, "3", None], "pos_bits": [0, 9, 255, True], "index_bits": [0, 9, 64],
              "codebook_size": [0, 17, 257, 10**12], "huffman": [1, "yes", None], "values": ["int", None],
              "mask": [1, None]}
    for key, entry in SLIMKIT["tensors"].items():
        for field, values in fields.items():
            if field not in entry.get("meta", {}):
                continue
            for value in values:
                header = json.loads(json.dumps(SLIMKIT))
                header["tensors"][key]["meta"][field] = value
                path = _DIR / "hostile.slim"
                path.write_bytes(_with_slimkit_text(json.dumps(header)))
                with pytest.raises(UserError):
                    storage.load_model(path, REGISTRY)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # ru_maxrss is KiB on Linux
    assert grown_mib < 512
