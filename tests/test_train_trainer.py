"""Trainer: exact resume after an interruption, checkpoints, schedule, logs, init_from, CLI."""
import csv
import json
import os
import signal

import cv2
import numpy as np
import pytest
import torch

from roma_sfm.presets import RefinerConfig, get_preset
from roma_sfm.train.trainer import TrainConfig, config_from_args, export_weights, lr_factor, train

TINY = get_preset("roma-tiny").replace(
    name="test-tiny", vgg_widths=(4, 8, 8, 8), vgg_convs=(1, 1, 1, 1), conv_coarse_dims=(8,), coarse_dim=8,
    coarse_context_depth=0,
    proj_dims={16: 8, 8: 8, 4: 4, 2: 2, 1: 2}, gp_dim=8, dec_dim=16, dec_depth=1, dec_heads=2,
    refiners={16: RefinerConfig(8, 2, 1, hidden_blocks=1), 8: RefinerConfig(8, 2, 1, hidden_blocks=0),
              4: RefinerConfig(4, 2, 1, hidden_blocks=0), 2: RefinerConfig(2, 2, 0, hidden_blocks=0),
              1: RefinerConfig(2, 2, 0, hidden_blocks=0)})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir()
        for i in range(3):
            small = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
            cv2.imwrite(str(root / split / f"{i}.png"), cv2.resize(small, (200, 150), interpolation=cv2.INTER_CUBIC))
    return root


def tiny_cfg(photos, out_dir, **kw) -> TrainConfig:
    base = dict(model=TINY.to_dict(), train_roots=(str(photos / "train"),), val_root=str(photos / "val"),
                val_pairs=2, resolution=(56, 56), batch_size=2, steps=6, lr=1e-3, warmup_steps=2, decay="step",
                grad_clip=1.0, ckpt_every=4, val_every=3, log_every=1, num_workers=0, progress=False,
                out_dir=str(out_dir), seed=3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_interrupted_run_resumes_to_identical_weights(photos, tmp_path):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, else Python's default
    ref = train(tiny_cfg(photos, tmp_path / "ref"))
    assert ref["finished"] and ref["step"] == 6

    def interrupt(step, parts):
        if step == 3:  # not a periodic checkpoint step: the signal handler must save it
            os.kill(os.getpid(), signal.SIGINT)

    first = train(tiny_cfg(photos, tmp_path / "run"), on_step=interrupt)
    assert first["stopped_by"] == signal.SIGINT and first["step"] == 3 and not first["finished"]
    assert load(tmp_path / "run" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    second = train(tiny_cfg(photos, tmp_path / "run"))
    assert second["finished"] and second["step"] == 6

    a, b = load(tmp_path / "ref" / "last.pt"), load(tmp_path / "run" / "last.pt")
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():  # parameters and BatchNorm running statistics
        assert torch.equal(v, b["model"][k]), k
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    # training moved the weights (the comparison above is not trivially true)
    init = train(tiny_cfg(photos, tmp_path / "zero", steps=1, lr=0.0, weight_decay=0.0, val_root=None))
    z = load(tmp_path / "zero" / "last.pt")["model"]
    assert any(not torch.equal(z[k], a["model"][k]) for k in z if k.endswith("weight"))
    assert init["finished"]
    # the CSV log has each step exactly once after the resume; validation ran at steps 3 and 6
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(float(r["total"])) for r in rows)
    with open(tmp_path / "run" / "val.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3, 6]
    assert not [p for p in os.listdir(tmp_path / "run") if ".tmp" in p]  # atomic writes leave nothing


def test_init_from_starts_with_those_weights_and_a_fresh_optimizer(photos, tmp_path):
    train(tiny_cfg(photos, tmp_path / "a", steps=2, val_root=None))
    src = load(tmp_path / "a" / "last.pt")
    export_weights(str(tmp_path / "a" / "last.pt"), str(tmp_path / "a.safetensors"), dtype=torch.float32)
    seen = {}
    res = train(tiny_cfg(photos, tmp_path / "b", steps=1, val_root=None, lr=0.0, weight_decay=0.0,
                         init_from=str(tmp_path / "a.safetensors")),
                on_step=lambda s, p: seen.setdefault("step", s))
    assert res["finished"] and seen["step"] == 1  # counted from 0: not a resume of run a
    b = load(tmp_path / "b" / "last.pt")
    for k, v in src["model"].items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, b["model"][k]), k
    assert all(st["step"] == 1 for st in b["optimizer"]["state"].values())
    # the exported weights count the steps of both runs (the model card reports the total)
    export_weights(str(tmp_path / "b" / "last.pt"), str(tmp_path / "b.safetensors"))
    from roma_sfm.weights import read_checkpoint_info

    meta = read_checkpoint_info(tmp_path / "b.safetensors")[1]
    assert (meta["step"], meta["run_step"]) == (3, 1)
    assert meta["train_seconds"] > meta["run_seconds"] > 0


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, decay="step")
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(89, cfg) == 1.0 and lr_factor(90, cfg) == pytest.approx(0.1)
    cos = TrainConfig(steps=110, warmup_steps=10, decay="cosine")
    assert lr_factor(10, cos) == pytest.approx(1.0) and lr_factor(60, cos) == pytest.approx(0.5)
    assert lr_factor(110, cos) == pytest.approx(0.0, abs=1e-12)


