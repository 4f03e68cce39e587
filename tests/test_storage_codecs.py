"""The compressed codecs of the .slim format: csr (Deep Compression's relative
positions with padding), codebook indices, int8, canonical Huffman; exact round
trips, exact sizes, the storage convention modules use, and refusal of bad data."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from slimkit import storage
from slimkit.errors import UserError
from slimkit.nn import Int8Linear, MaskedLinear, QuantizedLinear, to_masked
from slimkit.plugins import load_registry
from slimkit_plugins import quantize as qz

INFO = {"model": "test", "input_shape": [1, 8, 8], "num_classes": 10, "data": {}}


@pytest.fixture(scope="module")
def registry():
    return load_registry()  # the quantised layer types are the engine's (slimkit.nn.quantized)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def exact(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, except that -0.0 (what ``w * 0`` leaves at a pruned weight) equals +0.0."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bits_equal(a + 0.0, b + 0.0)


def nbytes(parts: dict) -> int:
    return sum(p.numel() * p.element_size() for p in parts.values())


def round_trip(tensor, codec, extra=None, dtype=torch.float32):
    parts, meta = storage.encode_tensor(tensor, codec, extra)
    return storage.decode_tensor(parts, meta, codec, list(tensor.shape), dtype), parts, meta


# --------------------------------------------------------------------------- bit packing

@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_uint_round_trip_and_exact_size(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 8, 9, 1000):
        values = rng.integers(0, 1 << bits, n).astype(np.uint8)
        packed = storage.pack_uint(values, bits)
        assert packed.size == math.ceil(n * bits / 8)
        assert np.array_equal(storage.unpack_uint(packed, n, bits), values)
    with pytest.raises(ValueError):
        storage.pack_uint(np.array([1 << bits]) if bits < 8 else np.array([0]), 9)
    with pytest.raises(ValueError):  # one byte too few
        storage.unpack_uint(np.zeros(max(math.ceil(1000 * bits / 8) - 1, 0), np.uint8), 1000, bits)


# --------------------------------------------------------------------------- Huffman

def test_huffman_skewed_stream_beats_fixed_bits_and_round_trips():
    rng = np.random.default_rng(0)
    p = np.array([0.6, 0.2, 0.1, 0.05] + [0.05 / 28] * 28)
    symbols = rng.choice(32, size=20000, p=p)
    lengths = storage.huffman_code_lengths(np.bincount(symbols, minlength=32))
    data = storage.huffman_encode(symbols, lengths)
    assert np.array_equal(storage.huffman_decode(data, lengths, symbols.size), symbols)
    entropy = -(p * np.log2(p)).sum()
    assert data.size * 8 < 1.05 * entropy * symbols.size + 8  # within 5 % of the entropy
    assert data.size < 0.5 * symbols.size * 5 / 8  # well under half of the fixed 5 bits


def test_huffman_uniform_stream_costs_the_fixed_width():
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 16, 16 * 500)
    symbols[:16] = np.arange(16)
    lengths = storage.huffman_code_lengths(np.bincount(symbols, minlength=16))
    assert set(lengths.tolist()) <= {3, 4, 5}
    data = storage.huffman_encode(symbols, lengths)
    assert abs(data.size - symbols.size * 4 / 8) <= 0.02 * symbols.size
    assert np.array_equal(storage.huffman_decode(data, lengths, symbols.size), symbols)


def test_canonical_code_is_prefix_free_and_limited_in_length():
    counts = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765,
                       10946, 17711, 28657], dtype=np.int64)  # Fibonacci: unlimited depth would be 22
    lengths = storage.huffman_code_lengths(counts)
    assert lengths.max() <= storage.HUFFMAN_MAX_BITS
    assert sum(2.0 ** -int(n) for n in lengths if n) <= 1.0
    codes = storage.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    for i, a in enumerate(words):
        for j, b in enumerate(words):
            assert i == j or not b.startswith(a)
    symbols = np.repeat(np.arange(counts.size), np.minimum(counts, 50))
    data = storage.huffman_encode(symbols, lengths)
    assert np.array_equal(storage.huffman_decode(data, lengths, symbols.size), symbols)


def test_huffman_edge_streams():
    one = np.full(100, 7)
    lengths = storage.huffman_code_lengths(np.bincount(one, minlength=8))
    assert lengths.tolist() == [0] * 7 + [1]
    data = storage.huffman_encode(one, lengths)
    assert data.size == 13 and np.array_equal(storage.huffman_decode(data, lengths, 100), one)
    empty = storage.huffman_encode(np.zeros(0, np.int64), lengths)
    assert empty.size == 0 and storage.huffman_decode(empty, lengths, 0).size == 0


@pytest.mark.parametrize("bad", ["kraft", "too_long", "truncated", "trailing", "invalid_code", "count"])
def test_huffman_decode_refuses_impossible_input(bad):
    symbols = np.array([0, 1, 2, 3] * 10)
    lengths = storage.huffman_code_lengths(np.bincount(symbols, minlength=8))
    data = storage.huffman_encode(symbols, lengths)
    count = symbols.size
    if bad == "kraft":
        lengths = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.uint8)
    elif bad == "too_long":
        lengths = lengths.copy()
        lengths[5] = 16
    elif bad == "truncated":
        data = data[:-1]
    elif bad == "trailing":
        data = np.concatenate([data, np.zeros(1, np.uint8)])
    elif bad == "invalid_code":  # an incomplete code: the unused half of the code space is invalid
        lengths = np.array([2, 2, 0, 0, 0, 0, 0, 0], np.uint8)
        data = np.array([0xFF], np.uint8)
        count = 2
    elif bad == "count":
        count = 8 * data.size + 1
    with pytest.raises(ValueError):
        storage.huffman_decode(data, lengths, count)


def test_huffman_round_trips_a_lenet300_sized_stream():
    """A LeNet-300-100-sized stream (266,200 symbols) decodes exactly, in the bits the code
    lengths predict. Its decoding speed is a target of benchmarks/speed_targets.py."""
    rng = np.random.default_rng(2)
    p = np.exp(-0.5 * ((np.arange(32) - 15.5) / 5) ** 2)
    symbols = rng.choice(32, size=266_200, p=p / p.sum())
    lengths = storage.huffman_code_lengths(np.bincount(symbols, minlength=32))
    data = storage.huffman_encode(symbols, lengths)
    assert data.size == -(-int(lengths[symbols].astype(np.int64).sum()) // 8)
    out = storage.huffman_decode(data, lengths, symbols.size)
    assert np.array_equal(out, symbols)


# --------------------------------------------------------------------------- csr

def test_csr_layout_pads_gaps_beyond_the_maximum():
    # pos_bits=2: codes 0..2 are gaps 1..3, code 3 is a padding entry 3 positions on
    codes, real = storage.csr_layout(np.array([0, 2, 9]), 2)
    assert codes.tolist() == [0, 1, 3, 3, 0] and real.tolist() == [0, 1, 4]
    positions, real_back = storage.csr_positions(codes, 2, 10)
    assert positions.tolist() == [0, 2, 9] and real_back.tolist() == [0, 1, 4]
    # a gap of exactly the maximum needs no padding; one more needs one
    assert storage.csr_layout(np.array([2]), 2)[0].tolist() == [2]
    assert storage.csr_layout(np.array([3]), 2)[0].tolist() == [3, 0]
    with pytest.raises(ValueError):
        storage.csr_positions(codes, 2, 9)  # position 9 does not exist in 9 elements


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("pos_bits", [1, 4, 8, 0])
def test_csr_fp32_round_trip_is_bit_exact(sparsity, pos_bits):
    g = torch.Generator().manual_seed(int(sparsity * 100) + pos_bits)
    w = torch.randn(37, 53, generator=g)
    mask = (torch.rand(w.shape, generator=g) >= sparsity).float()
    w = torch.where(mask > 0, w, torch.zeros_like(w))
    for huffman in (False, True):
        back, parts, meta = round_trip(w, "csr", {"mask": mask, "pos_bits": pos_bits, "huffman": huffman})
        assert bits_equal(back, w)
        kept = storage.CODECS["csr"].kept(parts, meta, list(w.shape))
        assert torch.equal(kept.reshape(w.shape), mask.bool())
        assert meta["entries"] >= int(mask.sum())
        if pos_bits:
            assert meta["pos_bits"] == pos_bits


def test_csr_padding_entries_count_as_stored_entries():
    w = torch.zeros(1000)
    w[[10, 500, 999]] = torch.tensor([1.5, -2.0, 3.0])
    _, parts, meta = round_trip(w, "csr", {"pos_bits": 4})  # max gap 15
    gaps = [11, 490, 499]
    pads = sum((g - 1) // 15 for g in gaps)
    assert meta["entries"] == 3 + pads
    assert parts["values"].numel() == 3 + pads  # one value slot (a zero) per padding entry
    assert parts["pos"].numel() == math.ceil((3 + pads) * 4 / 8)
    assert int((parts["values"] != 0).sum()) == 3


@pytest.mark.parametrize("index_bits", range(1, 9))
def test_csr_codebook_round_trip_all_index_widths(index_bits):
    g = torch.Generator().manual_seed(index_bits)
    k = 1 << index_bits
    codebook = torch.randn(k, generator=g)
    w = codebook[torch.randint(0, k, (64, 40), generator=g)]
    mask = (torch.rand(w.shape, generator=g) > 0.7).float()
    w = torch.where(mask > 0, w, torch.zeros_like(w))
    for huffman in (False, True):
        back, parts, meta = round_trip(w, "csr", {"mask": mask, "codebook": codebook, "index_bits": index_bits,
                                                  "huffman": huffman})
        assert bits_equal(back, w)
        assert meta["values"] == "index" and meta["index_bits"] == index_bits
        if not huffman:
            e = meta["entries"]
            assert parts["idx"].numel() == math.ceil(e * index_bits / 8)
            assert parts["pos"].numel() == math.ceil(e * meta["pos_bits"] / 8)


@pytest.mark.parametrize("index_bits", range(1, 9))
def test_codebook_round_trip_and_size_formula(index_bits):
    g = torch.Generator().manual_seed(10 + index_bits)
    k = max(1, (1 << index_bits) - 1)  # a codebook smaller than 2**bits works too
    codebook = torch.randn(k, generator=g)
    w = codebook[torch.randint(0, k, (1000,), generator=g)]
    back, parts, meta = round_trip(w, "codebook", {"codebook": codebook, "index_bits": index_bits,
                                                   "huffman": False})
    assert bits_equal(back, w)
    assert parts["idx"].numel() == math.ceil(1000 * index_bits / 8)
    assert nbytes(parts) == math.ceil(1000 * index_bits / 8) + 4 * k


def test_a_1000_element_4_bit_index_tensor_takes_500_bytes_plus_codebook():
    codebook = torch.linspace(-1, 1, 16)
    w = codebook[torch.arange(1000) % 16]
    _, parts, _ = round_trip(w, "codebook", {"codebook": codebook, "huffman": False})
    assert parts["idx"].numel() == 500 and nbytes(parts) == 500 + 16 * 4


def test_codebook_values_must_match_bit_for_bit():
    codebook = torch.tensor([0.5, 1.0])
    with pytest.raises(ValueError, match="not codebook values"):
        storage.encode_tensor(torch.tensor([0.5, 1.0000001]), "codebook", {"codebook": codebook})
    with pytest.raises(ValueError, match="index_bits"):
        storage.encode_tensor(torch.tensor([0.5]), "codebook", {"codebook": torch.zeros(5), "index_bits": 2})


def test_int8_round_trip_and_mask_only_when_pruned():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, 3, 3, generator=g)
    q, scale = qz.int8_quantize(w)
    wq = storage.int8_dequantize(q, scale)
    back, parts, meta = round_trip(wq, "int8", {"scale": scale})
    assert bits_equal(back, wq) and set(parts) == {"q", "scale"} and not meta["mask"]
    assert nbytes(parts) == wq.numel() + 4 * 6
    mask = (torch.rand(w.shape, generator=g) > 0.5).float()
    q, scale = qz.int8_quantize(w, mask)
    wq = storage.int8_dequantize(q, scale)
    back, parts, meta = round_trip(wq, "int8", {"scale": scale, "mask": mask})
    assert bits_equal(back, wq) and meta["mask"]
    assert torch.equal(storage.CODECS["int8"].kept(parts, meta, list(w.shape)).reshape(w.shape), mask.bool())


# --------------------------------------------------------------------------- the module convention

def quantized_model(seed=0):
    """Sequential(QuantizedLinear pruned, ReLU, QuantizedLinear dense, ReLU, Int8Linear, MaskedLinear)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), QuantizedLinear(64, 40, num_codes=32, index_bits=5), nn.ReLU(),
                          QuantizedLinear(40, 30, num_codes=8, huffman=False), nn.ReLU(),
                          Int8Linear(30, 20), MaskedLinear(20, 10))
    for layer, sparsity in ((model[1], 0.9), (model[3], 0.0)):
        k = layer.weight_codebook.numel()
        codebook = torch.sort(torch.randn(k)).values
        index = torch.randint(0, k, layer.weight.shape)
        keep = torch.rand(layer.weight.shape) >= sparsity
        layer.set_codes(codebook, index, keep)
    q, scale = qz.int8_quantize(model[5].weight)
    with torch.no_grad():
        model[5].weight_scale.copy_(scale)
        model[5].weight.copy_(storage.int8_dequantize(q, scale))
    model[6].set_mask((torch.rand(10, 20) > 0.5).float())
    return model


