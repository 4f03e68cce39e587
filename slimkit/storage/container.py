"""The ``.slim`` container: write a model, read its header, load it back with every check.

A ``.slim`` file is a safetensors file whose metadata holds a JSON header; nothing is
pickled. The header (metadata key ``slimkit``) holds the architecture as a module spec
(see :mod:`slimkit.nn.spec`; a model of classes slimkit does not know as a torch.fx graph,
:mod:`slimkit.nn.graphspec`), the input shape, classes, normalisation and one entry per
state-dict tensor naming the codec that stored it (:mod:`slimkit.storage.codecs`).
Every entry is ``{"codec", "shape", "dtype", "meta", "parts", "crc32"}``; the tensor data
of part ``P`` of key ``K`` is the safetensors tensor ``K::P`` (``slimkit info`` adds up
the parts' bytes). docs/format.md describes the layout byte by byte.

Integrity: ``crc32`` maps each part to the CRC-32 (:func:`zlib.crc32`) of its bytes as
stored, and the header says ``"checksum": "crc32"``. Loading verifies every part before
decoding it and refuses a mismatch naming the tensor. Files written before checksums
existed have neither; they load, and :attr:`LoadedModel.verified` is False.

Hostile files: every count in a header is checked against the shape and against the
bytes actually stored before anything is allocated; the architecture is first built on
PyTorch's ``meta`` device (no memory) to check its size and its tensors against the
header. Any problem is a :class:`~slimkit.errors.UserError` naming the file.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from slimkit.atomic import atomic_write
from slimkit.errors import UserError
from slimkit.nn import graphspec
from slimkit.storage.codecs import CODECS, DERIVED, DTYPES, dtype_name, encode_tensor, shape_numel
from slimkit.storage.plan import default_plan

__all__ = ["FORMAT", "VERSION", "CHECKSUM", "LoadedModel", "save_model", "read_header", "load_model",
           "tensor_crc32", "integrity"]

FORMAT = "slimkit"
VERSION = 1
#: The checksum every part of a file written now carries (the header's ``checksum``).
CHECKSUM = "crc32"
MAX_ELEMENTS = 2**34  # refuse headers describing absurd tensors before allocating
#: A model may hold at most max(MAX_MODEL_ELEMENTS, ELEMENTS_PER_FILE_BYTE x file size)
#: elements: a sparse file can describe far more elements than it has bytes, but not
#: without bound (0.125 bit per element is beyond any codec here on a real model).
MAX_MODEL_ELEMENTS = 2**26
ELEMENTS_PER_FILE_BYTE = 64


def tensor_crc32(tensor: torch.Tensor) -> str:
    """CRC-32 of ``tensor``'s bytes as safetensors stores them (C order, little endian), as eight
    hex digits: a fixed width keeps the header's size independent of the weights, so two files
    of one architecture and codec plan have the same size."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    crc = zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0
    return f"{crc:08x}"


def integrity(header: dict) -> str:
    """How a file with this header is protected: ``"crc32"``, or ``"unverified"`` (no checksums)."""
    return CHECKSUM if _has_checksums(header) else "unverified"


def _has_checksums(header: dict) -> bool:
    entries = header.get("tensors")
    return "checksum" in header or (isinstance(entries, dict) and
                                    any(isinstance(e, dict) and "crc32" in e for e in entries.values()))


# --------------------------------------------------------------------------- save

def save_model(path, model: torch.nn.Module, registry, *, info: dict, plan: dict | None = None) -> int:
    """Write ``model`` to ``path`` atomically; returns the size in bytes of the written file.

    ``info`` goes into the header (model name, input_shape, num_classes, data, ...).
    ``plan`` maps state-dict keys to ``(codec, extra)`` and overrides :func:`default_plan`.
    Keys whose codec is ``from_mask`` are rebuilt from the weight's kept positions,
    ``from_part`` from a part of another entry (``extra = {"of": key, "part": name}``).
    """
    path = Path(path)
    # a model with classes slimkit does not know is written as its torch.fx graph (and its
    # state dict is then the traced GraphModule's: the same keys, less what forward never uses)
    model, arch = graphspec.describe(model, registry.modules)
    plan = {**default_plan(model), **(plan or {})}
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    state = model.state_dict()
    for key, value in state.items():
        value = value.detach().cpu()
        codec_name, extra = plan.get(key, ("dense", {}))
        entry = {"codec": codec_name, "shape": list(value.shape), "dtype": dtype_name(value.dtype)}
        if codec_name in DERIVED:
            entry["of"] = extra["of"]
            if codec_name == "from_part":
                entry["part"] = extra["part"]
        else:
            parts, meta = encode_tensor(value, codec_name, extra)
            entry["meta"] = meta
            entry["parts"] = sorted(parts)
            entry["crc32"] = {}
            for part, tensor in parts.items():
                tensors[f"{key}::{part}"] = tensor.contiguous()
                entry["crc32"][part] = tensor_crc32(tensor)
        entries[key] = entry
    for key, entry in entries.items():
        if entry["codec"] in DERIVED:
            source = entries.get(entry["of"], {})
            if entry["codec"] == "from_part" and entry["part"] not in source.get("parts", ()):
                raise ValueError(f"{key}: {entry['of']} has no part {entry['part']!r} to derive it from")
            codec = CODECS.get(source.get("codec"))
            if entry["codec"] == "from_mask" and (codec is None or codec.kept is None):
                raise ValueError(f"{key}: {entry['of']} is not stored by a codec that records kept positions")
    header = {"format": FORMAT, "version": VERSION, "checksum": CHECKSUM, "architecture": arch,
              "tensors": entries, **info}
    data = safetensors_bytes(tensors, metadata={"slimkit": json.dumps(header, separators=(",", ":"))})
    with atomic_write(path) as f:
        f.write(data)
    return path.stat().st_size