def test_config_from_args(tmp_path):
    cfg = config_from_args(["--steps", "7", "--resolution", "112", "168", "--no-resume", "--lr", "1e-3",
                            "--train-roots", "a", "b", "--loss", '{"c": 0.001}', "--init-from", "w.pt"])
    assert cfg.steps == 7 and cfg.resolution == (112, 168) and cfg.resume is False and cfg.lr == 1e-3
    assert cfg.train_roots == ("a", "b") and cfg.loss == {"c": 0.001} and cfg.init_from == "w.pt"
    assert cfg.batch_size == TrainConfig().batch_size
    # a train_config.json of an older run still loads: its "amp" became "precision"
    old = tmp_path / "train_config.json"
    for amp, want in ((False, "fp32"), (True, TrainConfig().precision)):
        old.write_text(json.dumps({"steps": 3, "amp": amp}))
        assert config_from_args(["--config", str(old)]).precision == want


def test_bf16_precision_trains_on_the_cpu(photos, tmp_path, monkeypatch):
    """precision "bf16" runs the forward under bfloat16 autocast on the CPU (the matcher's
    vocabulary); the losses stay finite and the weights stay float32."""
    import roma_sfm.train.trainer as trainer

    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(trainer.torch, "autocast", spy)
    res = train(tiny_cfg(photos, tmp_path / "bf16", precision="bf16", steps=2, val_every=0, val_root=None))
    assert res["finished"] and res["skipped_steps"] == 0 and np.isfinite(res["last_losses"]["total"])
    assert ("cpu", torch.bfloat16, True) in seen
    assert all(v.dtype == torch.float32 for v in load(tmp_path / "bf16" / "last.pt")["model"].values()
               if v.is_floating_point())
    with pytest.raises(ValueError, match="precision"):
        train(tiny_cfg(photos, tmp_path / "bad", precision="fp8", steps=1))


def test_bad_resolution_is_rejected(photos, tmp_path):
    with pytest.raises(ValueError, match="multiples of 56"):
        train(tiny_cfg(photos, tmp_path / "r", resolution=(70, 70)))


def test_rendered_scenes_feed_training(photos, tmp_path):
    """p_scene = 1: every sample is a rendered 3-D pair; the run trains and its checkpoint resumes."""
    res = train(tiny_cfg(photos, tmp_path / "scenes", p_scene=1.0, steps=2, val_every=0, val_root=None,
                         scenes={"layouts": ["object"]}))
    assert res["finished"] and res["skipped_steps"] == 0
    assert np.isfinite(res["last_losses"]["total"])
    assert load(tmp_path / "scenes" / "last.pt")["train_cfg"]["p_scene"] == 1.0


def test_weights_metadata_names_the_training_data():
    from roma_sfm.train.checkpoints import training_data_summary

    plain = training_data_summary({"p_scene": 0.0, "train_roots": ["a/train"]})
    assert "BSDS500" in plain and "3-D" not in plain and "multi-view" not in plain
    full = training_data_summary({"p_scene": 0.6, "scene_roots": ["x/multiview"], "p_tracks": 0.2,
                                  "track_indexes": ["runs/lund.npz"]})
    assert "rendered 3-D scenes" in full and "multiview" in full and "(lund)" in full


