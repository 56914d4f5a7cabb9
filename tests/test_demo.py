"""The reconstruction demo: ``python demo.py`` (CLI), its web page (gradio) and, when a browser is installed, the
page driven in headless Chromium."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from croco.data.transforms import normalize
from croco.demo.cli import main
from croco.demo.reconstruct import (
    fit_to_size,
    load_demo_image,
    load_demo_network,
    reconstruct_files,
    reconstruct_pair,
)
from croco.eval.crossview import fixed_mask
from croco.models import CroCoNet
from croco.tasks.export import export_lightning_checkpoint
from croco.tasks.pretrain import PretrainTask

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {"img_size": 32, "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 1, "enc_num_heads": 2,
        "dec_embed_dim": 32, "dec_depth": 1, "dec_num_heads": 2, "pos_embed": "cosine"}  # fmt: skip
PATCHES = (32 // 8) ** 2
CELL = 192  # the panel's cell: a 32-pixel image enlarged 6 times (``min_cell``)
GAP = 2  # render_panel's gap between cells


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A Lightning-like checkpoint of a tiny PretrainTask (what Lightning stores: ``state_dict`` and
    ``hyper_parameters``), its export as an official ``.pth``, and two odd-sized PNGs."""
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    task = PretrainTask(model=TINY, mask_ratio=0.9)
    ckpt = root / "last.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    pth = export_lightning_checkpoint(ckpt, root / "exported.pth")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:70, 0:50]
    smooth = np.stack([xx * 5, yy * 3, (xx + yy) * 2], axis=-1) % 256  # structure, so patches differ
    img1 = (smooth + rng.integers(0, 40, smooth.shape)).clip(0, 255).astype(np.uint8)  # 50 wide, 70 high
    img2 = np.ascontiguousarray(np.transpose(img1, (1, 0, 2))[::-1])  # 70 wide, 50 high
    paths = {"ckpt": ckpt, "pth": pth, "img1": root / "view1.png", "img2": root / "view2.png"}
    Image.fromarray(img1).save(paths["img1"])
    Image.fromarray(img2).save(paths["img2"])
    return paths


def _run(files: dict[str, Path], out: Path, *extra: str, ckpt: str = "ckpt") -> np.ndarray:
    code = main(["--ckpt", str(files[ckpt]), "--img1", str(files["img1"]), "--img2", str(files["img2"]),
                 "--out", str(out), *extra])  # fmt: skip
    assert code == 0
    return np.asarray(Image.open(out).convert("RGB"))


def _cells(panel: np.ndarray) -> list[np.ndarray]:
    """The four image cells of a one-row panel (bottom-anchored: the title above may wrap onto any lines)."""
    top = panel.shape[0] - 2 * GAP - CELL  # each row is followed by a gap, then the bottom margin
    return [panel[top : top + CELL, GAP + i * (CELL + GAP) : GAP + i * (CELL + GAP) + CELL] for i in range(4)]


