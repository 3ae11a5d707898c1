"""train-generator runs across calls: a resume must train on the checkpoint's data (issue 27 item 4), and a
run stopped by --max-minutes is unfinished: exit code 3, no final/ (item 6)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from posereid.experiments.cli import main
from posereid.models.training import (
    PosePairDataset,
    ResumeMismatchError,
    TrainConfig,
    list_checkpoints,
    train_generator,
)
from tests.test_generate import make_market
from tests.test_training import H, W, _records, _tiny


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train-generator", "--data", str(data), "--annotations", str(data / "ann.csv"), "--preset",
                 "tiny", "--image-size", f"{H}x{W}", "--out", str(out), "--batch-size", "2",
                 "--sample-every", "0", "--seed", "1", "--no-progress", *extra])  # fmt: skip


def test_resume_on_other_data_is_refused_naming_the_fields(tmp_path: Path, capsys) -> None:
    """Steps 1-2 on 6 identities, then a resume with --data of 2: refused (exit 1) naming the data fields
    and both values, nothing trained; the original data resume."""
    six = make_market(tmp_path / "six", n_pids=6)
    two = make_market(tmp_path / "two", n_pids=2)
    out = tmp_path / "gen"
    assert _train(six, out, "--steps", "4", "--checkpoint-every", "2") == 0
    data = json.loads((out / "train_config.json").read_text())["data"]
    assert data["identities"] == 6 and data["images"] == 12 and len(data["records"]) == 12
    shutil.rmtree(out / "checkpoints" / "step-0000004")  # as if killed after step 2
    shutil.rmtree(out / "final")
    capsys.readouterr()
    assert _train(two, out, "--steps", "4", "--checkpoint-every", "2") == 1
    err = capsys.readouterr().err
    assert "data.identities: checkpoint 6, now 2" in err and "data.images: checkpoint 12, now 4" in err, err
    assert "data.records: checkpoint" in err and "training_state.pt" in err and "Traceback" not in err
    assert [s for s, _ in list_checkpoints(out)] == [2] and not (out / "final").exists()
    assert json.loads((out / "train_config.json").read_text())["data"] == data  # not rewritten
    # same names and identities, other keypoints (another --annotations): refused too
    ann = (six / "ann.csv").read_text().splitlines()
    header, first = ann[0], ann[1].split(":")
    first[1] = first[1].replace("2", "3", 1)
    (six / "ann.csv").write_text("\n".join([header, ":".join(first), *ann[2:]]) + "\n")
    assert _train(six, out, "--steps", "4", "--checkpoint-every", "2") == 1
    err = capsys.readouterr().err
    assert "data.records: checkpoint" in err and "data.identities" not in err, err
    (six / "ann.csv").write_text("\n".join(ann) + "\n")
    assert _train(six, out, "--steps", "4", "--checkpoint-every", "2") == 0
    assert [s for s, _ in list_checkpoints(out)] == [2, 4] and (out / "final").is_dir()


def test_library_resume_with_other_pairs_is_refused(tmp_path: Path) -> None:
    records = _records()
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, checkpoint_every=1, sample_every=0,
                      tensorboard=False)  # fmt: skip
    out = tmp_path / "run"
    train_generator(_tiny(), PosePairDataset(records, (H, W), seed=0), cfg, out, progress=False)
    shutil.rmtree(out / "checkpoints" / "step-0000002")
    explicit = PosePairDataset(records, (H, W), pairs=[(0, 1), (2, 3)], seed=0)
    with pytest.raises(ResumeMismatchError, match=r"data\.pair_list: checkpoint 'auto', now '[0-9a-f]{12}'"):
        train_generator(_tiny(), explicit, cfg, out, progress=False)


def test_max_minutes_stop_exits_3_without_final(tmp_path: Path, capsys, monkeypatch) -> None:
    """An early stop is no finished model: exit 3 (as reid-gain), no final/, the printed line says so; the
    same command again resumes from the checkpoint and writes final/ (exit 0)."""
    import posereid.models.training as training

    data = make_market(tmp_path / "m", n_pids=2)
    out = tmp_path / "gen"
    ticks = iter(range(0, 10_000, 25))  # every clock read is 25 s later: a 1-minute budget ends at step 3
    monkeypatch.setattr(training, "_clock", lambda: float(next(ticks)))
    capsys.readouterr()
    assert _train(data, out, "--steps", "5", "--checkpoint-every", "0", "--max-minutes", "1") == 3
    text = capsys.readouterr().out
    assert "at step 3 of 5" in text and "no " + str(out / "final") in text and "again" in text, text
    assert not (out / "final").exists() and [s for s, _ in list_checkpoints(out)] == [3]
    assert (out / "loss.png").is_file()
    monkeypatch.setattr(training, "_clock", lambda: 0.0)
    assert _train(data, out, "--steps", "5", "--checkpoint-every", "0", "--max-minutes", "1") == 0
    assert "trained steps 3..5" in capsys.readouterr().out and (out / "final").is_dir()


def test_max_minutes_stop_of_a_stage_exits_3(tmp_path: Path, capsys, monkeypatch) -> None:
    """A multi-stage family (pcdms) stopped in its first stage: exit 3, neither the stage's nor OUT/final."""
    import posereid.models.training as training

    data = make_market(tmp_path / "m", n_pids=2)
    out = tmp_path / "gen"
    ticks = iter(range(0, 10_000, 25))
    monkeypatch.setattr(training, "_clock", lambda: float(next(ticks)))
    rc = _train(data, out, "--family", "pcdms", "--stage", "inpaint", "--steps", "5", "--checkpoint-every", "0",
                "--max-minutes", "1")  # fmt: skip
    assert rc == 3 and "out of time" in capsys.readouterr().out
    assert not (out / "inpaint" / "final").exists() and not (out / "final").exists()