def test_soups_and_fine_tunes_keep_every_dataset_of_their_sources(tmp_path):
    """A soup's metadata names the data of all its members, and a run started from weights names what
    those were trained on besides its own (the data's licences follow the weights)."""
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.checkpoints import average_weights, export_weights, merge_training_data, prior_training
    from roma_sfm.weights import load_checkpoint, save_checkpoint

    assert merge_training_data(["a; b", None, "b; c", ""]) == "a; b; c"
    paths = [str(tmp_path / f"m{i}.safetensors") for i in range(2)]
    for p, data in zip(paths, ["warps; scenes", "warps; tracks"]):
        save_checkpoint(p, RoMa(TINY), {"step": 5, "train_seconds": 2.0, "training_data": data}, dtype=torch.float32)
    average_weights(paths, [0.5, 0.5], str(tmp_path / "soup.safetensors"))
    assert load_checkpoint(tmp_path / "soup.safetensors")[1]["training_data"] == "warps; scenes; tracks"
    prior = prior_training(str(tmp_path / "soup.safetensors"))
    assert prior["steps"] == 5 and prior["training_data"] == "warps; scenes; tracks"
    # a run from the soup on 2-D warps alone (a training checkpoint as the trainer writes it)
    torch.save({"model": RoMa(TINY).state_dict(), "model_cfg": TINY.to_dict(), "step": 3, "elapsed": 1.0,
                "train_cfg": {"p_scene": 0.0}, "prior": prior}, tmp_path / "last.pt")
    export_weights(str(tmp_path / "last.pt"), str(tmp_path / "run.safetensors"))
    meta = load_checkpoint(tmp_path / "run.safetensors")[1]
    assert meta["step"] == 8 and meta["training_data"].startswith("warps; scenes; tracks; synthetic 2-D warps")


def test_init_from_a_smaller_model_grows_it(photos, tmp_path):
    """Weights of a model without coarse context start a model with it: the old weights load,
    only the new blocks keep their initialisation, and the grown model first behaves as the old one."""
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.trainer import init_weights

    train(tiny_cfg(photos, tmp_path / "a", steps=1, val_root=None))
    export_weights(str(tmp_path / "a" / "last.pt"), str(tmp_path / "a.safetensors"), dtype=torch.float32)
    small, grown = RoMa(TINY).eval(), RoMa(TINY.replace(coarse_context_depth=1, coarse_context_heads=2)).eval()
    assert init_weights(small, str(tmp_path / "a.safetensors")) == []
    new = init_weights(grown, str(tmp_path / "a.safetensors"))
    assert new and all(k.startswith("encoder.conv_coarse.context.") for k in new)
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        torch.testing.assert_close(grown.encode(x)[16], small.encode(x)[16], atol=1e-3, rtol=0)
    # extra coarse scales grow it the same way: only their mixing convs are new, and start at zero
    multi = RoMa(TINY.replace(coarse_extra_scales=(2,))).eval()
    new = init_weights(multi, str(tmp_path / "a.safetensors"))
    assert new and all(k.startswith("encoder.conv_coarse.scale_mix.") for k in new)
    with torch.no_grad():
        torch.testing.assert_close(multi.encode(x)[16], small.encode(x)[16], atol=1e-6, rtol=0)
    # the other way round the file lacks nothing but holds weights the small model has no place for
    torch.save(grown.state_dict(), tmp_path / "grown.pt")
    with pytest.raises(ValueError, match="no place for"):
        init_weights(RoMa(TINY), str(tmp_path / "grown.pt"))


