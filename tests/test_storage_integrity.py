"""Checksums in .slim files: every stored part carries the CRC-32 of its bytes, loading
verifies them, and any single changed byte in the tensor data is refused with a
UserError naming the tensor; files without checksums still load, reported unverified."""
import json
import struct
import zlib

import pytest
import torch

from slimkit import storage
from slimkit.errors import UserError
from slimkit.plugins import load_registry
from conftest import cli
from slim_models import every_codec_model

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

INFO = {"model": "crc", "input_shape": [1, 6, 6], "num_classes": 4, "data": {"name": "digits"}}
REGISTRY = load_registry()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("crc") / "m.slim"
    storage.save_model(path, every_codec_model(), REGISTRY, info=INFO)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw, json.loads(raw[8:8 + n]), 8 + n


def _slimkit_header(outer: dict) -> dict:
    return json.loads(outer["__metadata__"]["slimkit"])


def test_every_part_records_the_crc32_of_its_bytes_in_the_file(written):
    raw, outer, start = written
    header = _slimkit_header(outer)
    assert header["checksum"] == "crc32"
    codecs = {e["codec"] for e in header["tensors"].values()}
    assert codecs == {"csr", "codebook", "int8", "masked", "dense", "from_mask", "from_part"}
    checked = 0
    for key, entry in header["tensors"].items():
        if entry["codec"] in storage.DERIVED:
            assert "crc32" not in entry
            continue
        assert sorted(entry["crc32"]) == sorted(entry["parts"])
        for part, crc in entry["crc32"].items():
            begin, end = outer[f"{key}::{part}"]["data_offsets"]  # read independently of slimkit
            assert crc == f"{zlib.crc32(raw[start + begin:start + end]):08x}"
            checked += 1
    assert checked == sum(1 for k in outer if k != "__metadata__")


def test_a_checksummed_file_loads_verified_and_exact(written, tmp_path):
    path = tmp_path / "m.slim"
    path.write_bytes(written[0])
    loaded = storage.load_model(path, REGISTRY)
    assert loaded.verified and loaded.integrity == "crc32 verified"
    for a, b in zip(every_codec_model().state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)


def _owner(outer: dict, offset: int) -> str:
    """The safetensors tensor (``KEY::PART``) whose bytes hold data offset ``offset``."""
    for name, info in outer.items():
        if name != "__metadata__" and info["data_offsets"][0] <= offset < info["data_offsets"][1]:
            return name
    raise AssertionError(f"offset {offset} belongs to no tensor")


def _assert_each_flip_refused(written, tmp_path, offsets):
    raw, outer, start = written
    path = tmp_path / "flipped.slim"
    for offset in offsets:
        for xor in ((0xFF, 0x01) if offset % 7 == 0 else (0x01 << (offset % 8),)):
            data = bytearray(raw)
            data[start + offset] ^= xor
            path.write_bytes(bytes(data))
            with pytest.raises(UserError) as err:
                storage.load_model(path, REGISTRY)
            key, part = _owner(outer, offset).split("::")
            message = str(err.value)
            assert "\n" not in message and str(path) in message
            assert f"tensor {key} (part {part}) fails its crc32 check" in message, (offset, message)


@pytest.mark.slow
def test_every_single_changed_byte_in_the_tensor_data_is_refused_naming_its_tensor(written, tmp_path):
    raw, _, start = written
    size = len(raw) - start
    assert 400 < size < 8000  # small enough to try every position
    _assert_each_flip_refused(written, tmp_path, range(size))


def test_a_changed_byte_at_either_end_of_every_part_or_anywhere_in_a_sample_is_refused(written, tmp_path):
    raw, outer, start = written
    ends = {o for name, info in outer.items() if name != "__metadata__" and info["data_offsets"][1] >
            info["data_offsets"][0] for o in (info["data_offsets"][0], info["data_offsets"][1] - 1)}
    _assert_each_flip_refused(written, tmp_path, sorted(ends | set(range(5, len(raw) - start, 37))))


def _rewritten(raw: bytes, outer: dict, start: int, edit) -> bytes:
    outer = json.loads(json.dumps(outer))
    header = _slimkit_header(outer)
    edit(header)
    outer["__metadata__"]["slimkit"] = json.dumps(header)
    blob = json.dumps(outer, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + raw[start:]


def _strip_checksums(header):
    header.pop("checksum")
    for entry in header["tensors"].values():
        entry.pop("crc32", None)


def test_a_file_without_checksums_loads_and_is_reported_unverified(written, tmp_path):
    path = tmp_path / "old.slim"
    path.write_bytes(_rewritten(*written, _strip_checksums))
    assert storage.integrity(storage.read_header(path)) == "unverified"
    loaded = storage.load_model(path, REGISTRY)
    assert not loaded.verified and loaded.integrity.startswith("unverified")
    for a, b in zip(every_codec_model().state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)


def _drop_one_crc(header):
    next(e for e in header["tensors"].values() if "crc32" in e).pop("crc32")


def _drop_the_declaration(header):
    header.pop("checksum")


def _bad_value(header):
    entry = next(e for e in header["tensors"].values() if "crc32" in e)
    entry["crc32"][next(iter(entry["crc32"]))] = -1


def _unknown_algorithm(header):
    header["checksum"] = "md4"


@pytest.mark.parametrize("edit, message", [
    (_drop_one_crc, "no valid crc32 checksum"), (_bad_value, "no valid crc32 checksum"),
    (_unknown_algorithm, "this slimkit checks 'crc32'")])
def test_a_header_that_half_keeps_its_checksums_is_refused(written, tmp_path, edit, message):
    path = tmp_path / "half.slim"
    path.write_bytes(_rewritten(*written, edit))
    with pytest.raises(UserError, match=message):
        storage.load_model(path, REGISTRY)


def test_per_tensor_checksums_are_checked_even_without_the_declaration(written, tmp_path):
    raw, outer, start = written
    data = bytearray(_rewritten(raw, outer, start, _drop_the_declaration))
    data[-1] ^= 0x10  # the last byte of the last tensor
    path = tmp_path / "undeclared.slim"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="fails its crc32 check"):
        storage.load_model(path, REGISTRY)


def test_the_cli_refuses_a_corrupt_file_with_one_line_and_exit_2(written, tmp_path, capfd):
    raw, outer, start = written
    data = bytearray(raw)
    data[start + 3] ^= 0x40
    path = tmp_path / "corrupt.slim"
    path.write_bytes(bytes(data))
    assert cli("evaluate", path) == 2
    stderr = capfd.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "fails its crc32 check" in lines[0] and "Traceback" not in stderr
    assert _owner(outer, 3).split("::")[0] in lines[0]