def test_default_plan_reads_the_module_convention(tmp_path, registry):
    model = quantized_model()
    plan = storage.default_plan(model)
    assert plan["1.weight"][0] == "csr" and plan["3.weight"][0] == "codebook"
    assert plan["5.weight"][0] == "int8" and plan["6.weight"][0] == "masked"
    assert plan["1.weight_mask"][0] == "from_mask" and plan["1.weight_codebook"][0] == "from_part"
    assert plan["5.weight_scale"] == ("from_part", {"of": "5.weight", "part": "scale"})
    assert plan["1.weight"][1]["index_bits"] == 5 and plan["1.weight"][1]["huffman"] is True
    assert plan["3.weight"][1]["huffman"] is False and plan["3.weight"][1]["index_bits"] == 3

    size = storage.save_model(tmp_path / "q.slim", model, registry, info=INFO)
    header = storage.read_header(tmp_path / "q.slim")
    for key, entry in header["tensors"].items():  # the structure `slimkit info` reads
        assert {"codec", "shape", "dtype"} <= set(entry)
        assert ("parts" in entry) != (entry["codec"] in storage.DERIVED)
    loaded = storage.load_model(tmp_path / "q.slim", registry)
    assert loaded.size_bytes == size
    for (key, a), (key2, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert key == key2 and exact(a, b), key
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), loaded.model(x))
    # the hints are constructor arguments, so they survive the round trip
    assert loaded.model[3].slimkit_storage == model[3].slimkit_storage