def _patch_pixels(mask_row: torch.Tensor, visible: bool) -> np.ndarray:
    """A (CELL, CELL) boolean map of the panel cell's pixels in the visible (or masked) patches."""
    grid = (~mask_row if visible else mask_row).reshape(4, 4).numpy()
    return np.kron(grid, np.ones((CELL // 4, CELL // 4), dtype=bool)).astype(bool)


def test_cli_writes_the_panel_for_odd_sizes_and_the_seed_fixes_the_mask(files, tmp_path, capsys):
    panel = _run(files, tmp_path / "a.png", "--seed", "3")
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'a.png'}"
    assert panel.shape[1] == 4 * CELL + 5 * GAP and panel.shape[0] > CELL + GAP
    again = _run(files, tmp_path / "b.png", "--seed", "3")
    np.testing.assert_array_equal(panel, again)
    other = _run(files, tmp_path / "c.png", "--seed", "4")
    assert not np.array_equal(panel, other)
    masked_a, masked_c = _cells(panel)[1], _cells(other)[1]
    black_a, black_c = (masked_a.max(axis=-1) == 0), (masked_c.max(axis=-1) == 0)
    assert not np.array_equal(black_a, black_c)  # another mask, not just other pixels
    # the masked cell shows the input exactly where the seed's mask leaves patches visible
    shown = _patch_pixels(fixed_mask(1, PATCHES, 0.9, 3)[0], visible=True)
    assert black_a[~shown].all() and not black_a[shown].all()


def test_the_exported_pth_gives_the_same_panel(files, tmp_path):
    np.testing.assert_array_equal(_run(files, tmp_path / "a.png"), _run(files, tmp_path / "b.png", ckpt="pth"))


def test_paste_visible_shows_the_input_on_the_visible_patches(files, tmp_path):
    mask = fixed_mask(1, PATCHES, 0.9, 5)[0]
    visible = _patch_pixels(mask, visible=True)
    _, _, rec, target = _cells(_run(files, tmp_path / "p.png", "--seed", "5", "--paste-visible"))
    np.testing.assert_array_equal(rec[visible], target[visible])
    assert not np.array_equal(rec[~visible], target[~visible])  # the masked ones are the network's
    _, _, raw, _ = _cells(_run(files, tmp_path / "r.png", "--seed", "5"))
    assert not np.array_equal(raw[visible], target[visible])
    np.testing.assert_array_equal(raw[~visible], rec[~visible])

    result = reconstruct_files(files["ckpt"], files["img1"], files["img2"], seed=5, paste_visible=True)
    keep = ~result.mask[0].reshape(1, 1, 4, 1, 4, 1).expand(1, 3, 4, 8, 4, 8).reshape(1, 3, 32, 32)
    torch.testing.assert_close(result.views["reconstruction"][keep], result.views["target"][keep], rtol=0, atol=0)
    assert "centre-cropped" in result.caption and "57" not in result.caption  # 14 of 16 patches here
    assert "14 of 16 patches hidden, seed 5" in result.caption


def test_norm_pix_reconstructions_take_the_target_patch_statistics(files):
    """A head that predicts 1 everywhere (one standard deviation above a normalised patch's mean) must come out
    as each target patch's mean plus its std (unbiased variance + 1e-6), as the official demo de-normalises."""
    loaded = load_demo_network(files["ckpt"])
    assert loaded.norm_pix_loss and not loaded.net.training
    net = loaded.net
    with torch.no_grad():
        net.prediction_head.weight.zero_()
        net.prediction_head.bias.fill_(1.0)
    image1, image2 = load_demo_image(files["img1"]), load_demo_image(files["img2"])
    result = reconstruct_pair(loaded, image1, image2, seed=1)
    rec, target = result.views["reconstruction"], result.views["target"]
    unclamped = net.patchify(((rec > 0) & (rec < 1)).float()).bool().all(dim=-1)  # the clamp changed nothing
    assert unclamped.sum() >= 4
    rec_p, tgt_p = net.patchify(normalize(rec)), net.patchify(normalize(target))
    expected = tgt_p.mean(-1, keepdim=True) + (tgt_p.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(rec_p[unclamped], expected.expand_as(tgt_p)[unclamped], atol=1e-4, rtol=0)


def test_official_args_layout_loads_and_its_norm_pix_flag_is_followed(files, tmp_path):
    net = load_demo_network(files["pth"]).net
    text = "CroCoNet(" + ", ".join(f"{k}={v!r}" for k, v in TINY.items()) + ")"
    raw = tmp_path / "checkpoint-last.pth"
    torch.save({"model": net.state_dict(), "args": argparse.Namespace(model=text, norm_pix_loss=0)}, raw)
    loaded = load_demo_network(raw)
    assert isinstance(loaded.net, CroCoNet) and not loaded.norm_pix_loss
    result = reconstruct_files(raw, files["img1"], files["img2"])
    assert "raw pixel predictions" in result.caption


def test_fit_to_size_crops_the_centre_to_the_aspect_then_resizes():
    image = np.zeros((70, 50, 3), dtype=np.uint8)
    image[10:60] = 255  # the centred 50x50 square is white; the 10-row bands above and below are cropped away
    np.testing.assert_array_equal(fit_to_size(image, 32, 32), np.full((32, 32, 3), 255, dtype=np.uint8))
    wide = fit_to_size(image, 16, 32)  # a 2:1 model: the centre 50x25 strip
    assert wide.shape == (16, 32, 3) and (wide == 255).all()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("corrupt", "not a PyTorch checkpoint"),
        ("missing_image", "view9.png"),
        ("mask_ratio", "mask ratio=1.5: expected a number strictly between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(files, tmp_path, capsys, case, expected):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    args = {"--ckpt": str(files["ckpt"]), "--img1": str(files["img1"]), "--img2": str(files["img2"]),
            "--out": str(tmp_path / "panel.png")}  # fmt: skip
    if case == "corrupt":
        args["--ckpt"] = str(corrupt)
    elif case == "missing_image":
        args["--img2"] = str(tmp_path / "view9.png")
    else:
        args["--mask-ratio"] = "1.5"
    code = main([item for pair in args.items() for item in pair])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "panel.png").exists() and list(tmp_path.iterdir()) == [corrupt]  # nothing half-written


def test_demo_py_runs_the_cli_without_importing_gradio(files, tmp_path):
    out = tmp_path / "panel.png"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['demo.py', '--ckpt', {str(files['pth'])!r}, '--img1', {str(files['img1'])!r},"
        f" '--img2', {str(files['img2'])!r}, '--out', {str(out)!r}]\n"
        "try:\n    runpy.run_path('demo.py', run_name='__main__')\nexcept SystemExit as e:\n    status = e.code\n"
        "print('status', status, 'gradio' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "status 0 False", done.stderr
    assert Image.open(out).size[0] == 4 * CELL + 5 * GAP


def test_the_page_function_matches_the_cli_and_names_bad_input(files, tmp_path):
    from croco.demo.ui import reconstruct_for_ui

    image1 = np.asarray(Image.open(files["img1"]))
    image2 = np.asarray(Image.open(files["img2"]))
    panel, caption = reconstruct_for_ui(image1, image2, 0.9, 3, False, str(files["ckpt"]))
    np.testing.assert_array_equal(panel, _run(files, tmp_path / "cli.png", "--seed", "3"))
    assert "seed 3" in caption
    with pytest.raises(ValueError, match="upload both images"):
        reconstruct_for_ui(image1, None, 0.9, 3, False, str(files["ckpt"]))
    with pytest.raises(ValueError, match="no such checkpoint file"):
        reconstruct_for_ui(image1, image2, 0.9, 3, False, str(tmp_path / "nope.ckpt"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio is not installed")
def test_the_page_through_gradio_client(files, tmp_path, monkeypatch):
    """The served page's API (``/reconstruct``) returns the CLI's panel. Slow: importing gradio and starting
    its server takes 10-25 s on a busy 2-core machine."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    from gradio_client import Client, handle_file

    from croco.demo.ui import API_NAME, build_ui

    page = build_ui(files["ckpt"])
    _, url, _ = page.launch(server_name="127.0.0.1", prevent_thread_lock=True, share=False, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        panel_path, caption = client.predict(handle_file(str(files["img1"])), handle_file(str(files["img2"])), 0.9,
                                             3, True, str(files["ckpt"]), api_name=f"/{API_NAME}")  # fmt: skip
        with pytest.raises(Exception, match="no such checkpoint file"):
            client.predict(handle_file(str(files["img1"])), handle_file(str(files["img2"])), 0.9, 3, True,
                           str(tmp_path / "nope.ckpt"), api_name=f"/{API_NAME}")  # fmt: skip
    finally:
        page.close()
    served = np.asarray(Image.open(panel_path).convert("RGB"))
    np.testing.assert_array_equal(served, _run(files, tmp_path / "cli.png", "--seed", "3", "--paste-visible"))
    assert "Visible patches pasted back" in caption


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no browser at {CHROMIUM} (Debian: apt-get install chromium)")
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="the playwright package is not installed")
@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio is not installed")
def test_the_page_in_a_headless_browser(files, tmp_path, monkeypatch):
    """Upload two images, press the button, wait for the panel, save the page (as docs/figures/demo_ui.png is
    made)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    from croco.demo.screenshot import screenshot_demo

    out = screenshot_demo(files["ckpt"], files["img1"], files["img2"], tmp_path / "ui.png", chromium=str(CHROMIUM))
    shot = Image.open(out)
    assert shot.width >= 4 * CELL and shot.height > 2 * CELL
