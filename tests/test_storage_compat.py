"""Files written before the storage package and checksums still load: each fixture in
tests/fixtures/ (written by the release before) evaluates to exactly the accuracy that
release measured, and is reported as unverified (it has no checksums)."""
import json
from pathlib import Path

import pytest

from slimkit import storage
from slimkit.api import DistInfo
from slimkit.data import load_data
from slimkit.plugins import get_registry
from slimkit.progress import Reporter
from slimkit.train import Trainer

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = json.loads((FIXTURES / "v1-slim-accuracy.json").read_text())["files"]


def evaluate(loaded, spec: str, seed: int) -> tuple[float, int]:
    """What `slimkit evaluate FILE --data SPEC --seed SEED` computes."""
    bundle = load_data(spec, get_registry().datasets, seed=seed)
    trainer = Trainer(device="cpu", dist=DistInfo(), seed=seed, batch_size=512, reporter=Reporter(False))
    return trainer.evaluate(loaded.model, bundle, "test"), bundle.size("test")


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_a_file_of_the_previous_release_evaluates_to_the_same_accuracy(name):
    want = RECORDED[name]
    path = FIXTURES / name
    assert path.stat().st_size < 300_000
    header = storage.read_header(path)
    assert "checksum" not in header and storage.integrity(header) == "unverified"
    loaded = storage.load_model(path, get_registry())
    assert loaded.verified is False and loaded.integrity.startswith("unverified")
    accuracy, examples = evaluate(loaded, want["data"], want["seed"])
    assert examples == want["examples"]
    assert accuracy == want["accuracy"]


def test_a_fixture_saved_again_gets_checksums_and_the_same_weights(tmp_path):
    registry = get_registry()
    old = storage.load_model(FIXTURES / "v1-lenet300-prune-quantize.slim", registry)
    info = {k: old.header[k] for k in ("model", "input_shape", "num_classes", "data") if k in old.header}
    storage.save_model(tmp_path / "new.slim", old.model, registry, info=info)
    new = storage.load_model(tmp_path / "new.slim", registry)
    assert new.verified and new.integrity == "crc32 verified"
    assert {k: e["codec"] for k, e in new.header["tensors"].items()} == \
        {k: e["codec"] for k, e in old.header["tensors"].items()}
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    assert all(old_state[k].equal(new_state[k]) for k in old_state)


def test_info_says_whether_a_file_was_verified():
    """`slimkit info` shows a file's integrity: crc32-verified, or written before checksums."""
    from slimkit.summary import describe_model

    old = FIXTURES / "v1-lenet300-prune.slim"
    assert describe_model(old)["integrity"].startswith("unverified")
