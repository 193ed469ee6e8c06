"""Checkpoint layouts, strict loading and the project's own checkpoint format."""
import pytest
import torch

from conftest import SHARED, micro_config
from roma_sfm import CheckpointError, load_checkpoint, load_matcher, save_checkpoint
from roma_sfm.models.roma import RoMa
from roma_sfm.presets import PRESETS, ROMA_OUTDOOR
from roma_sfm.weights import load_public, read_checkpoint_info

REF = SHARED / "reference"


def read_tsv(path):
    rows = {}
    for line in path.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        rows[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return rows


@pytest.mark.parametrize("name", ["roma-outdoor", "roma-indoor"])
def test_paper_preset_matches_public_layout(name):
    if not (REF / "roma_outdoor.keys.tsv").is_file():
        pytest.skip("../shared/reference is absent")
    with torch.device("meta"):
        model = RoMa(PRESETS[name])
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    roma = read_tsv(REF / "roma_outdoor.keys.tsv")
    dino = {"encoder.dinov2." + k: v for k, v in read_tsv(REF / "dinov2_vitl14_pretrain.keys.tsv").items()}
    assert len(roma) == 603 and len(dino) == 343
    assert state == {**roma, **dino}


def _tiny_public_pair(tmp_path):
    """A paper-structured model with a small ViT, saved in the two public files' layouts."""
    cfg = micro_config(coarse_encoder="dinov2", vit_dim=16, vit_depth=1, vit_heads=2, coarse_dim=16)
    torch.manual_seed(0)
    model = RoMa(cfg).eval()
    sd = model.state_dict()
    roma = {k: v for k, v in sd.items() if not k.startswith("encoder.dinov2.")}
    dino = {k[len("encoder.dinov2."):]: v for k, v in sd.items() if k.startswith("encoder.dinov2.")}
    torch.save(roma, tmp_path / "roma.pth")
    torch.save(dino, tmp_path / "dino.pth")
    return cfg, model, roma, dino


def test_public_loading_roundtrip(tmp_path):
    cfg, model, _, _ = _tiny_public_pair(tmp_path)
    loaded = load_public(cfg, tmp_path / "roma.pth", tmp_path / "dino.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("which", ["roma", "dino"])
def test_renamed_key_is_named_in_error(tmp_path, which):
    cfg, _, roma, dino = _tiny_public_pair(tmp_path)
    state = roma if which == "roma" else dino
    key = sorted(state)[3]
    state["renamed." + key] = state.pop(key)
    torch.save(state, tmp_path / f"{which}.pth")
    with pytest.raises(CheckpointError) as e:
        load_public(cfg, tmp_path / "roma.pth", tmp_path / "dino.pth")
    assert f"missing keys: {key}" in str(e.value)
    assert "unexpected keys: renamed." + key in str(e.value)


def test_misshaped_key_is_named(tmp_path):
    cfg, _, roma, _ = _tiny_public_pair(tmp_path)
    roma["decoder.gps.16.pos_conv.weight"] = torch.zeros(3, 2, 1, 1)
    torch.save(roma, tmp_path / "roma.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: decoder\.gps\.16\.pos_conv\.weight"):
        load_public(cfg, tmp_path / "roma.pth", tmp_path / "dino.pth")


def test_missing_dinov2_weights_is_clear(tmp_path):
    cfg, _, _, _ = _tiny_public_pair(tmp_path)
    with pytest.raises(CheckpointError, match="DINOv2"):
        load_public(cfg, tmp_path / "roma.pth", None)


def test_paper_preset_without_weights_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ROMA_SFM_WEIGHTS", str(tmp_path))
    with pytest.raises(CheckpointError, match="roma_outdoor.pth"):
        load_matcher("roma-outdoor")


def test_own_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    model = RoMa(micro_config()).eval()
    meta = {"steps": 123, "data": ["bsds500/train"], "metrics": {"pck@3": 0.5}}
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    cfg, meta2 = read_checkpoint_info(path)
    assert cfg == model.cfg and meta2 == meta
    loaded, meta3 = load_checkpoint(path)
    assert meta3 == meta
    for k, v in model.state_dict().items():
        w = loaded.state_dict()[k]
        if v.is_floating_point():
            assert torch.allclose(w, v.half().float()), k  # stored in fp16
        else:
            assert torch.equal(w, v)
    # the matcher loads it by path and uses the preset's settings
    m = load_matcher(path, device="cpu")
    assert m.cfg == model.cfg and m.metadata["steps"] == 123
    # no pickle: the file is plain safetensors
    assert path.read_bytes()[8:9] == b"{"


def test_corrupt_checkpoint_is_clear(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_public(ROMA_OUTDOOR, bad, bad)


def test_shipped_model_is_default_only_when_recommended(tmp_path, monkeypatch):
    import roma_sfm.weights as w

    path = tmp_path / "roma_tiny.safetensors"
    monkeypatch.setattr(w, "default_checkpoint", lambda: path)
    assert not w.shipped_model_recommended()  # absent
    model = RoMa(micro_config())
    save_checkpoint(path, model, {"steps": 10})
    assert not w.shipped_model_recommended()  # still in training
    save_checkpoint(path, model, {"steps": 10, "recommended": True})
    assert w.shipped_model_recommended()


def test_loading_an_unrecommended_shipped_model_warns(tmp_path, monkeypatch):
    import roma_sfm.weights as wt  # load_model lives there

    path = tmp_path / "roma_tiny.safetensors"
    monkeypatch.setattr(wt, "default_checkpoint", lambda: path)
    monkeypatch.setattr(wt, "DEFAULT_PRESET", "roma-tiny")
    model = RoMa(micro_config())
    save_checkpoint(path, model, {"step": 7})
    with pytest.warns(UserWarning, match="still in training"):
        m = load_matcher(device="cpu")
    assert m.metadata["step"] == 7
    save_checkpoint(path, model, {"step": 8, "recommended": True})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_matcher(device="cpu").metadata["step"] == 8