# --------------------------------------------------------------------------- load

@dataclass
class LoadedModel:
    model: torch.nn.Module
    header: dict
    size_bytes: int
    path: Path
    #: True when every stored part was checked against its checksum; False for a file
    #: written before checksums existed (it loaded, but corruption would go unnoticed).
    verified: bool = False

    @property
    def integrity(self) -> str:
        """``"crc32 verified"`` or ``"unverified (no checksums: written before slimkit recorded them)"``."""
        if self.verified:
            return f"{CHECKSUM} verified"
        return "unverified (no checksums: written before slimkit recorded them)"


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
    """The header's tensor entries, each checked for form (codec, shape, dtype, parts, meta,
    and a checksum per part when the file has checksums: then every stored entry has them)."""
    entries = header.get("tensors")
    if not isinstance(entries, dict):
        raise ValueError("'tensors' must be an object")
    checked = _has_checksums(header)
    if "checksum" in header and header["checksum"] != CHECKSUM:
        raise ValueError(f"the header's checksum is {header.get('checksum')!r}; this slimkit checks {CHECKSUM!r}")
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise ValueError(f"entry {key} must be an object")
        shape = entry.get("shape")
        if not isinstance(shape, list) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise ValueError(f"tensor {key} has an impossible shape {shape!r}")
        if shape_numel(shape) > MAX_ELEMENTS:
            raise ValueError(f"tensor {key} has an impossible shape {shape}")
        if entry.get("dtype") not in DTYPES:
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
        if checked:
            sums = entry.get("crc32")
            if not isinstance(sums, dict) or set(sums) != set(parts) or not all(
                    _is_crc_text(v) for v in sums.values()):
                raise ValueError(f"tensor {key} has no valid {CHECKSUM} checksum for each of its parts")
    return entries


def _is_crc_text(value) -> bool:
    return isinstance(value, str) and len(value) == 8 and all(c in "0123456789abcdef" for c in value)


def _model_limit(size_bytes: int) -> int:
    return max(MAX_MODEL_ELEMENTS, ELEMENTS_PER_FILE_BYTE * size_bytes)


def _probe(registry, arch, entries: dict, limit: int) -> None:
    """Build the architecture on the meta device (no memory) and check it against the header."""
    try:
        with torch.device("meta"):
            probe = graphspec.build(arch, registry.modules)
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
        checked = _has_checksums(header)
        limit = _model_limit(size)
        declared = sum(shape_numel(e["shape"]) for e in entries.values())
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
                    if checked and tensor_crc32(parts[part]) != entry["crc32"][part]:
                        raise ValueError(f"tensor {key} (part {part}) fails its {CHECKSUM} check: its bytes "
                                         "changed after it was written; restore the file or write it again")
                stored_parts[key] = parts
                shape, dtype = entry["shape"], DTYPES[entry["dtype"]]
                try:
                    state[key] = CODECS[entry["codec"]].decode(parts, entry.get("meta", {}), shape, dtype)
                except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
                    raise ValueError(f"tensor {key} ({entry['codec']}): {exc}") from None
        for key, entry in entries.items():
            if entry["codec"] not in DERIVED:
                continue
            source = entries[entry["of"]]
            shape, dtype = entry["shape"], DTYPES[entry["dtype"]]
            if entry["codec"] == "from_mask":
                codec = CODECS[source["codec"]]
                if codec.kept is None:
                    raise ValueError(f"mask {key} refers to {entry['of']}, whose codec {source['codec']} "
                                     "records no kept positions")
                if shape_numel(shape) != shape_numel(source["shape"]):
                    raise ValueError(f"mask {key} has {shape_numel(shape)} elements, "
                                     f"its weight {shape_numel(source['shape'])}")
                kept = codec.kept(stored_parts[entry["of"]], source.get("meta", {}), source["shape"])
                state[key] = kept.reshape(shape).to(dtype)
            else:
                part = stored_parts[entry["of"]].get(entry["part"])
                if part is None or tuple(part.shape) != tuple(shape) or not part.is_floating_point():
                    raise ValueError(f"tensor {key} is derived from part {entry['part']!r} of {entry['of']}, "
                                     f"which is missing or not shaped {shape}")
                state[key] = part.to(dtype).clone()
        model = graphspec.build(arch, registry.modules)
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
    return LoadedModel(model, header, size, path, verified=checked)