def _parsed(tmp_path: Path, *extra: str) -> argparse.Namespace:
    """train-generator's arguments (no data read: the model-building helpers only look at these)."""
    from posereid.experiments.train_generator import add_train_generator_args

    parser = argparse.ArgumentParser()
    add_train_generator_args(parser)
    return parser.parse_args(["--data", str(tmp_path), "--annotations", str(tmp_path / "a.csv"), "--out",
                              str(tmp_path / "o"), "--preset", "tiny", *extra])  # fmt: skip


def _has_reference_processors(pipe: Any) -> bool:
    procs = pipe.model.unet.attn_processors.values()
    return any(getattr(p, "reference_index", None) is not None for p in procs)


def test_reference_attention_flag_builds_reference_models_and_pcdms_is_refused(tmp_path: Path) -> None:
    """``--reference-attention`` reaches a fresh pidm / cfld model's config (its UNet gets the reference
    processors and projections); without it the preset's default (off) stands; pcdms has no such field."""
    from posereid.experiments.train_generator import _preset_model

    for family in ("pidm", "cfld"):
        torch.manual_seed(0)
        pipe = _preset_model(_parsed(tmp_path, "--family", family, "--reference-attention"))
        assert pipe.family == family and pipe.model.config.reference_attention is True
        assert len(pipe.model.reference_proj) > 0 and _has_reference_processors(pipe)
        plain = _preset_model(_parsed(tmp_path, "--family", family))
        assert plain.model.config.reference_attention is False and len(plain.model.reference_proj) == 0
        assert not _has_reference_processors(plain)
    with pytest.raises(SystemExit, match="the pcdms family has no reference_attention .*pidm, cfld"):
        _preset_model(_parsed(tmp_path, "--family", "pcdms", "--reference-attention"))


def test_reference_attention_flag_must_agree_with_init_and_resumed_checkpoints(tmp_path: Path) -> None:
    """``--init``: the checkpoint's setting stands, the flag on a model without it is refused; a resume from
    ``--out`` whose latest checkpoint differs from the fresh model is refused naming the setting."""
    from posereid.experiments.train_generator import _check_resume, _load_init, _preset_model
    from posereid.models.pidm import PIDMPipeline
    from posereid.models.training import STATE_FILE

    torch.manual_seed(0)
    PIDMPipeline.from_preset("tiny").save_pretrained(tmp_path / "plain")
    PIDMPipeline.from_preset("tiny", reference_attention=True).save_pretrained(tmp_path / "ref")
    with pytest.raises(SystemExit, match="plain was made with reference_attention False"):
        _load_init(_parsed(tmp_path, "--reference-attention"), tmp_path / "plain")
    for extra in ((), ("--reference-attention",)):
        assert _has_reference_processors(_load_init(_parsed(tmp_path, *extra), tmp_path / "ref"))
    ckpt = tmp_path / "o" / "checkpoints" / "step-0000001"
    shutil.copytree(tmp_path / "ref", ckpt / "model")
    (ckpt / STATE_FILE).write_bytes(b"")
    args = _parsed(tmp_path)
    match = "started with reference_attention True \\(--reference-attention\\), now False \\(the preset's\\)"
    with pytest.raises(SystemExit, match=match):
        _check_resume(args, _preset_model(args), args.out)
    args = _parsed(tmp_path, "--reference-attention")
    _check_resume(args, _preset_model(args), args.out)  # the same setting resumes
    args = _parsed(tmp_path, "--overwrite")
    _check_resume(args, _preset_model(args), args.out)  # starts over