def test_a_second_pass_refiner_set_grows_from_the_shared_one_and_trains_alone(photos, tmp_path):
    """second_pass_refiners: the second pass runs a refiner set of its own, which init_from copies
    from the shared set (so the grown model matches as before); with everything else frozen, a
    two-pass run changes that set only."""
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.trainer import init_weights

    train(tiny_cfg(photos, tmp_path / "a", steps=1, val_root=None))
    export_weights(str(tmp_path / "a" / "last.pt"), str(tmp_path / "a.safetensors"), dtype=torch.float32)
    split = TINY.replace(second_pass_refiners=True)
    shared, own = RoMa(TINY).eval(), RoMa(split).eval()
    init_weights(shared, str(tmp_path / "a.safetensors"))
    assert init_weights(own, str(tmp_path / "a.safetensors")) == []  # nothing left at its initialisation
    assert sorted(own.decoder.conv_refiner_hr) == ["1", "2", "4", "8"]
    x, y, x2, y2 = torch.randn(1, 3, 56, 56), torch.randn(1, 3, 56, 56), torch.randn(1, 3, 84, 84), torch.randn(1, 3, 84, 84)
    with torch.no_grad():
        first = shared(x, y)
        a, b = shared(x2, y2, first_pass=first[1]), own(x2, y2, first_pass=first[1])
        torch.testing.assert_close(b[1]["flow"], a[1]["flow"], rtol=0, atol=0)
        own.decoder.conv_refiner_hr["1"].out_conv.bias.add_(1.0)  # the second pass runs its own set
        assert not torch.equal(own(x2, y2, first_pass=first[1])[1]["flow"], a[1]["flow"])
        torch.testing.assert_close(own(x, y)[1]["flow"], first[1]["flow"], rtol=0, atol=0)  # the first does not
    frozen = ("encoder", "decoder.embedding_decoder", "decoder.gps", "decoder.proj", "decoder.conv_refiner")
    train(tiny_cfg(photos, tmp_path / "b", model=split.to_dict(), init_from=str(tmp_path / "a.safetensors"),
                   freeze=frozen, second_pass=1.5, steps=2, val_root=None))
    before, after = load(tmp_path / "a" / "last.pt")["model"], load(tmp_path / "b" / "last.pt")["model"]
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(after[k], before[k.replace("conv_refiner_hr", "conv_refiner")])
               for k in after if k.startswith("decoder.conv_refiner_hr.") and k.endswith("weight"))


def test_lr_scale_gives_a_prefix_its_own_learning_rate():
    """lr_scale: the parameters under a prefix train at their part's lr times the multiplier; the
    others keep theirs; a prefix that names nothing is an error, not a silent no-op."""
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.trainer import build_optimizer

    model = RoMa(TINY.replace(coarse_context_depth=1, coarse_context_heads=2))
    cfg = TrainConfig(lr=1e-3, encoder_lr=2e-4, lr_scale={"encoder.conv_coarse.context": 10})
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        want = 2e-3 if n.startswith("encoder.conv_coarse.context") else 2e-4 if n.startswith("encoder.") else 1e-3
        assert lr_of[id(p)] == pytest.approx(want), n
    assert len(lr_of) == sum(1 for _ in model.parameters())
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(model, TrainConfig(lr_scale={"encoder.nothing": 2}))


def test_frozen_parts_keep_their_weights_and_batchnorm_statistics(photos, tmp_path):
    """freeze: the parameters and BatchNorm buffers under the prefixes come out of training as they
    went in (validation included), while the refiners change; a prefix that names nothing is an error."""
    train(tiny_cfg(photos, tmp_path / "a", steps=1, val_root=None))
    export_weights(str(tmp_path / "a" / "last.pt"), str(tmp_path / "a.safetensors"), dtype=torch.float32)
    frozen = ("encoder", "decoder.embedding_decoder")
    train(tiny_cfg(photos, tmp_path / "b", init_from=str(tmp_path / "a.safetensors"), freeze=frozen))
    before, after = load(tmp_path / "a" / "last.pt")["model"], load(tmp_path / "b" / "last.pt")["model"]
    kept = [k for k in before if k.startswith(frozen)]
    assert any("running_mean" in k for k in kept)
    for k in kept:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("decoder.conv_refiner"))
    assert config_from_args(["--freeze", "encoder", "decoder.gps"]).freeze == ("encoder", "decoder.gps")
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.trainer import freeze_parts

    model = RoMa(TINY)
    freeze_parts(model, ["decoder.proj.1"])  # whole name components: not decoder.proj.16
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "decoder.proj.16.0.weight" in trainable and "decoder.proj.1.0.weight" not in trainable
    with pytest.raises(ValueError, match="freeze: no parameter"):
        train(tiny_cfg(photos, tmp_path / "c", freeze=("encoder.nothing",)))


