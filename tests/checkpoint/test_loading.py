"""Checkpoint loading: every weight layout, broken folders, strict key checks that list every problem, released
folders with a missing / extra key or another model type, and the save_pretrained -> load_pretrained round trip."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import unimm
from conftest import GOLDEN
from unimm.checkpoint.io import load_into, load_weights
from unimm.pretrained import save_pretrained
from unimm.registry import CheckpointError


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def write_sharded(folder, state, suffix):
    """Two shards plus an index in the layout transformers writes."""
    keys = sorted(state)
    shards = {f"model-0000{i + 1}-of-00002.{suffix}": keys[i::2] for i in range(2)}
    weight_map = {}
    for name, shard_keys in shards.items():
        part = {k: state[k] for k in shard_keys}
        save_file(part, str(folder / name)) if suffix == "safetensors" else torch.save(part, folder / name)
        weight_map.update({k: name for k in shard_keys})
    index = "model.safetensors.index.json" if suffix == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / index, sorted(shards)


@pytest.mark.parametrize("layout", ["model.safetensors", "pytorch_model.bin", "sharded-bin", "sharded-safetensors"])
def test_load_weights_layouts(tmp_path, tiny, layout):
    state = tiny.state_dict()
    if layout == "model.safetensors":
        save_file(state, str(tmp_path / layout))
    elif layout == "pytorch_model.bin":
        torch.save(state, tmp_path / layout)
    else:
        write_sharded(tmp_path, state, layout.split("-")[1])
    loaded = load_weights(tmp_path)
    assert sorted(loaded) == sorted(state)
    for key in state:
        assert torch.equal(loaded[key], state[key])
    fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    load_into(fresh, loaded)
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), tiny(x))


def test_missing_shard(tmp_path, tiny):
    index, shards = write_sharded(tmp_path, tiny.state_dict(), "bin")
    (tmp_path / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"{index} lists shard {shards[1]}, which is not in {tmp_path}"):
        load_weights(tmp_path)


def test_index_naming_a_tensor_no_shard_holds(tmp_path, tiny):
    index, _ = write_sharded(tmp_path, tiny.state_dict(), "safetensors")
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = next(iter(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"names 1 tensors that no shard holds: \['ghost\.weight'\]"):
        load_weights(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(torch.randint(0, 256, (300,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match=f"cannot read {tmp_path / name}: "):
        load_weights(tmp_path)


def test_no_weights(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"no weights in {tmp_path}: expected one of model.safetensors, "):
        load_weights(tmp_path)


def test_load_into_lists_every_problem_in_one_error(tiny):
    state = dict(tiny.state_dict())
    del state["0.bias"]
    state["2.weight"] = torch.zeros(5, 5)
    state["9.weight"] = torch.zeros(1)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_into(tiny, state, source="my checkpoint")
    message = str(err.value)
    assert message.startswith("my checkpoint does not match the model:")
    assert "missing keys (1): 0.bias" in message
    assert "unexpected keys (1): 9.weight" in message
    assert "shape mismatches (1): 2.weight (5, 5) vs model (2, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # nothing half-loaded


def test_load_into_caps_long_lists():
    model = nn.ModuleList([nn.Linear(1, 1) for _ in range(15)])
    with pytest.raises(CheckpointError, match=r"missing keys \(30\): .*, \.\.\. \(10 more\)"):
        load_into(model, {})
    load_into(model, {}, ignore_missing=("",))  # every key may be absent


# -- released folders -------------------------------------------------------------------------------------------
@pytest.fixture
def flow_copy(tmp_path):
    folder = tmp_path / "janusflow_tiny"
    shutil.copytree(GOLDEN / "janusflow_tiny", folder)
    return folder


def edit_weights(folder, edit):
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_released_folder_with_a_deleted_key(flow_copy):
    edit_weights(flow_copy, lambda s: s.pop("language_model.model.norm.weight"))
    with pytest.raises(CheckpointError) as err:
        unimm.load_pretrained(flow_copy)
    message = str(err.value)
    assert f"released janusflow checkpoint {flow_copy} does not match the model" in message
    assert "missing keys (1): backbone.lm.model.norm.weight" in message


def test_released_folder_with_an_extra_key(flow_copy):
    edit_weights(flow_copy, lambda s: s.update({"language_model.model.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): backbone\.lm\.model\.extra\.weight"):
        unimm.load_pretrained(flow_copy)
    edit_weights(flow_copy, lambda s: s.update({"mystery.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"1 released key\(s\) belong to no known part: \['mystery\.weight'\]"):
        unimm.load_pretrained(flow_copy)


def test_released_folder_of_another_model_type(flow_copy):
    config = json.loads((flow_copy / "config.json").read_text())
    config["model_type"] = "llava"
    (flow_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json has model_type 'llava'; unimm reads released "
                                              r"'multi_modality' checkpoints"):
        unimm.load_pretrained(flow_copy)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"model folder not found: {tmp_path / 'nope'}"):
        unimm.load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has neither config.yaml .* nor config.json"):
        unimm.load_pretrained(tmp_path)


# -- round trip ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["janus_tiny", "janusflow_tiny"])
@torch.no_grad()
def test_save_then_load_gives_identical_outputs(tmp_path, name):
    golden = load_file(str(GOLDEN / name / "cases.safetensors"))
    batch = {k[len("und."):]: v for k, v in golden.items() if k.startswith("und.") and k != "und.greedy_tokens"}
    model, processor, cfg = unimm.load_pretrained(GOLDEN / name)
    saved = save_pretrained(model, processor, cfg, tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir() if p.suffix in (".yaml", ".safetensors")) == [
        "config.yaml", "model.safetensors"]
    again, processor2, cfg2 = unimm.load_pretrained(saved)
    assert list(again.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert torch.equal(again(**batch), model(**batch))
    assert processor2.settings() == processor.settings()
    text = [{"role": "user", "content": "<image>\nhi"}, {"role": "assistant", "content": ""}]
    image = GOLDEN / name / "und_image.png"
    assert torch.equal(processor2(text, [image])["input_ids"], processor(text, [image])["input_ids"])
    if name == "janusflow_tiny":  # the VAE now lives inside the checkpoint, not in a separate folder
        assert cfg2.model.generator.autoencoder.get("path") is None
        assert any(k.startswith("generator.autoencoder.") for k in load_file(str(saved / "model.safetensors")))