#: a model-override flag as given (disagreeing with :func:`_saved_pidm`'s model), its field, the value asked
#: and the saved one as the message shows them
_MODEL_FLAG_CASES = [
    (("--prediction-type", "flow"), "prediction_type", "flow", "v_prediction"),
    (("--zero-snr",), "rescale_betas_zero_snr", "True", "False"),
    (("--snr-gamma", "3"), "snr_gamma", "3.0", "5.0"),
    (("--p-drop-source-pose", "0.5"), "p_drop_source_pose", "0.5", "0.25"),
    (("--image-size", "64x32"), "image_size", "64x32", f"{H}x{W}"),
    (("--reference-attention",), "reference_attention", "True", "False"),
]


def _saved_pidm(path: Path) -> Path:
    """A tiny PIDM made with non-default settings of every model flag that has a value."""
    from posereid.models.pidm import PIDMPipeline

    torch.manual_seed(0)
    PIDMPipeline.from_preset(
        "tiny", image_size=(H, W), prediction_type="v_prediction", snr_gamma=5.0, p_drop_source_pose=0.25
    ).save_pretrained(path)
    return path


def test_model_flags_must_agree_with_the_init_checkpoint(tmp_path: Path) -> None:
    """``--init``: a model flag given with another value than the checkpoint's is refused naming the flag, the
    checkpoint and both values; the same value passes; left out, the checkpoint's value stands."""
    from posereid.experiments.train_generator import _load_init

    init = _saved_pidm(tmp_path / "init")
    for given, field, asked, saved in _MODEL_FLAG_CASES:
        match = f"{given[0]} asks for {field} {asked}, but {init} was made with {field} {saved}: "
        with pytest.raises(SystemExit, match="^" + re.escape(match)):
            _load_init(_parsed(tmp_path, *given), init)
    same = ("--prediction-type", "v_prediction", "--snr-gamma", "5", "--p-drop-source-pose", "0.25",
            "--image-size", f"{H}x{W}")  # fmt: skip
    for extra in (same, ()):
        model = _load_init(_parsed(tmp_path, *extra), init)
        assert model.prediction_type == "v_prediction" and model.image_size == (H, W)
        assert model.model.config.snr_gamma == 5.0 and model.model.config.p_drop_source_pose == 0.25


def test_model_flag_of_a_family_without_the_field_is_refused_with_init(tmp_path: Path) -> None:
    """cfld has no p_drop_source_pose: the flag is refused, with --init as for a fresh model."""
    from posereid.experiments.train_generator import _load_init, _preset_model
    from posereid.models.cfld import CFLDPipeline

    torch.manual_seed(0)
    CFLDPipeline.from_preset("tiny").save_pretrained(tmp_path / "cfld")
    match = (
        "--p-drop-source-pose: the cfld family has no p_drop_source_pose \\(families with it: pidm, pcdms\\)"
    )
    with pytest.raises(SystemExit, match=match):
        _load_init(_parsed(tmp_path, "--p-drop-source-pose", "0.1"), tmp_path / "cfld")
    with pytest.raises(SystemExit, match=match):
        _preset_model(_parsed(tmp_path, "--family", "cfld", "--p-drop-source-pose", "0.1"))