def test_quantized_file_is_much_smaller_than_dense(tmp_path, registry):
    model = quantized_model()
    size = storage.save_model(tmp_path / "q.slim", model, registry, info=INFO)
    parts = {}
    with safe_open(str(tmp_path / "q.slim"), framework="pt") as f:
        for name in f.keys():
            parts[name] = f.get_tensor(name)
    # 5-bit indices (Huffman) of 10 % of fc1 and 3-bit indices of fc2, int8 of fc3
    fc1 = sum(nbytes({k: v}) for k, v in parts.items() if k.startswith("1.weight::"))
    assert fc1 < 64 * 40 * 4 / 12
    assert nbytes({"q": parts["5.weight::q"]}) == 30 * 20
    assert parts["3.weight::idx"].numel() == math.ceil(40 * 30 * 3 / 8)
    assert size < 12_000


def test_instance_hints_choose_csr_for_a_plain_masked_layer(tmp_path, registry):
    model = to_masked(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    model[1].set_mask((torch.rand(10, 64) > 0.95).float())
    model[1].slimkit_storage = {"codec": "csr", "pos_bits": 8}
    assert storage.default_plan(model)["1.weight"][0] == "csr"
    storage.save_model(tmp_path / "h.slim", model, registry, info=INFO)
    assert storage.read_header(tmp_path / "h.slim")["tensors"]["1.weight"]["meta"]["pos_bits"] == 8
    loaded = storage.load_model(tmp_path / "h.slim", registry).model
    assert exact(loaded[1].weight, model[1].weight) and torch.equal(loaded[1].weight_mask, model[1].weight_mask)


def test_a_module_breaking_its_codebook_is_stored_losslessly_with_a_warning(tmp_path, registry):
    model = quantized_model()
    with torch.no_grad():
        model[3].weight[0, 0] += 1e-3  # no longer a codebook value
    with pytest.warns(UserWarning, match="codebook"):
        storage.save_model(tmp_path / "w.slim", model, registry, info=INFO)
    loaded = storage.load_model(tmp_path / "w.slim", registry).model
    assert bits_equal(loaded[3].weight, model[3].weight)
    assert storage.read_header(tmp_path / "w.slim")["tensors"]["3.weight"]["codec"] == "masked"


def test_slimkit_info_reads_quantized_files(tmp_path, registry):
    from slimkit.plugins import set_registry
    from slimkit.summary import describe_model

    model = quantized_model()
    storage.save_model(tmp_path / "q.slim", model, registry, info=INFO)
    set_registry(registry)
    try:
        desc = describe_model(tmp_path / "q.slim")
    finally:
        set_registry(None)
    rows = {r["layer"]: r for r in desc["layers"]}
    assert "csr" in rows["1"]["codec"] and "int8" in rows["5"]["codec"]
    assert desc["ratio_to_dense_fp32"] > 2
    assert rows["1"]["bytes"] < 64 * 40


# --------------------------------------------------------------------------- refusing bad data

def _encoded(codec="csr"):
    codebook = torch.linspace(-1, 1, 8)
    w = codebook[torch.arange(200) % 8]
    w[::3] = 0
    extra = {"mask": (w != 0).float(), "codebook": codebook, "huffman": True, "pos_bits": 4}
    if codec == "codebook":
        w = codebook[torch.arange(200) % 8]
        extra = {"codebook": codebook, "huffman": True}
    parts, meta = storage.encode_tensor(w, codec, extra)
    return w, parts, meta


@pytest.mark.parametrize("damage", ["index_bits_9", "codebook_too_big", "index_past_codebook", "entries_too_many",
                                    "entries_not_int", "pos_bits_0", "lengths_impossible", "missing_part",
                                    "wrong_dtype", "codebook_count"])
def test_codec_refuses_inconsistent_meta_and_parts(damage):
    w, parts, meta = _encoded("csr")
    parts, meta = dict(parts), dict(meta)
    if damage == "index_bits_9":
        meta["index_bits"] = 9
    elif damage == "codebook_too_big":
        meta["index_bits"], meta["codebook_size"] = 2, 8
    elif damage == "index_past_codebook":
        parts["codebook"] = parts["codebook"][:2]
        meta["codebook_size"] = 2
    elif damage == "entries_too_many":
        meta["entries"] = 10**6
    elif damage == "entries_not_int":
        meta["entries"] = "12"
    elif damage == "pos_bits_0":
        meta["pos_bits"] = 0
    elif damage == "lengths_impossible":
        parts["pos_lengths"] = torch.full_like(parts["pos_lengths"], 0x11)
    elif damage == "missing_part":
        del parts["idx"]
    elif damage == "wrong_dtype":
        parts["pos"] = parts["pos"].to(torch.int8)
    elif damage == "codebook_count":
        meta["codebook_size"] = 7
    with pytest.raises(ValueError):
        storage.decode_tensor(parts, meta, "csr", list(w.shape))


def test_codebook_codec_refuses_short_streams():
    w, parts, meta = _encoded("codebook")
    with pytest.raises(ValueError):
        storage.decode_tensor(parts, meta, "codebook", [len(w) * 100])  # more indices than the stream holds


def _rewrite(path, edit):
    import json
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8:8 + n])
    header = json.loads(meta["__metadata__"]["slimkit"])
    edit(header)
    meta["__metadata__"]["slimkit"] = json.dumps(header)
    blob = json.dumps(meta).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


