"""Autoencoders and VAEs: gradient checks, the KL term, training on digits, sample/encode/decode, eval."""
from __future__ import annotations

import numpy as np
import pytest

from nnctl.engine.gradcheck import gradcheck, loss_gradcheck
from nnctl.engine.losses import LOSSES, kl_divergence
from nnctl.engine.model import Sequential

TOL = 1e-6
H = 1e-5   # the central-difference step of every check here


def _ae(variational: bool, output: str = "identity") -> list[dict]:
    return [{"type": "autoencoder", "encoder": [{"type": "dense", "units": 5, "activation": "tanh"}], "latent": 2,
             "decoder": [{"type": "dense", "units": 4, "activation": "tanh"}], "variational": variational,
             "output": output}]


@pytest.mark.parametrize("training", [True, False])
def test_sampling_layer_gradcheck(training):
    rng = np.random.default_rng(3)
    model = Sequential.from_config([{"type": "sampling"}], (6,), 1, "float64")
    errors = gradcheck(model, rng.normal(size=(5, 6)), training=training, h=H)
    assert errors["input"] < TOL


def test_sampling_draws_from_the_model_generator_and_uses_the_mean_in_eval():
    model = Sequential.from_config([{"type": "sampling"}], (4,), 7, "float64")
    x = np.array([[1.0, -2.0, np.log(4.0), 0.0]])
    assert model.forward(x, training=False).tolist() == [[1.0, -2.0]]
    state = model.rng.bit_generator.state
    z = model.forward(x, training=True)
    model.rng.bit_generator.state = state
    eps = model.rng.standard_normal((1, 2))
    # sigma = exp(logvar / 2) = [2, 1]
    np.testing.assert_allclose(z, [[1.0 + 2.0 * eps[0, 0], -2.0 + eps[0, 1]]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("variational,output,loss", [
    (True, "identity", {"name": "elbo", "beta": 0.7}),
    (True, "identity", {"name": "elbo", "reconstruction": "binary_cross_entropy"}),
    (False, "sigmoid", {"name": "reconstruction"}),
    (False, "identity", {"name": "reconstruction", "reconstruction": "binary_cross_entropy"}),
])
def test_autoencoder_gradcheck_through_the_loss(variational, output, loss):
    rng = np.random.default_rng(5)
    model = Sequential.from_config(_ae(variational, output), (6,), 1, "float64")
    errors = gradcheck(model, rng.normal(size=(5, 6)), rng.uniform(size=(5, 6)), loss=loss, h=H)
    assert max(errors.values()) < TOL, errors
    assert model.output_shape == ((6 + 2 * 2,) if variational else (6,))


@pytest.mark.parametrize("shape,encoder,decoder", [
    # conv encoder, and a decoder that reshapes back to feature maps
    ((1, 4, 4), [{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same", "activation": "tanh"},
                 {"type": "maxpool2d", "size": 2}, {"type": "flatten"}],
     [{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "reshape", "shape": [2, 2, 2]},
      {"type": "conv2d", "filters": 2, "kernel_size": 2, "padding": "same"}, {"type": "flatten"}]),
    # a GRU reads a sequence (N, T, F) into its last state
    ((4, 3), [{"type": "gru", "units": 5}], [{"type": "dense", "units": 6, "activation": "tanh"}]),
], ids=["conv", "gru"])
def test_encoder_and_decoder_take_any_engine_layer(shape, encoder, decoder):
    rng = np.random.default_rng(2)
    spec = [{"type": "autoencoder", "encoder": encoder, "latent": 3, "decoder": decoder, "variational": True}]
    model = Sequential.from_config(spec, shape, 4, "float64")
    d = int(np.prod(shape))
    assert model.output_shape == (d + 6,)
    # inputs in general position: no ties for max-pooling to break (blank image regions have them)
    errors = gradcheck(model, rng.normal(size=(4, *shape)), rng.uniform(size=(4, d)), loss={"name": "elbo"}, h=H)
    assert max(errors.values()) < TOL, errors


def test_kl_term_matches_its_closed_form_and_its_gradient():
    rng = np.random.default_rng(11)
    mu, logvar = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)) * 0.5
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, per dimension
    s = np.exp(0.5 * logvar)
    by_hand = (np.log(1.0 / s) + (s ** 2 + mu ** 2) / 2 - 0.5).sum(axis=1)
    np.testing.assert_allclose(kl_divergence(mu, logvar), by_hand, rtol=1e-12)
    # with beta = 2 and an exact reconstruction (mse 0), the loss is 2 * mean KL
    y = rng.uniform(size=(4, 5))
    z = np.concatenate([y, mu, logvar], axis=1)
    elbo = LOSSES.create({"name": "elbo", "beta": 2.0})
    value, dz = elbo(z, y)
    assert value == pytest.approx(2.0 * by_hand.mean(), rel=1e-12)
    np.testing.assert_allclose(dz[:, 5:8], 2.0 * mu / 4, rtol=1e-12)
    assert elbo.parts(z, y) == {"reconstruction": 0.0, "kl": pytest.approx(by_hand.mean(), rel=1e-12)}
    assert loss_gradcheck(elbo, z + 0.1, y, h=H) < TOL


@pytest.mark.parametrize("spec, dtype", [
    ({"name": "elbo", "reconstruction": "binary_cross_entropy"}, np.float32),
    ({"name": "elbo", "beta": 0.7}, np.float32),
    ({"name": "elbo", "beta": 2.0}, np.float64),
    ({"name": "reconstruction", "reconstruction": "binary_cross_entropy"}, np.float32),
])
def test_the_loss_is_its_logged_parts_to_the_bit(spec, dtype):
    # the trainer logs the parts beside the loss from one computation; a float32 KL in the
    # loss beside a float64 one in the logs once made them differ by ~1e-8 per batch
    rng = np.random.default_rng(5)
    loss = LOSSES.create(spec)
    n, d, latent = 16, 12, 3 if spec["name"] == "elbo" else 0
    y = rng.uniform(size=(n, d)).astype(dtype)
    z = rng.normal(size=(n, d + 2 * latent)).astype(dtype)
    value, dz, parts = loss.loss_and_parts(z, y)
    by_hand = {"reconstruction": d * loss.inner.value(z[:, :d], y)}
    if latent:
        mu, logvar = z[:, d:d + latent].astype(np.float64), z[:, d + latent:].astype(np.float64)
        by_hand["kl"] = float(kl_divergence(mu, logvar).mean())
    assert parts == by_hand
    assert value == by_hand["reconstruction"] + spec.get("beta", 1.0) * by_hand.get("kl", 0.0)
    assert loss.value_and_parts(z, y) == (value, parts) and loss.value(z, y) == value
    plain_value, plain_dz = loss(z, y)
    assert plain_value == value and np.array_equal(plain_dz, dz) and dz.dtype == dtype


# -- end to end on digits ---------------------------------------------------------------------
import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from nnctl.cli import app  # noqa: E402
from nnctl.engine.activations import softmax  # noqa: E402
from nnctl.runs.generative import decode, encode, sample  # noqa: E402
from nnctl.runs.model import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VAE_SPEC = str(ROOT / "configs" / "vae-digits.yaml")
runner = CliRunner()

# configs/vae-digits.yaml for 20 epochs (about 2 s): measured test reconstruction
# (binary cross-entropy summed over the 64 pixels) 21.05 / 21.71 / 21.78 for seeds 0 / 1 / 2
RECONSTRUCTION_BELOW = 23.0


def _train(runs: Path, *args: str) -> Path:
    res = runner.invoke(app, ["train", *args, "--quiet", "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output
    (run,) = sorted(runs.iterdir())
    return run


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("vae"), VAE_SPEC, "--set", "training.epochs=20")


def test_vae_on_digits_reconstructs_below_the_stated_value(vae_run):
    history = json.loads((vae_run / "history.json").read_text())
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert set(history[0]) >= {"loss", "reconstruction", "kl", "val_loss", "val_reconstruction", "val_kl"}
    assert metrics["test"]["test_reconstruction"] < RECONSTRUCTION_BELOW
    # the logged loss is the ELBO's two terms (beta 1) in every epoch, train and val, up to the
    # rounding of the epoch's float64 sums (measured <= 4e-16; a float32 KL in the loss gave 1e-9)
    for r in history:
        for pre in ("", "val_"):
            assert r[f"{pre}loss"] == pytest.approx(r[f"{pre}reconstruction"] + r[f"{pre}kl"], rel=1e-13, abs=0)
    # and the KL is not collapsed to 0
    assert history[-1]["kl"] > 0.5
    assert history[-1]["val_reconstruction"] < 0.8 * history[0]["val_reconstruction"]


def test_eval_reports_the_run_s_own_test_metrics(vae_run):
    res = runner.invoke(app, ["eval", str(vae_run), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    test = json.loads((vae_run / "metrics.json").read_text())["test"]
    # same accumulator over the same batches; the rebuilt model's float32 BLAS calls may round
    # differently in the last bits from the trained one's
    assert got["reconstruction"] == pytest.approx(test["test_reconstruction"], rel=1e-6)
    assert got["kl"] == pytest.approx(test["test_kl"], rel=1e-6)
    assert got["loss"] == pytest.approx(test["test_loss"], rel=1e-6)
    assert got["elbo"] == pytest.approx(-(test["test_reconstruction"] + test["test_kl"]), rel=1e-6)
    assert got["task"] == "vae" and got["n"] == 269


def test_sample_shape_and_determinism(vae_run, tmp_path):
    lm = load_model(vae_run)
    a, b, c = sample(lm, 10, 1, 1024), sample(lm, 10, 1, 1024), sample(lm, 4, 1, 1024)
    assert a.shape == (10, 64) and np.array_equal(a, b) and np.array_equal(a[:4], c)
    assert not np.allclose(a, sample(lm, 10, 2, 1024))
    assert 0.0 <= a.min() and a.max() <= 16.0   # the digits' own units (pixel values 0..16)
    out = tmp_path / "s.npy"
    res = runner.invoke(app, ["sample", str(vae_run), "-n", "10", "--seed", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(out), a)
    res = runner.invoke(app, ["sample", str(vae_run), "-n", "3", "--seed", "1"])
    rows = res.output.strip().splitlines()
    assert rows[0].split(",")[:2] == ["x0", "x1"] and len(rows) == 4
    np.testing.assert_allclose(np.array(rows[1].split(","), dtype=float), a[0], rtol=1e-5, atol=1e-5)


def test_encode_decode_round_trip_equals_eval_reconstruction(vae_run, tmp_path):
    lm = load_model(vae_run)
    codes = tmp_path / "z.npy"
    res = runner.invoke(app, ["encode", str(vae_run), "digits", "--out", str(codes)])
    assert res.exit_code == 0, res.output
    z = np.load(codes)
    assert z.shape == (1797, 8)
    back = tmp_path / "x.npy"
    assert runner.invoke(app, ["decode", str(vae_run), str(codes), "--out", str(back)]).exit_code == 0
    from nnctl.data import load_dataset
    x = load_dataset({"dataset": "digits", "val_split": 0, "test_split": 0}, 0, ROOT).train.x
    mse = float(((np.load(back) - x) ** 2).mean())
    res = runner.invoke(app, ["eval", str(vae_run), "--data", "digits", "--json"])
    assert mse == pytest.approx(json.loads(res.output)["mse"], rel=1e-5)
    assert mse < 9.0   # pixel values 0..16, variance about 36
    np.testing.assert_array_equal(encode(lm, x, 1024), z)
    np.testing.assert_allclose(decode(lm, z, 7), np.load(back), rtol=1e-6, atol=1e-6)


# A classifier trained by nnctl on the real digits (test accuracy 0.97) judges 200 samples.
# Measured with 20 epochs over seeds 0, 1, 2: samples classified with confidence > 0.5:
# 0.845 / 0.85 / 0.81; classes holding >= 3 of them: 9 / 8 / 9. An untrained decoder's
# samples are near-constant blobs that the classifier also labels confidently (1.0 / 1.0 /
# 0.985), but always as the same 2-3 classes: coverage is what tells them apart.
CONFIDENCE, CONFIDENT_SHARE, CLASSES_COVERED = 0.5, 0.7, 7


def _judge(clf, samples: np.ndarray) -> tuple[float, int]:
    x = clf.standardizer.transform(samples.reshape(len(samples), -1).astype(clf.dtype))
    p = softmax(clf.model.forward(x, training=False).astype(np.float64))
    confident = p.max(axis=1) > CONFIDENCE
    per_class = np.bincount(p.argmax(axis=1)[confident], minlength=10)
    return float(confident.mean()), int((per_class >= 3).sum())


def test_a_digit_classifier_recognizes_vae_samples_but_not_an_untrained_decoder_s(vae_run, tmp_path):
    clf = load_model(_train(tmp_path, str(ROOT / "configs" / "digits.yaml"), "--set", "model.hidden=[64]",
                            "--set", "model.batch_norm=false", "--set", "model.dropout=0",
                            "--set", "training.epochs=15", "--set", "schedule=null"))
    lm = load_model(vae_run)
    share, covered = _judge(clf, sample(lm, 200, 0, 1024))
    assert share > CONFIDENT_SHARE and covered >= CLASSES_COVERED, (share, covered)
    fresh = dataclasses.replace(lm, model=Sequential.from_config(lm.model.get_config(), lm.input_shape, 0, lm.dtype))
    share, covered = _judge(clf, sample(fresh, 200, 0, 1024))
    assert covered < CLASSES_COVERED, (share, covered)


def test_resume_equals_uninterrupted_for_a_vae(tmp_path):
    from nnctl.runs.checkpoint import load_checkpoint, save_checkpoint
    args = [VAE_SPEC, "--set", "model.encoder.hidden=[32]", "--set", "model.latent=3", "--set", "training.epochs=4"]
    full = _train(tmp_path / "full", *args)
    part = _train(tmp_path / "part", *args[:-2], "--set", "training.epochs=2")
    # make the 2-epoch run the 4-epoch run interrupted after epoch 2, then resume it
    path = part / "checkpoints" / "last.npz"
    ckpt = load_checkpoint(path)
    ckpt.meta["config"]["training"]["epochs"] = 4
    save_checkpoint(path, {k: v for k, v in ckpt.meta.items() if k not in ("format", "format_version", "nnctl_version")},
                    ckpt.arrays)
    from nnctl.runs.store import RunDir
    RunDir(part).write_config(ckpt.meta["config"])   # config.yaml says so too, or resume refuses the edit
    (part / "status.json").write_text(json.dumps({"status": "interrupted"}))
    res = runner.invoke(app, ["train", "--resume", str(part), "--quiet"])
    assert res.exit_code == 0, res.output

    def numbers(run):
        return [[v for k, v in r.items() if k != "seconds"] for r in json.loads((run / "history.json").read_text())]
    assert len(numbers(part)) == 4
    # the sampling layer's noise comes from the checkpointed Generator: bit-for-bit the same
    assert numbers(part) == numbers(full)
    a, b = load_checkpoint(part / "checkpoints" / "last.npz"), load_checkpoint(full / "checkpoints" / "last.npz")
    assert all(np.array_equal(a.model_state[k], b.model_state[k]) for k in b.model_state)


def test_a_sweep_over_latent_and_beta_runs_every_trial(tmp_path):
    # the shipped sweep's grid and metric, shortened to 1 epoch on a tenth of digits with a small
    # encoder, and run as `nnctl sweep` runs it: a `nnctl train` process per trial
    import yaml
    from nnctl.sweep.spec import build_trials, load_sweep
    shipped = yaml.safe_load((ROOT / "configs" / "sweeps" / "vae-digits-sweep.yaml").read_text())
    assert (shipped["parameters"]["model.latent"], shipped["parameters"]["loss.beta"]) == ([2, 8], [0.5, 1.0])
    sweep = {**shipped, "base": str(ROOT / "configs" / "vae-digits.yaml"),
             "parameters": {**shipped["parameters"], "training.epochs": [1], "model.encoder.hidden": [[16]],
                            "data.val_split": [0.1], "data.test_split": [0.8]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    assert [(t.overrides["model.latent"], t.overrides["loss.beta"]) for t in build_trials(load_sweep(path))] == \
        [(2, 0.5), (2, 1.0), (8, 0.5), (8, 1.0)]
    res = runner.invoke(app, ["sweep", str(path), "--workers", "2", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["metric"] == shipped["metric"] == "val_reconstruction"
    trials = manifest["trials"]
    assert [t["status"] for t in trials] == ["completed"] * 4
    for t in trials:
        run = Path(t["run_dir"])
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["task"], config["model"]["latent"], config["loss"]["beta"]) == \
            ("vae", t["overrides"]["model.latent"], t["overrides"]["loss.beta"])
        history = json.loads((run / "history.json").read_text())
        assert len(history) == 1 and t["metric"] == history[0]["val_reconstruction"] > 0
        # the model the trial trained has the trial's code size: mean and log-variance heads of `latent`
        assert load_model(run).model.layers[0].latent == t["overrides"]["model.latent"]


def _line_of(text: str) -> int:
    lines = Path(VAE_SPEC).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line and not line.lstrip().startswith("#"))


@pytest.mark.parametrize("sets,message", [
    (["loss=cross_entropy"], "loss: a vae reconstructs its inputs with mse or binary_cross_entropy, got "
                             "'cross_entropy' (--set loss)"),
    (["task=autoencoder"], "loss.beta: unknown key 'beta' for an autoencoder loss; only a vae has a KL term "
                           f"to weigh (vae-digits.yaml line {_line_of('beta:')})"),
    (["model.output=identity"], "model.output: binary_cross_entropy reconstructs through a sigmoid: set "
                                "output: sigmoid, or use loss mse (--set model.output)"),
    (["model.hidden=[3]"], "model.hidden: unknown key 'hidden'; valid: decoder, encoder, latent, output "
                           "(--set model.hidden)"),
    (["model.decoder=null", "model.encoder.hidden=null", "model.encoder.layers=[{type: dense, units: 4}]"],
     "model.decoder: is required when the encoder is in long form (layers): only a short-form encoder "
     "(hidden) is mirrored (--set model.decoder)"),
])
def test_spec_errors_are_one_line_and_write_nothing(tmp_path, sets, message):
    args = [a for s in sets for a in ("--set", s)]
    res = runner.invoke(app, ["train", VAE_SPEC, *args, "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 1
    assert res.output.strip() == f"error: {message}"
    assert not (tmp_path / "runs").exists()


def test_generative_commands_refuse_what_they_cannot_do(vae_run, tmp_path):
    codes = tmp_path / "bad.npy"
    np.save(codes, np.zeros((3, 5)))
    res = runner.invoke(app, ["decode", str(vae_run), str(codes)])
    assert (res.exit_code, res.output.strip()) == (1, "error: decode: codes must have shape (N, 8) for this "
                                                      "model's latent size 8, got [3, 5]")
    res = runner.invoke(app, ["predict", str(vae_run), str(codes)])
    assert (res.exit_code, res.output.strip()) == (1, f"error: predict: {vae_run}/checkpoints/best.npz is a vae, "
                                                      "which predicts no target; use nnctl encode, decode or sample")
    res = runner.invoke(app, ["sample", str(vae_run), "--out", str(tmp_path / "s.txt")])
    assert (res.exit_code, res.output.strip()) == (1, "error: --out: must end in .npy, .csv, .png, got 's.txt'")
    res = runner.invoke(app, ["sample", str(vae_run), "-n", "5000", "--out", str(tmp_path / "s.png")])
    assert (res.exit_code, res.output.strip()) == (1, "error: --out s.png: a grid holds at most 4,096 samples, "
                                                      "got 5,000; write .npy or .csv")
    assert list(tmp_path.iterdir()) == [codes]


def test_latent_projection_is_the_codes_or_their_principal_components():
    from nnctl.report.latent_plot import project
    two = np.array([[1.0, 2.0], [3.0, -4.0]])
    assert project(two)[0] is two and project(two)[1] == ("z0", "z1")
    # points on a line along (1, 1, 0) plus a small spread along (0, 0, 1): PC1 carries the line
    t = np.linspace(-2, 2, 9)
    codes = np.column_stack([t, t, 0.1 * np.cos(7 * t)]) + 5.0
    xy, axes = project(codes)
    assert axes == ("PC1", "PC2")
    np.testing.assert_allclose(np.abs(xy[:, 0]), np.abs(t) * np.sqrt(2), atol=1e-12)
    assert np.abs(xy[:, 1]).max() < 0.2


def test_plot_latent_draws_every_row(vae_run, tmp_path):
    pytest.importorskip("matplotlib", reason="plot --latent needs the plot extra (matplotlib)")
    out = tmp_path / "latent.png"
    res = runner.invoke(app, ["plot", str(vae_run), "--latent", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"wrote {out} (1,797 rows; axes PC1, PC2; coloured by 'label' (10 classes))"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_writes_an_encoder_and_a_decoder_that_match_nnctl(vae_run, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")
    pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
    res = runner.invoke(app, ["export", str(vae_run), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    lm = load_model(vae_run)
    from nnctl.data import load_dataset
    x = load_dataset({"dataset": "digits", "val_split": 0, "test_split": 0}, 0, ROOT).train.x[:50]
    enc = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    mean, logvar = enc.run(["latent", "log_variance"], {"features": x.astype(np.float32)})
    np.testing.assert_allclose(mean, encode(lm, x, 1024), atol=1e-5)
    assert logvar.shape == (50, 8) and logvar.mean() < 0   # the posterior is narrower than the prior
    z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(dec.run(["samples"], {"latent": z})[0], decode(lm, z, 1024), atol=1e-4)


def test_an_autoencoder_trains_on_a_npy_file_without_targets(tmp_path):
    x = np.random.default_rng(0).uniform(0, 5, (120, 6)).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)
    spec = tmp_path / "ae.yaml"
    spec.write_text("task: autoencoder\ndata: {dataset: rows.npy}\nmodel: {encoder: {hidden: [8]}, latent: 2}\n"
                    "training: {epochs: 2, batch_size: 16}\n")
    run = _train(tmp_path / "runs", str(spec))
    history = json.loads((run / "history.json").read_text())
    assert [sorted(r) for r in history][0] == ["epoch", "loss", "lr", "reconstruction", "seconds",
                                               "val_loss", "val_reconstruction"]
    res = runner.invoke(app, ["eval", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n"] == 18   # the test split: floor(0.15 * 120)
    # a supervised spec on the same file still needs its targets
    res = runner.invoke(app, ["train", str(spec), "--set", "task=null", "--set", "model={hidden: [4]}",
                              "--runs-dir", str(tmp_path / "r2")])
    assert res.output.strip() == "error: rows.npy: a .npy dataset needs data.target_path, the .npy file holding its targets"


def test_image_grid_layout():
    from nnctl.report.image_grid import grid, image_shape
    assert [image_shape(s) for s in [(64,), (63,), (8, 8), (1, 8, 8), (3, 4, 5), (4, 5, 3), (2, 4, 4)]] == \
        [(8, 8, 1), None, (8, 8, 1), (8, 8, 1), (4, 5, 3), (4, 5, 3), None]
    samples = np.arange(10)[:, None] * np.ones((10, 64))   # sample i is all i
    picture = grid(samples, 0.0, 9.0)
    # 10 tiles: 4 columns, 3 rows, one background pixel between tiles
    assert picture.shape == (3 * 9 - 1, 4 * 9 - 1, 3)
    assert picture[9, 9].tolist() == [5 / 9] * 3          # tile 5: row 1, column 1
    assert picture[8, 0].tolist() == [0.0] * 3 and picture[18:, 18:].max() == 0.0   # gaps, the two empty tiles


def _table(path: Path, rows: int = 60) -> Path:
    """Two numeric columns (one missing cell), a 3-category and a 2-category text column."""
    rng = np.random.default_rng(0)
    lines = ["a,b,colour,kind"]
    for i in range(rows):
        a, b = rng.normal(size=2)
        lines.append(f"{'' if i == 3 else f'{a:.3f}'},{b:.3f},{('red', 'green', 'blue')[i % 3]},{'xy'[i % 2]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _table_spec(tmp_path: Path, data: str) -> Path:
    _table(tmp_path / "t.csv")
    spec = tmp_path / "ae.yaml"
    spec.write_text(f"task: autoencoder\ndata: {{dataset: t.csv, missing: impute{data}}}\n"
                    "model: {encoder: {hidden: [6]}, latent: 2}\ntraining: {epochs: 2, batch_size: 16}\n")
    return spec


def test_an_autoencoder_trains_on_a_csv_without_a_target(tmp_path):
    from nnctl.config.spec import load_spec
    from nnctl.training.experiment import prepare
    spec = _table_spec(tmp_path, "")
    exp = prepare(load_spec(spec))
    # every column is a feature: a, b, then one-hot colour (3 + unknown) and kind (2 + unknown)
    assert exp.dataset.input_shape == (9,) and exp.dataset.feature_names[:2] == ["a", "b"]
    assert exp.dataset.describe()[:3] == [
        "autoencoder: reconstructs its 9 input values, scaled to [0, 1] by the training split's min and max",
        "features: 2 numeric (a, b); 2 categorical (colour (3), kind (2); one-hot + unknown); ignored: none",
        "missing values: impute"]
    splits = exp.dataset.train, exp.dataset.val, exp.dataset.test
    assert exp.dataset.train.y is None and [len(s) for s in splits] == [42, 9, 9]
    # a separate validation file without a target is read with the training file's columns
    (tmp_path / "v.csv").write_text("\n".join((tmp_path / "t.csv").read_text().splitlines()[:21]) + "\n")
    other = prepare(load_spec(spec, ["data.val_path=v.csv"]))
    assert (len(other.dataset.train), len(other.dataset.val), other.dataset.val.x.shape[1]) == (51, 20, 9)
    run = _train(tmp_path / "runs", str(spec))
    res = runner.invoke(app, ["eval", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n"] == 9
    res = runner.invoke(app, ["eval", str(run), "--data", str(tmp_path / "t.csv"), "--json"])
    assert (res.exit_code, json.loads(res.output)["n"]) == (0, 60)
    # the file's rows encode through the run's own table encoding (the missing cell imputed)
    res = runner.invoke(app, ["encode", str(run), str(tmp_path / "t.csv"), "--out", str(tmp_path / "z.npy")])
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (60, 2) and np.isfinite(z).all()
    # decoded rows come back in the file's own columns: numbers, and each category as a label
    res = runner.invoke(app, ["decode", str(run), str(tmp_path / "z.npy")])
    assert res.exit_code == 0, res.output
    rows = [line.split(",") for line in res.output.strip().splitlines()]
    assert rows[0] == ["a", "b", "colour", "kind"] and len(rows) == 61
    assert {r[2] for r in rows[1:]} <= {"red", "green", "blue"} and {r[3] for r in rows[1:]} <= {"x", "y"}
    assert np.isfinite(np.array([r[:2] for r in rows[1:]], dtype=float)).all()


def test_a_table_encoding_inverts_to_numbers_and_category_labels():
    from nnctl.data.preprocess import TableEncoder
    table = TableEncoder([{"name": "a", "kind": "numeric", "fill": None},
                          {"name": "c", "kind": "categorical", "categories": ["blue", "red"], "fill": None}])
    # a, c=blue, c=red, c=<unknown>: the unknown slot is never the answer, even when largest
    x = np.array([[1.5, 0.9, 0.1, 0.0], [-2.0, 0.2, 0.3, 0.0], [0.0, 0.1, 0.2, 5.0]])
    a, c = table.inverse(x)
    assert a.tolist() == [1.5, -2.0, 0.0] and c.tolist() == ["blue", "red", "red"]


def test_the_export_decodes_rows_by_the_table_s_own_inverse():
    # the ONNX parity check's rows come from TableEncoder.inverse with the unknown slot let in,
    # decoded as a value training never had (here not the category "<unseen>"), so encoding
    # them again gives the one-hot rows back, unknown slot included
    from nnctl.data.preprocess import TableEncoder
    from nnctl.export.tabular import decode
    table = TableEncoder([{"name": "a", "kind": "numeric", "fill": None},
                          {"name": "c", "kind": "categorical", "categories": ["<unseen>", "red"], "fill": None}])
    x = np.array([[1.5, 1.0, 0.0, 0.0], [-2.0, 0.0, 1.0, 0.0], [0.25, 0.0, 0.0, 1.0]])
    a, c = table.inverse(x, unknown=True)
    assert a.tolist() == [1.5, -2.0, 0.25] and c.tolist() == ["<unseen>", "red", "<unseen>_"]
    rows = decode(table, x.astype(np.float32))
    assert [col.values.tolist() for col in rows.columns] == [a.tolist(), c.tolist()]
    assert [type(v) for v in rows.text["c"]] == [str] * 3 and rows.text["c"].tolist() == c.tolist()
    back, unknown = table.transform(rows.columns, "decoded rows", None)
    assert np.array_equal(back, x) and unknown == 1


def test_an_autoencoder_s_target_column_is_not_a_feature_and_colours_the_latent_plot(tmp_path):
    from nnctl.config.spec import load_spec
    from nnctl.training.experiment import prepare
    spec = _table_spec(tmp_path, ", target: kind")
    exp = prepare(load_spec(spec))
    assert exp.dataset.input_shape == (6,) and "kind" not in exp.dataset.table.feature_names
    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0, res.output
    note = [line for line in res.output.splitlines() if "kind" in line]
    assert note == ["autoencoder: reconstructs its 6 input values, scaled to [0, 1] by the training split's min and "
                    "max; target 'kind' is not a feature and not trained on, it only colours plot --latent"]
    # the labels ride along in the splits (as class indices) for the plot, in file order x, y, x, ...
    whole = np.zeros(60, dtype=np.int64)
    for split in (exp.dataset.train, exp.dataset.val, exp.dataset.test):
        whole[split.rows()] = split.y[split.rows()]
    assert whole.tolist() == [0, 1] * 30 and exp.dataset.classes == ["x", "y"]
    # a row without a label is still trained on: its label is a class of its own for the plot
    text = (tmp_path / "t.csv").read_text().splitlines()
    text[5] = text[5].rsplit(",", 1)[0] + ","
    (tmp_path / "g.csv").write_text("\n".join(text) + "\n")
    gappy = prepare(load_spec(spec, ["data.dataset=g.csv"])).dataset
    assert sum(len(s) for s in (gappy.train, gappy.val, gappy.test)) == 60 and gappy.dropped == {"target": 0}
    assert gappy.classes == ["(missing)", "x", "y"]
    numbered = [line[:-1] + {"x": "1", "y": "2", ",": ","}[line[-1]] for line in text[1:]]
    (tmp_path / "n.csv").write_text("\n".join([text[0], *numbered]) + "\n")
    assert prepare(load_spec(spec, ["data.dataset=n.csv"])).dataset.classes == ["(missing)", "1", "2"]
    run = _train(tmp_path / "runs", str(spec))
    # eval and encode of a file do not read the label column, gaps and all
    res = runner.invoke(app, ["eval", str(run), "--data", str(tmp_path / "g.csv"), "--json"])
    assert (res.exit_code, json.loads(res.output)["n"]) == (0, 60)
    res = runner.invoke(app, ["encode", str(run), str(tmp_path / "g.csv")])
    assert (res.exit_code, len(res.output.splitlines())) == (0, 61)
    pytest.importorskip("matplotlib", reason="plot --latent needs the plot extra (matplotlib)")
    res = runner.invoke(app, ["plot", str(run), "--latent", "--out", str(tmp_path / "z.png")])
    assert res.output.strip() == f"wrote {tmp_path / 'z.png'} (60 rows; axes z0, z1; coloured by 'kind' (2 classes))"


def test_an_autoencoder_trains_on_an_npz_without_y(tmp_path):
    np.savez(tmp_path / "rows.npz", x=np.random.default_rng(1).uniform(0, 1, (40, 5)).astype(np.float32))
    spec = tmp_path / "ae.yaml"
    spec.write_text("task: vae\ndata: {dataset: rows.npz, val_split: 0.25, test_split: 0}\n"
                    "model: {encoder: {hidden: [4]}, latent: 2}\ntraining: {epochs: 1, batch_size: 10}\n")
    run = _train(tmp_path / "runs", str(spec))
    history = json.loads((run / "history.json").read_text())
    assert sorted(history[0]) == ["epoch", "kl", "loss", "lr", "reconstruction", "seconds", "val_kl", "val_loss",
                                  "val_reconstruction"]
    res = runner.invoke(app, ["train", str(spec), "--set", "task=null", "--set", "model={hidden: [4]}",
                              "--runs-dir", str(tmp_path / "r2")])
    assert res.output.strip() == "error: rows.npz: no array 'y'; arrays are: x"
    # with a y, the labels are not trained on (the header says so) and colour the latent map
    np.savez(tmp_path / "rows.npz", x=np.random.default_rng(1).uniform(0, 1, (40, 5)).astype(np.float32),
             y=np.arange(40) % 3)
    from nnctl.config.spec import load_spec
    from nnctl.training.experiment import prepare
    assert prepare(load_spec(spec)).dataset.describe()[0].endswith(
        "min and max; its labels are not trained on, they only colour plot --latent")
    pytest.importorskip("matplotlib", reason="plot --latent needs the plot extra (matplotlib)")
    run = _train(tmp_path / "runs3", str(spec))
    res = runner.invoke(app, ["plot", str(run), "--latent", "--out", str(tmp_path / "z.png")])
    assert res.output.strip() == f"wrote {tmp_path / 'z.png'} (40 rows; axes z0, z1; coloured by label (3 classes))"


def test_early_stopping_schedules_and_eval_on_any_split_work_for_a_vae(tmp_path):
    # min_delta no epoch can beat: stopped after patience 1, the best epoch (1) restored
    run = _train(tmp_path, VAE_SPEC, "--set", "model.encoder.hidden=[16]", "--set", "model.latent=2",
                 "--set", "training.epochs=5", "--set", "schedule={name: step, step_size: 1, gamma: 0.5}",
                 "--set", "training.early_stopping={monitor: val_reconstruction, patience: 1, min_delta: 1.0e6}")
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["lr"] for r in history] == [0.002, 0.001]
    assert (metrics["status"], metrics["best_epoch"], metrics["monitor"]) == ("stopped_early", 1, "val_reconstruction")
    for split, key in (("val", "val_reconstruction"), ("train", None)):
        res = runner.invoke(app, ["eval", str(run), "--split", split, "--json"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.output)
        assert (got["split"], got["n"]) == (split, {"val": 269, "train": 1259}[split])
        if key:   # the restored best epoch's weights, scored on the same rows as in training
            assert got["reconstruction"] == pytest.approx(history[0][key], rel=1e-6)
        else:
            assert 0 < got["reconstruction"] < 64 * np.log(2) + 1   # below a coin flip per pixel


@pytest.mark.parametrize("data,encoder,decoder,shape", [
    ("{dataset: digits, shape: [1, 8, 8]}",
     "[{type: conv2d, filters: 2, kernel_size: 3, padding: same, activation: relu}, {type: maxpool2d, size: 2}, "
     "{type: flatten}]",
     "[{type: dense, units: 32, activation: relu}, {type: reshape, shape: [2, 4, 4]}, "
     "{type: conv2d, filters: 2, kernel_size: 3, padding: same}, {type: flatten}]", (1, 8, 8)),
    ("{dataset: parity}", "[{type: gru, units: 6}]", "[{type: dense, units: 8, activation: tanh}]", (12, 1)),
], ids=["conv", "gru"])
def test_a_vae_spec_with_conv_or_gru_layers_trains_and_samples_in_the_data_s_shape(tmp_path, data, encoder,
                                                                                    decoder, shape):
    spec = tmp_path / "vae.yaml"
    spec.write_text(f"task: vae\ndata: {data}\nmodel: {{encoder: {{layers: {encoder}}}, latent: 2, "
                    f"decoder: {{layers: {decoder}}}}}\ntraining: {{epochs: 1, batch_size: 64}}\n")
    run = _train(tmp_path / "runs", str(spec))
    (record,) = json.loads((run / "history.json").read_text())
    assert record["loss"] == pytest.approx(record["reconstruction"] + record["kl"], rel=1e-9)
    samples = sample(load_model(run), 3, 0, 64)
    assert samples.shape == (3, *shape) and np.isfinite(samples).all()


def test_a_vae_on_an_image_folder_scales_the_pixels_batches_hold(tmp_path):
    pytest.importorskip("PIL", reason='Pillow is the "images" extra')
    spec = tmp_path / "vae.yaml"
    spec.write_text(f"task: vae\ndata: {{dataset: {ROOT / 'datasets' / 'digits_png'}, image_size: [8, 8]}}\n"
                    "model: {encoder: {layers: [{type: flatten}, {type: dense, units: 16, activation: tanh}]}, "
                    "latent: 2, decoder: {hidden: [16]}, output: sigmoid}\n"
                    "loss: binary_cross_entropy\ntraining: {epochs: 2, batch_size: 32}\n")
    from nnctl.config.spec import load_spec
    from nnctl.training.experiment import prepare
    exp = prepare(load_spec(spec))
    # batches hold uint8 pixels / 255, so [0, 1] is already the unit range: scale 1, not 255
    assert exp.dataset.train.x.dtype == np.uint8
    assert (exp.standardizer.mean.max(), exp.standardizer.scale.min(), exp.standardizer.scale.max()) == (0, 1, 1)
    run = _train(tmp_path / "runs", str(spec))
    samples = sample(load_model(run), 4, 0, 64)
    assert samples.shape == (4, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    # encode reads images (a folder, recursively sorted, or one file) as the run decoded them
    folder = ROOT / "datasets" / "digits_png"
    assert runner.invoke(app, ["encode", str(run), str(folder), "--out", str(tmp_path / "z.npy")]).exit_code == 0
    z = np.load(tmp_path / "z.npy")
    first = sorted(p for p in folder.rglob("*.png"))[0]
    res = runner.invoke(app, ["encode", str(run), str(first)])
    assert z.shape == (300, 2) and res.output.splitlines()[0] == "z0,z1"
    np.testing.assert_allclose(np.array(res.output.splitlines()[1].split(","), dtype=float), z[0], rtol=1e-5,
                               atol=1e-6)
    pytest.importorskip("matplotlib", reason="plot --latent needs the plot extra (matplotlib)")
    res = runner.invoke(app, ["plot", str(run), "--latent", "--out", str(tmp_path / "z.png")])
    assert res.output.strip() == f"wrote {tmp_path / 'z.png'} (300 rows; axes z0, z1; coloured by label (10 classes))"
