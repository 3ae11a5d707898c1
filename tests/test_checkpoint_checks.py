"""A checkpoint's configs and weights are checked before use, and every refusal names the file and the field
or tensor (issue 27 item 7, and item 10's ``trained_stages`` string)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from posereid.models.checkpoint import CheckpointError
from posereid.models.contract import family_class, load_generator

FAMILIES = ("pidm", "cfld", "pcdms")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per family, EMA weights included."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        pipe = family_class(family).from_preset("tiny")
        pipe.save_pretrained(
            root / family, ema_state_dict={k: v.clone() for k, v in pipe.state_dict().items()}
        )
        out[family] = root / family
    return out


def _model_folder(directory: Path) -> Path:
    """The folder of the main model's config.json (the root, or the PCDMs inpainter's folder)."""
    if (directory / "config.json").is_file():
        return directory
    index = json.loads((directory / "model_index.json").read_text())
    return directory / next(k for k, v in index.items() if isinstance(v, list) and v[1] == "PCDMsInpainter")


def _copy(saved: dict[str, Path], family: str, tmp_path: Path) -> tuple[Path, Path]:
    directory = tmp_path / family
    shutil.copytree(saved[family], directory)
    return directory, _model_folder(directory)


def _edit_json(path: Path, **fields: object) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", [-64, 32]),
        ("image_size", [0, 0]),
        ("image_size", [32.5, 16]),
        ("block_out_channels", [16, 32, 1 << 40]),
        ("layers_per_block", 1.5),
        ("layers_per_block", True),
        ("norm_num_groups", 0),
    ],
)
def test_bad_config_field_names_file_and_field(
    saved: dict[str, Path], tmp_path: Path, family: str, field: str, value: object
) -> None:
    directory, folder = _copy(saved, family, tmp_path)
    _edit_json(folder / "config.json", **{field: value})
    with pytest.raises(CheckpointError) as info:
        load_generator(directory)
    message = str(info.value)
    assert str(folder / "config.json") in message and field in message, message


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("value", [-5, 0, 10.5])
def test_bad_scheduler_field_names_file_and_field(
    saved: dict[str, Path], tmp_path: Path, family: str, value: object
) -> None:
    directory, folder = _copy(saved, family, tmp_path)
    _edit_json(folder / "scheduler_config.json", num_train_timesteps=value)
    with pytest.raises(CheckpointError) as info:
        load_generator(directory)
    message = str(info.value)
    assert str(folder / "scheduler_config.json") in message and "num_train_timesteps" in message, message


@pytest.mark.parametrize("family", FAMILIES)
def test_integer_weights_are_refused_naming_the_tensor(
    saved: dict[str, Path], tmp_path: Path, family: str
) -> None:
    directory, folder = _copy(saved, family, tmp_path)
    name = ""
    for file in ("ema.safetensors", "diffusion_pytorch_model.safetensors"):
        state = load_file(str(folder / file))
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = state[name].to(torch.int32)
        save_file(state, str(folder / file))
    for use_ema, file in ((True, "ema.safetensors"), (False, "diffusion_pytorch_model.safetensors")):
        with pytest.raises(CheckpointError) as info:
            load_generator(directory, use_ema=use_ema)
        message = str(info.value)
        assert str(folder / file) in message and name in message and "int32" in message, message


@pytest.mark.parametrize("family", FAMILIES)
def test_damaged_plain_weights_beside_ema_are_reported(
    saved: dict[str, Path], tmp_path: Path, family: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The EMA weights still load, with a warning naming the damaged file; use_ema=False refuses it."""
    directory, folder = _copy(saved, family, tmp_path)
    plain = folder / "diffusion_pytorch_model.safetensors"
    plain.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="posereid.models.checkpoint"):
        load_generator(directory, use_ema=True)
    assert str(plain) in caplog.text and "damaged" in caplog.text, caplog.text
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        load_generator(directory, use_ema=False)


def test_renamed_plain_tensor_beside_ema_is_reported(
    saved: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A readable plain weights file that does not fit the model is reported too (names, not values)."""
    directory, folder = _copy(saved, "pidm", tmp_path)
    plain = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(plain))
    key = next(iter(state))
    state["renamed"] = state.pop(key)
    save_file(state, str(plain))
    with caplog.at_level(logging.WARNING, logger="posereid.models.checkpoint"):
        load_generator(directory, use_ema=True)
    assert str(plain) in caplog.text and key in caplog.text, caplog.text


def test_trained_stages_string_names_model_index_and_field(saved: dict[str, Path], tmp_path: Path) -> None:
    directory, _ = _copy(saved, "pcdms", tmp_path)
    _edit_json(directory / "model_index.json", trained_stages="inpaint")
    with pytest.raises(CheckpointError) as info:
        load_generator(directory)
    message = str(info.value)
    assert str(directory / "model_index.json") in message and "trained_stages" in message, message
    assert "'i', 'n'" not in message


def test_good_checkpoints_load_without_warnings(
    saved: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for family in FAMILIES:
            load_generator(saved[family], use_ema=True)
            load_generator(saved[family], use_ema=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