@pytest.mark.parametrize("damage", ["from_part_missing", "from_mask_of_dense", "derived_chain", "shape_vs_arch",
                                    "huge_architecture", "missing_key", "no_parts_listed"])
def test_load_refuses_inconsistent_files(tmp_path, registry, damage):
    path = tmp_path / "m.slim"
    storage.save_model(path, quantized_model(), registry, info=INFO)

    def edit(h):
        t = h["tensors"]
        if damage == "from_part_missing":
            t["1.weight_codebook"]["part"] = "nothing"
        elif damage == "from_mask_of_dense":
            t["6.weight_mask"]["of"] = "6.bias"
        elif damage == "derived_chain":
            t["6.weight_mask"]["of"] = "1.weight_mask"
        elif damage == "shape_vs_arch":
            t["1.weight"]["shape"] = [80, 32]  # same element count, another shape
        elif damage == "huge_architecture":
            h["architecture"]["children"]["1"]["args"]["in_features"] = 2**40
        elif damage == "missing_key":
            del t["1.bias"]
        elif damage == "no_parts_listed":
            t["1.bias"]["parts"] = []
            t["6.weight"]["parts"] = ["bits"]

    _rewrite(path, edit)
    with pytest.raises(UserError) as info:
        storage.load_model(path, registry)
    assert str(path) in str(info.value)
    assert "KeyError" not in str(info.value) and "IndexError" not in str(info.value)


def test_registering_a_derived_codec_name_is_refused():
    with pytest.raises(ValueError):
        storage.register_codec(storage.Codec("from_mask", storage.codecs._encode_dense, storage.codecs._decode_dense))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage.default_plan(quantized_model())  # a consistent model plans without warnings