def test_a_pcdms_refiner_trained_with_another_prediction_type_is_refused(tmp_path: Path) -> None:
    """PCDMs' refiner shares the image stages' schedule (``SHARED_SCHEDULE``): ``--init`` of a checkpoint whose
    refiner predicts ε while its inpainter predicts v is refused for ``--prediction-type v_prediction`` (both
    values named); a checkpoint whose two agree passes."""
    from posereid.experiments.train_generator import _load_init
    from posereid.models.pcdms import PCDMsPipeline
    from posereid.models.pipeline import training_scheduler

    torch.manual_seed(0)
    pipe = PCDMsPipeline.from_preset("tiny", prediction_type="v_prediction")
    pipe.save_pretrained(tmp_path / "same")
    pipe.refiner_scheduler = training_scheduler(prediction_type="epsilon")
    pipe.save_pretrained(tmp_path / "mixed")
    args = _parsed(tmp_path, "--family", "pcdms", "--prediction-type", "v_prediction")
    assert _load_init(args, tmp_path / "same").prediction_type == "v_prediction"
    match = f"but {tmp_path / 'mixed'} was made with prediction_type v_prediction / epsilon"
    with pytest.raises(SystemExit, match=re.escape(match)):
        _load_init(args, tmp_path / "mixed")


def test_model_flags_must_agree_with_the_resumed_checkpoint(tmp_path: Path) -> None:
    """A resume loads the latest checkpoint's weights into the fresh model: a model setting of the two that
    differs (given or the preset's) is refused naming the flag, the checkpoint and both values."""
    from posereid.experiments.train_generator import _check_resume, _preset_model
    from posereid.models.training import STATE_FILE

    ckpt = tmp_path / "o" / "checkpoints" / "step-0000002"
    _saved_pidm(ckpt / "model")
    (ckpt / STATE_FILE).write_bytes(b"")
    same = ["--prediction-type", "v_prediction", "--snr-gamma", "5", "--p-drop-source-pose", "0.25",
            "--image-size", f"{H}x{W}"]  # fmt: skip
    args = _parsed(tmp_path, *same)
    _check_resume(args, _preset_model(args), args.out)
    args = _parsed(tmp_path, *same[:-2], "--image-size", "64x32")
    match = (
        f"{ckpt}: this run was started with image_size {H}x{W} (--image-size), now 64x32 (from --image-size)"
    )
    with pytest.raises(SystemExit, match=re.escape(match)):
        _check_resume(args, _preset_model(args), args.out)
    args = _parsed(
        tmp_path, *same[:2], *same[4:]
    )  # --snr-gamma left out: the preset's (none) is not the run's
    match = "started with snr_gamma 5.0 (--snr-gamma), now None (the preset's)"
    with pytest.raises(SystemExit, match=re.escape(match)):
        _check_resume(args, _preset_model(args), args.out)


def test_init_with_another_prediction_type_is_refused_by_the_command(tmp_path: Path) -> None:
    """``train-generator --init X --prediction-type flow`` on a v-prediction X: refused (``SystemExit`` with
    the message: exit code 1 and the line on stderr) before any training."""
    data = make_market(tmp_path / "m", n_pids=2)
    init = _saved_pidm(tmp_path / "init")
    match = f"--prediction-type asks for prediction_type flow, but {init} was made with prediction_type v_prediction"
    with pytest.raises(SystemExit, match=re.escape(match)):
        _train(data, tmp_path / "gen", "--init", str(init), "--prediction-type", "flow", "--steps", "1")
    assert not (tmp_path / "gen" / "checkpoints").exists()


def test_a_stage_resume_is_checked_against_the_stage_checkpoint(tmp_path: Path) -> None:
    """pcdms: a rerun whose stage's latest checkpoint (OUT/<stage>/checkpoints) was made with another model
    setting is refused before training, naming the stage's checkpoint and both values."""
    from posereid.models.pcdms import PCDMsPipeline
    from posereid.models.training import STATE_FILE

    data = make_market(tmp_path / "m", n_pids=2)
    ckpt = tmp_path / "gen" / "inpaint" / "checkpoints" / "step-0000001"
    torch.manual_seed(0)
    PCDMsPipeline.from_preset("tiny", image_size=(H, W), p_drop_source_pose=0.3).save_pretrained(
        ckpt / "model"
    )
    (ckpt / STATE_FILE).write_bytes(b"")
    match = f"{ckpt}: this run was started with p_drop_source_pose 0.3 (--p-drop-source-pose), now 0.1 (the preset's)"
    with pytest.raises(SystemExit, match=re.escape(match)):
        _train(data, tmp_path / "gen", "--family", "pcdms", "--stage", "inpaint", "--steps", "2")
    assert [s for s, _ in list_checkpoints(tmp_path / "gen" / "inpaint")] == [1]
