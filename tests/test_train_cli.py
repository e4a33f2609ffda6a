"""Architectures, trainer, checkpoint and the train/info command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsebench import checkpoint
from sparsebench.archs import ARCHS, create_model
from sparsebench.cli import main
from sparsebench.data import load_dataset
from sparsebench.errors import SparsebenchError
from sparsebench.train import TrainConfig, Trainer



@pytest.mark.parametrize("shape", [(1, 28), (3, 32)], ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_arch_runs_forward_and_backward(arch, shape):
    model = create_model(arch, in_channels=shape[0], input_size=shape[1], num_classes=7,
                         dropout=0.3)
    x = torch.randn(2, shape[0], shape[1], shape[1])
    y = model(x)
    assert y.shape == (2, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    declared = {p.name for p in model.prunable_layers}
    assert set(model.default_pruned) <= declared


def test_unknown_arch_lists_valid_names():
    with pytest.raises(SparsebenchError, match="unknown architecture 'nope'; choose from: ffn, "
                                               "lenet300, lenet5, resnet18, vgg11_bn"):
        create_model("nope")


def _train(tmp_path: Path, method: str = "prune-l", epochs: int = 2, **kw) -> dict:
    data = load_dataset("synthetic", synthetic_sizes=(256, 128))
    schedules = [{"layer": "fc1", "fraction": 0.5, "start": 1, "end": 1, "period": 1}]
    cfg = TrainConfig(arch="lenet5", dataset="synthetic", method=method, epochs=epochs,
                      batch_size=64, schedules=schedules if method != "dense" else [], **kw)
    return Trainer(cfg, data, out=tmp_path / "m.pt", log=lambda m: None).run()


def test_checkpoint_round_trip_is_exact(tmp_path):
    ckpt = _train(tmp_path)
    loaded = checkpoint.load_checkpoint(tmp_path / "m.pt")
    assert loaded["format"] == "sparsebench-checkpoint" and loaded["version"] == 1
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, loaded["state_dict"][key]), key
    for key, value in ckpt["masks"].items():
        assert torch.equal(value, loaded["masks"][key])
    assert loaded["history"] == ckpt["history"] and loaded["summary"] == ckpt["summary"]
    assert loaded["config"]["method"] == "prune-l" and loaded["seed"] == 0
    assert set(loaded["versions"]) >= {"torch", "sparsebench", "numpy", "python"}
    model = checkpoint.model_from_checkpoint(loaded)
    x = torch.randn(3, 1, 28, 28)
    reference = create_model("lenet5", **ckpt["arch_kwargs"])
    reference.load_state_dict(ckpt["state_dict"])
    assert torch.equal(model(x), reference.eval()(x))
    # plain torch can read it safely
    torch.load(tmp_path / "m.pt", weights_only=True)
    # the history has per-epoch metrics and the event with its instability
    event = loaded["history"]["events"][0]
    assert event["epoch"] == 1 and event["layers"][0]["kept_after"] == 60
    assert event["instability"] == pytest.approx((event["pre_acc"] - event["post_acc"])
                                                 / event["pre_acc"])
    assert len(loaded["history"]["epochs"]) == 2


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint({"arch": "lenet5", "arch_kwargs": {}, "state_dict": {}}, path)
    before = path.read_bytes()

    def boom(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"arch": "x", "arch_kwargs": {}, "state_dict": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_resume_after_interruption_reaches_the_same_result(tmp_path, capsys, monkeypatch):
    flags = ["train", "--arch", "lenet5", "--dataset", "synthetic", "--limit-train", "256",
             "--limit-test", "128", "--batch-size", "64", "--method", "prune-l", "--epochs",
             "3", "--fractions", "0.5", "--start", "1", "--end", "2", "--retrain-period", "1",
             "--quiet"]
    assert main(flags + ["--out", str(tmp_path / "full.pt")]) == 0
    full = checkpoint.load_checkpoint(tmp_path / "full.pt")

    calls = {"n": 0}
    original = Trainer.train_epoch

    def interrupt_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_third)
    part = tmp_path / "part.pt"
    assert main(flags + ["--out", str(part)]) == 130
    assert "interrupted" in capsys.readouterr().err
    saved = checkpoint.load_checkpoint(part)
    assert saved["resume"]["epoch"] == 2 and len(saved["history"]["epochs"]) == 2
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert main(["train", "--resume", str(part), "--quiet"]) == 0
    resumed = checkpoint.load_checkpoint(part)
    assert "resume" not in resumed and len(resumed["history"]["epochs"]) == 3
    for key, value in full["state_dict"].items():
        assert torch.allclose(value, resumed["state_dict"][key], atol=1e-6), key
    assert resumed["summary"]["best_test_acc"] == full["summary"]["best_test_acc"]


def test_scratch_removes_final_counts_before_training(tmp_path):
    ckpt = _train(tmp_path, method="scratch", epochs=1)
    assert ckpt["unit_masks"]["fc1"].sum() == 60
    assert ckpt["summary"]["mean_stability"] == 100.0 and ckpt["history"]["events"] == []


def test_dense_and_dropout_runs(tmp_path):
    dense = _train(tmp_path, method="dense", epochs=1)
    assert dense["summary"]["params_removed_frac"] == 0.0
    drop = _train(tmp_path, method="dropout", epochs=1, dropout=0.5)
    assert drop["arch_kwargs"]["dropout"] == 0.5


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_cli_logs_instability_per_event(tmp_path, capsys):
    out_path = tmp_path / "r.pt"
    code, out, err = run_cli(["train", "--arch", "lenet5", "--dataset", "synthetic",
                              "--method", "prune-s", "--epochs", "3", "--fractions", "0.5",
                              "--start", "1", "--end", "2", "--retrain-period", "1",
                              "--out", str(out_path)], capsys)
    assert code == 0, err
    assert out.count("instability") == 2 and "event @ epoch 2" in out
    assert "mean stability" in out and out_path.exists()
    code, out, err = run_cli(["info", str(out_path), "--events"], capsys)
    assert code == 0 and "conv2" in out and "fc1" in out and "instability" in out


@pytest.mark.parametrize("args,message", [
    (["--arch", "nope"], "unknown architecture 'nope'; choose from: ffn"),
    (["--arch", "lenet5", "--dataset", "mnist9"], "unknown dataset 'mnist9'; choose from:"),
    (["--arch", "lenet5", "--method", "prune-x"], "unknown method 'prune-x'; choose from: dense"),
    (["--arch", "lenet5", "--preset", "vgg99"], "unknown preset 'vgg99'; choose from:"),
    (["--arch", "lenet5", "--preset", "vgg11"], "preset 'vgg11' is for vgg11_bn"),
    (["--arch", "lenet5", "--method", "prune-l", "--fractions", "1.0"], "[0, 1)"),
    (["--arch", "lenet5", "--method", "prune-l", "--fractions", "-0.2"], "[0, 1)"),
    (["--arch", "lenet5", "--method", "prune-l", "--start", "5", "--end", "2"],
     "end epoch 2 is before start epoch 5"),
    (["--arch", "lenet5", "--epochs", "0"], "--epochs must be at least 1"),
    (["--arch", "lenet5", "--method", "prune-l", "--layers", "fc9"], "'fc9' is not prunable"),
    (["--arch", "lenet5", "--method", "prune-l", "--fractions", "0.1,0.2"],
     "--fractions: got 2 values for 3 layers"),
])
def test_train_bad_input_is_one_line_exit_2(args, message, capsys, tmp_path):
    code, out, err = run_cli(["train", "--dataset", "synthetic", *args, "--out",
                              str(tmp_path / "x.pt")] if "--dataset" not in args else
                             ["train", *args, "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("content,message", [
    (b"", "empty"), (b"not a zip", "not a readable torch checkpoint"),
])
def test_corrupt_checkpoint_rejected_by_info_and_resume(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    for args in (["info", str(bad)], ["train", "--resume", str(bad)]):
        code, out, err = run_cli(args, capsys)
        assert code == 2 and message in err and err.count("\n") == 1
    assert bad.read_bytes() == content   # nothing overwritten


def test_foreign_and_truncated_checkpoints_rejected(tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    code, _, err = run_cli(["info", str(foreign)], capsys)  # info reads state_dicts too
    assert code == 2 and "is a state_dict: pass --arch" in err and err.count("\n") == 1
    good = tmp_path / "good.pt"
    _train(tmp_path)
    data = (tmp_path / "m.pt").read_bytes()
    good.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["train", "--resume", str(good)], capsys)
    assert code == 2 and "corrupt or truncated" in err
    code, _, err = run_cli(["info", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and "not found" in err
    code, _, err = run_cli(["info", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err


def test_pickled_code_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": "sparsebench-checkpoint", "x": Evil()}, path)
    code, _, err = run_cli(["info", str(path)], capsys)
    assert code == 2 and "needs full unpickling" in err and not marker.exists()
    assert "it references getattr" in err  # names what it refused to import


def test_module_entry_point_and_help():
    proc = subprocess.run([sys.executable, "-m", "sparsebench", "train", "--arch", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("sparsebench: error: unknown arch")
    proc = subprocess.run([sys.executable, "-m", "sparsebench", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "info" in proc.stdout


def test_claims_runs_missing_seeds_and_tabulates(tmp_path, capsys):
    runs = tmp_path / "runs"
    md = tmp_path / "claims.md"
    args = ["claims", "--dataset", "synthetic", "--methods", "dense,prune-l", "--seeds", "0",
            "--runs", str(runs), "--jobs", "2", "--markdown", str(md), "--train-args",
            "--epochs 2 --limit-train 256 --limit-test 128 --fractions 0.5 --start 1 --end 1"]
    assert main(args) == 0
    assert sorted(p.name for p in runs.glob("*.pt")) == ["lenet5-dense-s0.pt",
                                                         "lenet5-prune-l-s0.pt"]
    # each finished run left its summary (history, no weights)
    assert sorted(p.name for p in (runs / "summaries").iterdir()) == [
        "lenet5-dense-s0.json", "lenet5-prune-l-s0.json"]
    text = md.read_text()
    assert "| dense | dense | 1 |" in text and "| prune-l | prune-l | 1 |" in text
    assert text.startswith("<!-- generated by: sparsebench claims")
    # finished runs are not trained again
    before = (runs / "lenet5-dense-s0.pt").stat().st_mtime_ns
    assert main(args + ["--force"]) == 0
    assert (runs / "lenet5-dense-s0.pt").stat().st_mtime_ns == before
    code = main(["claims", "--methods", "dense,nope"])
    assert code == 2 and "unknown method 'nope'" in capsys.readouterr().err


def test_info_card_records_command_and_metrics(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", "--arch", "lenet300", "--dataset", "synthetic", "--method", "prune-r",
                 "--epochs", "2", "--limit-train", "256", "--out", str(out), "--quiet"]) == 0
    card = tmp_path / "card.md"
    assert main(["info", str(out), "--card", str(card)]) == 0
    text = card.read_text()
    assert "with `prune-r`" in text and "--method prune-r" in text
    assert "| fc1 | Linear | 300x784 |" in text and "Pruning events:" in text


def test_torchvision_architectures_are_optional():
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - not importable here: the error must be one clean line
        with pytest.raises(SparsebenchError, match="torchvision architectures need torchvision, which does not import here") as info:
            create_model("torchvision.resnet18")
        assert "\n" not in str(info.value)
    else:
        assert create_model("torchvision.resnet18", 3, 32).input_shape == (3, 32, 32)


# -------------------------------------------------------------- issue 15's small items

ZOO_PRUNED = Path(__file__).resolve().parents[1] / "models" / "lenet5_prune_l.pt"
QUICK = ["train", "--arch", "lenet5", "--dataset", "synthetic", "--limit-train", "128",
         "--limit-test", "64", "--batch-size", "64", "--quiet"]


def test_one_epoch_pruning_run_is_refused_unless_asked(tmp_path, capsys):
    """With --epochs 1 the default schedule's only event is at the last epoch: nothing retrains
    the pruned model, so the run is refused; --allow-final-event runs it and says which accuracy
    it reports (the post-prune one), not "best test acc after last event"."""
    out = tmp_path / "one.pt"
    code, _, err = run_cli([*QUICK, "--method", "prune-l", "--epochs", "1", "--out", str(out)],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "last pruning event is at epoch 1 of 1" in err and "--allow-final-event" in err
    assert not out.exists()
    code, stdout, err = run_cli([*QUICK, "--method", "prune-l", "--epochs", "1",
                                 "--allow-final-event", "--out", str(out)], capsys)
    assert code == 0, err
    assert "right after the last event" in stdout and "after last event" not in stdout
    s = checkpoint.load_checkpoint(out)["summary"]
    assert s["epochs_after_last_event"] == 0 and s["events"] == 1
    code, stdout, _ = run_cli(["info", str(out)], capsys)
    assert code == 0 and "right after the last event" in stdout


def test_two_epoch_default_schedule_retrains_after_the_event(tmp_path, capsys):
    out = tmp_path / "two.pt"
    code, stdout, err = run_cli([*QUICK, "--method", "prune-l", "--epochs", "2", "--out",
                                 str(out)], capsys)
    assert code == 0, err
    assert "best test acc after last event" in stdout and "(epoch 2)" in stdout
    assert checkpoint.load_checkpoint(out)["summary"]["epochs_after_last_event"] == 1


def test_info_on_a_dense_model_says_dense_and_no_pruning_events(tmp_path, capsys):
    out = tmp_path / "dense.pt"
    assert run_cli([*QUICK, "--epochs", "1", "--out", str(out)], capsys)[0] == 0
    code, stdout, _ = run_cli(["info", str(out), "--card", str(tmp_path / "card.md")], capsys)
    assert code == 0
    text = " ".join(stdout.split())
    assert "method dense |" in text and "(filter)" not in text
    assert "no pruning events" in text and "over 0 events" not in text
    assert "best test acc " in text and "after last event" not in text
    card = (tmp_path / "card.md").read_text()
    assert "no pruning events" in card and "over 0 events" not in card
    code, stdout, _ = run_cli(["info", str(ZOO_PRUNED)], capsys)  # a pruned one keeps both
    assert code == 0 and "prune-l (filter)" in stdout and "over 5 events" in " ".join(
        stdout.split())
