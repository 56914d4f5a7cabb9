"""Every bad checkpoint file is one ``CheckpointError`` line naming the file, from every reader: files that
are no checkpoint at all, and checkpoints whose CroCoNet arguments are wrong (checked before anything is
built, so an absurd width is refused instead of allocated)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest
import torch

from croco.models import CroCoNet, export_official_checkpoint
from croco.models.checkpoints import (
    MAX_PARAMETERS,
    CheckpointError,
    check_checkpoint_file,
    check_croco_kwargs,
    estimated_parameters,
    load_backbone,
    load_official_checkpoint,
    read_any_checkpoint,
    read_official_checkpoint,
)
from croco.models.downstream import CroCoDownstreamMonocularEncoder, LinearProbeHead
from croco.tasks.export import load_task_network, main
from croco.utils.config import group_options, model_preset
from tests.conftest import CONF_DIR

TINY = model_preset("tiny")


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return CroCoDownstreamMonocularEncoder(LinearProbeHead(3), **TINY)


def _readers(backbone: torch.nn.Module) -> dict:
    return {
        "read_official_checkpoint": read_official_checkpoint,
        "read_any_checkpoint": read_any_checkpoint,
        "load_official_checkpoint": load_official_checkpoint,
        "load_backbone": lambda path: load_backbone(backbone, path),
        "network_from_lightning": load_task_network,  # what python -m croco.tasks.export reads with
        "check_checkpoint_file": check_checkpoint_file,  # the start-up look (tensors memory-mapped)
    }


def _assert_every_reader_names(path: Path, backbone: torch.nn.Module, *fragments: str) -> dict[str, str]:
    messages = {}
    for name, read in _readers(backbone).items():
        with pytest.raises(CheckpointError) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(str(path)) and "\n" not in message, (name, message)
        messages[name] = message
    for fragment in fragments:
        assert any(fragment in m for m in messages.values()), (fragment, messages)
    return messages


# ------------------------------------------------------------------------------------------ not a checkpoint
def _truncated(path: Path) -> None:
    export_official_checkpoint(CroCoNet(**TINY), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


NOT_CHECKPOINTS = {
    "text": (lambda p: p.write_text("hello\nthis is not a checkpoint\n"), "not a PyTorch checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "an empty file"),
    "pickle_garbage": (lambda p: p.write_bytes(b"\x80\x02" + bytes(range(256)) * 4), "not a readable"),
    "truncated": (_truncated, "not a readable PyTorch checkpoint"),
    "a_list": (lambda p: torch.save([1, 2], p), "expected a dict"),
    "non_tensor_weights": (lambda p: torch.save({"model": {"w": 1}}, p), "entry 'w' is a int, not a tensor"),
    "non_string_argument": (
        lambda p: torch.save({"model": {}, "croco_kwargs": {1: 2}}, p),
        "unknown CroCoNet",
    ),
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_a_file_that_is_no_checkpoint_is_named_by_every_reader(tmp_path, backbone, kind):
    write, fragment = NOT_CHECKPOINTS[kind]
    path = tmp_path / f"{kind}.pth"
    write(path)
    _assert_every_reader_names(path, backbone, fragment)


def test_a_folder_is_named(tmp_path, backbone):
    _assert_every_reader_names(tmp_path, backbone, "a folder, not a checkpoint file")


# ------------------------------------------------------------------------------------------ bad arguments
BAD_ARGUMENTS = {
    "string_size": ({"img_size": "64"}, "img_size='64': expected a positive integer or a pair"),
    "float_depth": ({"enc_depth": 4.0}, "enc_depth=4.0: expected an integer >= 0"),
    "absurd_width": ({"enc_embed_dim": 10**9, "enc_num_heads": 1}, "parameters; allowed: at most 5e+09"),
    "unknown_pos_embed": ({"pos_embed": "learned"}, "pos_embed='learned': expected cosine or RoPE<base>"),
    "heads_do_not_divide": (
        {"enc_num_heads": 5},
        "enc_embed_dim=128: expected a multiple of enc_num_heads=5",
    ),
    "bool_patch": ({"patch_size": True}, "patch_size=True: expected a positive integer"),
}


def _write(layout: str, kwargs: dict, path: Path) -> None:
    if layout == "croco_kwargs":  # released CroCo v2 files, our exports
        torch.save({"model": {}, "croco_kwargs": kwargs}, path)
    elif layout == "args.model":  # the official pretrain.py
        text = "CroCoNet(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
        torch.save({"model": {}, "args": argparse.Namespace(model=text)}, path)
    elif layout == "args.croco_args":  # CroCo-Stereo / CroCo-Flow
        torch.save({"model": {}, "args": argparse.Namespace(croco_args=kwargs)}, path)
    else:  # a Lightning checkpoint of this project
        state = {"net.mask_token": torch.zeros(1, 1, 96)}
        torch.save({"state_dict": state, "hyper_parameters": {"model": kwargs, "mask_ratio": 0.9}}, path)


@pytest.mark.parametrize("layout", ["croco_kwargs", "args.model", "args.croco_args", "lightning"])
@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_are_named_before_anything_is_built(tmp_path, backbone, monkeypatch, layout, case):
    change, fragment = BAD_ARGUMENTS[case]
    path = tmp_path / f"{case}.pth"
    _write(layout, {**TINY, **change}, path)
    built = []
    monkeypatch.setattr(CroCoNet, "initialize_weights", lambda self: built.append(self))
    _assert_every_reader_names(path, backbone, fragment)
    assert not built  # refused before any network was constructed


def test_a_bad_mask_ratio_of_a_lightning_checkpoint_is_named(tmp_path, backbone):
    path = tmp_path / "ratio.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": TINY, "mask_ratio": 1.5}}, path)
    _assert_every_reader_names(path, backbone, "hyper_parameters.mask_ratio=1.5: expected a number strictly")


def test_absurd_sizes_are_refused_without_allocating():
    expected = r"^x.pth: croco_kwargs: these arguments describe a network of about \d\.\de\+1\d parameters; "
    with pytest.raises(CheckpointError, match=expected + r"allowed: at most 5e\+09$"):
        check_croco_kwargs({**TINY, "enc_embed_dim": 10**7}, "x.pth: croco_kwargs")
    with pytest.raises(CheckpointError, match="parameters"):
        check_croco_kwargs({"enc_depth": 10**9}, "x.pth: croco_kwargs")  # defaults for the other arguments


def _complete(kwargs: dict) -> dict:
    """The constructor defaults filled in, ``img_size`` as a pair (what ``estimated_parameters`` takes)."""
    full = {**{n: p.default for n, p in inspect.signature(CroCoNet).parameters.items()}, **kwargs}
    size = full["img_size"]
    full["img_size"] = (size, size) if isinstance(size, int) else tuple(size)
    return full


def test_the_size_estimate_and_the_real_presets():
    for kwargs in (TINY, {**TINY, "decoder": "cat"}, {**TINY, "pos_embed": "cosine"}):
        net = CroCoNet(**kwargs)
        real = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
        assert abs(estimated_parameters(_complete(kwargs)) - real) / real < 0.05
    for preset in group_options(
        CONF_DIR, "model"
    ):  # every preset, the ViT-L one included, is far below the cap
        kwargs = model_preset(preset)
        assert check_croco_kwargs(kwargs, f"model={preset}") == kwargs
        assert estimated_parameters(_complete(kwargs)) < MAX_PARAMETERS / 5


# ------------------------------------------------------------------------------------------ export tool
@pytest.mark.parametrize("kind", ["text", "absurd_width"])
def test_export_tool_prints_one_line(tmp_path, capsys, kind):
    source = tmp_path / "last.ckpt"
    if kind == "text":
        source.write_text("not a checkpoint")
    else:
        _write("lightning", {**TINY, "enc_embed_dim": 10**9, "enc_num_heads": 1}, source)
    out = tmp_path / "out.pth"
    assert main([str(source), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {source}: ") and "\n" not in err
    assert not out.exists()