def test_second_pass_trains_the_refiners_from_the_first_pass(photos, tmp_path):
    """second_pass: pairs are made at the second pass's size and shrunk for the first; the second
    pass starts from the first pass's warp, its losses are logged, and its gradient reaches the
    refiners but not the coarse matcher, which it never runs."""
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.data import SyntheticPairs, collate
    from roma_sfm.train.trainer import at_size, pass_loss, second_pass_size
    from roma_sfm.train.losses import LossConfig

    assert second_pass_size((448, 448), 1.5) == (672, 672) and second_pass_size((56, 112), 1.5) == (80, 168)
    res = train(tiny_cfg(photos, tmp_path / "two", steps=2, val_root=None, second_pass=1.5))
    assert res["finished"] and res["skipped_steps"] == 0
    with open(tmp_path / "two" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(np.isfinite(float(r["2nd_reg1"])) for r in rows)

    ds = SyntheticPairs([str(photos / "train")], (80, 80), seed=0, length=2)
    batch = collate([ds[0], ds[1]])
    assert at_size(batch, (80, 80)) is batch
    first = at_size(batch, (56, 56))
    assert first["im_A"].shape[-2:] == (56, 56) and first["warp"].shape[1:3] == (56, 56)
    assert first["mask"].shape == (2, 56, 56) and batch["im_A"].shape[-2:] == (80, 80)
    torch.manual_seed(0)
    model = RoMa(TINY).train()
    start = {k: v.detach() for k, v in model(first["im_A"], first["im_B"])[1].items() if k in ("flow", "certainty")}
    second = model(batch["im_A"], batch["im_B"], first_pass=start)
    assert sorted(second) == [1, 2, 4, 8] and second[1]["flow"].shape[-2:] == (80, 80)
    loss, _ = pass_loss(second, batch, (80, 80), LossConfig())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["decoder.conv_refiner.1.out_conv.weight"].abs().sum() > 0
    for n, g in grads.items():
        if n.startswith(("decoder.embedding_decoder", "decoder.gps", "encoder.conv_coarse", "decoder.conv_refiner.16")):
            assert g is None or not g.any(), n


def test_moving_average_of_the_weights_is_kept_resumed_validated_and_exported(photos, tmp_path):
    """ema_decay: after each step the average moves (1 - decay) of the way to the weights; it is saved
    in the checkpoint and survives a resume exactly; export writes it (or, asked, the raw weights)."""
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.trainer import WeightAverage
    from roma_sfm.weights import load_checkpoint

    torch.manual_seed(0)
    model = RoMa(TINY)
    avg = WeightAverage(model, 0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.decoder.proj["16"][1].num_batches_tracked.fill_(7)
    avg.update(model)
    w = "decoder.proj.16.0.weight"
    torch.testing.assert_close(avg.state[w], start[w] + 0.25)
    assert int(avg.state["decoder.proj.16.1.num_batches_tracked"]) == 7  # integers are copied
    torch.testing.assert_close(avg.averaged(model).state_dict()[w], start[w] + 0.25)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, 1.0)

    ref = train(tiny_cfg(photos, tmp_path / "ref", ema_decay=0.5))
    ck = load(tmp_path / "ref" / "last.pt")
    assert ref["finished"] and "ema" in ck
    moved = [k for k in ck["model"] if k.endswith("weight") and not torch.equal(ck["ema"][k], ck["model"][k])]
    assert moved  # the average lags the weights

    def interrupt(step, parts):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    train(tiny_cfg(photos, tmp_path / "run", ema_decay=0.5), on_step=interrupt)
    train(tiny_cfg(photos, tmp_path / "run", ema_decay=0.5))
    resumed = load(tmp_path / "run" / "last.pt")
    for k, v in ck["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k

    export_weights(str(tmp_path / "ref" / "last.pt"), str(tmp_path / "avg.safetensors"), dtype=torch.float32)
    export_weights(str(tmp_path / "ref" / "last.pt"), str(tmp_path / "raw.safetensors"), dtype=torch.float32,
                   average=False)
    (m_avg, meta), (m_raw, meta_raw) = load_checkpoint(tmp_path / "avg.safetensors"), load_checkpoint(
        tmp_path / "raw.safetensors")
    for k in moved:
        assert torch.equal(m_avg.state_dict()[k], ck["ema"][k]) and torch.equal(m_raw.state_dict()[k], ck["model"][k])
    assert "moving average" in meta["weights"] and "weights" not in meta_raw


def test_blend_interpolates_two_checkpoints_of_one_model(photos, tmp_path):
    """--blend A B ALPHA OUT: each floating tensor is (1 - ALPHA) A + ALPHA B; other models are refused."""
    from roma_sfm.train.trainer import main
    from roma_sfm.weights import load_checkpoint, save_checkpoint
    from roma_sfm.models.roma import RoMa

    torch.manual_seed(1)
    a, b = RoMa(TINY), RoMa(TINY)
    save_checkpoint(tmp_path / "a.safetensors", a, {"step": 1}, dtype=torch.float32)
    save_checkpoint(tmp_path / "b.safetensors", b, {"step": 2}, dtype=torch.float32)
    assert main(["--blend", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "0.25",
                 str(tmp_path / "ab.safetensors")]) == 0
    mixed, meta = load_checkpoint(tmp_path / "ab.safetensors")
    sa, sb = a.state_dict(), b.state_dict()
    w = "decoder.conv_refiner.1.out_conv.weight"
    assert not torch.equal(sa[w], sb[w])
    for k, v in mixed.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (0.75 * sa[k].float() + 0.25 * sb[k].float()).half().float(),
                                       rtol=0, atol=2e-3, msg=k)
    assert meta["step"] == 2 and meta["blend"]["alpha"] == 0.25
    other = RoMa(TINY.replace(gp_dim=16, dec_dim=24))
    save_checkpoint(tmp_path / "c.safetensors", other, {})
    from roma_sfm.train.checkpoints import blend_weights

    with pytest.raises(ValueError, match="different models"):
        blend_weights(str(tmp_path / "a.safetensors"), str(tmp_path / "c.safetensors"), 0.5, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="alpha"):
        blend_weights(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), 1.5, str(tmp_path / "x"))


def test_average_writes_the_uniform_soup_of_several_checkpoints(tmp_path):
    """--average OUT A B C: each floating tensor is the mean of the three, computed in float32; the
    metadata records the members; bad coefficient lists are refused."""
    from roma_sfm.models.roma import RoMa
    from roma_sfm.train.checkpoints import average_weights
    from roma_sfm.train.trainer import main
    from roma_sfm.weights import load_checkpoint, save_checkpoint

    paths = []
    for i in range(3):
        torch.manual_seed(10 + i)
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_checkpoint(paths[-1], RoMa(TINY), {"step": i}, dtype=torch.float32)
    states = [load_checkpoint(p)[0].state_dict() for p in paths]
    assert main(["--average", str(tmp_path / "soup.safetensors"), *paths]) == 0
    soup, meta = load_checkpoint(tmp_path / "soup.safetensors")
    for k, v in soup.state_dict().items():
        if v.is_floating_point():
            mean = sum(s[k].float() for s in states) / 3
            torch.testing.assert_close(v, mean.half().float(), rtol=0, atol=2e-3, msg=k)
    w = "decoder.conv_refiner.1.out_conv.weight"
    assert not torch.allclose(soup.state_dict()[w], states[0][w], atol=1e-3)
    assert meta["step"] == 2 and meta["average"]["members"] == ["m0.safetensors", "m1.safetensors", "m2.safetensors"]
    with pytest.raises(ValueError, match="sum to 1"):
        average_weights(paths[:2], [0.5, 0.6], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="one coefficient"):
        average_weights(paths, [0.5, 0.5], str(tmp_path / "x"))
    with pytest.raises(SystemExit):
        main(["--average", str(tmp_path / "y.safetensors"), paths[0]])


def test_max_seconds_stops_on_time_with_a_checkpoint(photos, tmp_path):
    res = train(tiny_cfg(photos, tmp_path / "run", steps=10_000, ckpt_every=10_000, val_every=0, max_seconds=2.0))
    assert res["stopped_by"] == "max_seconds" and not res["finished"] and 0 < res["step"] < 10_000
    assert res["seconds"] < 2.0 + 5.0
    assert load(tmp_path / "run" / "last.pt")["step"] == res["step"]  # saved where it stopped
