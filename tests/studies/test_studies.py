"""The studies: the runner (stages, markers, resume, failures), every job's config, and the reports drawn from
runs written here."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest

from croco.studies import STUDIES
from croco.studies.common import PRETRAINED, SCALES, pretraining, write_section
from croco.studies.runner import Job, StudyError, run_stages
from croco.tasks.checks import validate_train_config


def _write_job(path: str, text: str = "x") -> Job:
    return Job(f"write/{Path(path).stem}", ("-c", f"open({path!r}, 'a').write({text!r})"))


def test_runner_runs_each_job_once_stage_after_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = [_write_job("a.txt"), _write_job("b.txt")]
    # the second stage reads what the first wrote: it must start only after both jobs finished
    check = "import pathlib; assert pathlib.Path('a.txt').read_text() == 'x' == pathlib.Path('b.txt').read_text()"
    second = [Job("check", ("-c", check))]
    assert run_stages("demo", [first, second], jobs=2) == 3
    assert (tmp_path / "logs/studies/jobs/write/a.done").read_text().startswith("python -c")
    assert run_stages("demo", [first, second], jobs=2) == 0  # all done: nothing runs again
    assert Path("a.txt").read_text() == "x"
    changed = [_write_job("a.txt", "y"), first[1]]  # a changed command runs again
    assert run_stages("demo", [changed]) == 1  # only the changed one
    assert Path("a.txt").read_text() == "xy"
    assert run_stages("another", [[first[1]]]) == 0  # a job another study already ran is done


def test_runner_stops_after_a_failing_stage_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = Job("bad/job", ("-c", "import sys; print('boom'); sys.exit(3)"))
    later = _write_job("later.txt")
    with pytest.raises(StudyError) as error:
        run_stages("demo", [[bad, _write_job("ok.txt")], [later]])
    message = str(error.value)
    assert "\n" not in message and "bad/job (exit 3, log logs/studies/jobs/bad/job.log)" in message
    assert "boom" in (tmp_path / "logs/studies/jobs/bad/job.log").read_text()
    assert Path("ok.txt").exists() and not Path("later.txt").exists()  # its stage ran; the next did not
    assert not (tmp_path / "logs/studies/jobs/bad/job.done").exists()
    with pytest.raises(ValueError, match="job keys repeat"):
        run_stages("demo", [[later], [later]])


def _train_overrides(job: Job) -> list[list[str]]:
    """The train.py overrides of a job (one list per job of a multirun), or [] for a module job."""
    argv = list(job.argv)
    if argv[0] != "train.py":
        return []
    if "-m" not in argv:
        return [argv[1:]]
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    rest = [a for a in argv[1:] if a != "-m"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="train"):
        params = compose("train", overrides=rest, return_hydra_config=True).hydra.sweeper.params
    grid = [[]]
    for key, values in params.items():
        grid = [cell + [f"{key}={v}"] for cell in grid for v in str(values).split(",")]
    return [rest + cell for cell in grid]


def _pretraining_checkpoint(path: Path, cfg, weights: bool = True) -> None:
    """A Lightning-layout checkpoint of the network the pretraining config builds: its random weights, or (for
    networks too large to build in a test) its arguments and a single tensor."""
    import torch
    from omegaconf import OmegaConf

    from croco.models.croco import CroCoNet

    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    state = CroCoNet(**kwargs).state_dict() if weights else {"mask_token": torch.zeros(1, 1, kwargs["dec_embed_dim"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}, "hyper_parameters": {"model": kwargs}}, path)


ARCHITECTURE = ("patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "mlp_ratio", "pos_embed",
                "dec_embed_dim", "dec_depth", "dec_num_heads", "decoder")


def _pretraining_of(init: str, scale) -> tuple[str, ...]:
    """The overrides of the pretraining run whose checkpoint is ``init``."""
    run = Path(init).parent.parent.relative_to("logs/runs").as_posix()
    runs = dict(pretraining(name, scale) for name in PRETRAINED)
    return runs.get(run, (f"experiment={scale.sweep}",))  # else a cell of the mask x overlap grid


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_every_training_job_of_every_cpu_study_is_a_valid_config(study, compose_train, tmp_path, monkeypatch):
    """Each job's overrides compose and pass the config checks; each fine-tune builds its task and loads the
    checkpoint its pretraining job would write (the architectures fit, e.g. the stereo decoder)."""
    from hydra.utils import instantiate

    from croco.models.checkpoints import load_backbone

    monkeypatch.chdir(tmp_path)
    scale = SCALES["cpu"]
    module = importlib.import_module(STUDIES[study])
    jobs = [job for stage in module.stages(scale) for job in stage]
    composed = 0
    for job in jobs:
        for overrides in _train_overrides(job):
            init = next((o.split("=", 1)[1].strip("'") for o in overrides if o.startswith("finetune.init=")), None)
            if init is not None and not Path(init).exists():
                _pretraining_checkpoint(Path(init), compose_train(*_pretraining_of(init, scale)))
            cfg = compose_train(*[o for o in overrides if not o.startswith("run_name=")])
            validate_train_config(cfg, check_data=False)
            if init is not None:
                task = instantiate(cfg.task)
                load_backbone(task.net, init, with_decoder=task.settings["init_decoder"])
            composed += 1
        if job.argv[0] == "-m":
            assert importlib.util.find_spec(job.argv[1]) is not None
    assert composed >= 2
    if study == "mask_overlap":
        assert composed == 12 + 12  # the grid's 12 jobs and their 12 probes


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_every_training_job_of_every_paper_scale_study_is_a_valid_config(study, compose_train, tmp_path, monkeypatch):
    """At the paper's scale (networks too large to build in a test), each job composes and passes the config
    checks, and each fine-tune's network has the architecture of the pretraining it starts from."""
    monkeypatch.chdir(tmp_path)
    scale = SCALES["paper"].with_overrides(["trainer.devices=8"], ["data.batch_size=4"])
    module = importlib.import_module(STUDIES[study])
    composed, finetunes = 0, 0
    sources = {}  # init checkpoint -> the config of the pretraining that writes it
    for job in (job for stage in module.stages(scale) for job in stage):
        for overrides in _train_overrides(job):
            init = next((o.split("=", 1)[1].strip("'") for o in overrides if o.startswith("finetune.init=")), None)
            if init is not None and init not in sources:  # the config check reads the file's arguments
                sources[init] = compose_train(*_pretraining_of(init, scale))
                _pretraining_checkpoint(Path(init), sources[init], weights=False)
            cfg = compose_train(*[o for o in overrides if not o.startswith("run_name=")])
            validate_train_config(cfg, check_data=False)
            assert ("trainer.devices=8" in overrides) != ("data.batch_size=4" in overrides)  # the right extras
            if init is not None:
                source = sources[init]
                binocular = cfg.task.get("kind") in ("stereo", "flow")
                keys = ARCHITECTURE if binocular and cfg.finetune.init_decoder else ARCHITECTURE[:6]
                assert {k: cfg.model[k] for k in keys} == {k: source.model[k] for k in keys}, overrides
                finetunes += 1
            composed += 1
    assert composed >= 2 and (finetunes > 0 or study == "decoders")
    if study == "mask_overlap":
        assert composed == 12 + 12


def _write_metrics(run: str, columns: dict[str, list[float]]) -> None:
    path = Path("logs/runs") / run / "launches" / "t0" / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = len(next(iter(columns.values())))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *columns])
        for i in range(steps):
            writer.writerow([10 * (i + 1), *(values[i] for values in columns.values())])


def _fake_runs(scale) -> dict[str, float]:
    """Metrics and evaluations for every run the reports read; returns a few numbers the reports must show."""
    bins = ["0.00-0.30", "0.30-0.50", "0.50-0.70", "0.70-1.00"]
    for index, name in enumerate(PRETRAINED):
        run = pretraining(name, scale)[0]
        _write_metrics(run, {"val/psnr_masked": [15.0 + index, 17.25 + index], "val/loss": [0.9, 0.8],
                             "val/crossview/gap_other": [0.01, 0.1 * (index + 1)], "perf/pairs_per_s": [70.0, 71.0]})
        gap = 0.0 if name == "mae" else 0.05 * (index + 1)
        payload = {"bins": bins, "gap": {"other": {"all": gap, **{b: gap for b in bins}}},
                   "count": {"true": {"all": 40, **{b: 10 for b in bins}}}}
        (Path("logs/runs") / run / "eval").mkdir(parents=True, exist_ok=True)
        (Path("logs/runs") / run / "eval" / "crossview.json").write_text(json.dumps(payload))
    (Path("logs/runs") / pretraining("croco", scale)[0] / "eval" / "localisation.json").write_text(
        json.dumps({"error_mean_of_heads": [1.5, 1.25], "own_position_error": [0.94, 0.94]}))
    from croco.studies import init, mask_overlap
    from croco.studies.common import finetune_run

    for task, spec in scale.tasks.items():
        for init_name in ("croco", "mae", "scratch"):
            for seed in init.SEEDS:
                value = 0.5 + 0.1 * seed if init_name == "croco" else 0.75
                _write_metrics(finetune_run(task, init_name, seed, scale), {spec.metric: [1.0, value]})
    for r in mask_overlap.RATIOS:
        for o in mask_overlap.OVERLAPS:
            _write_metrics(mask_overlap.cell_run(r, o, scale), {"val/psnr_masked": [10.0, 20 * r + o],
                                                         "val/crossview/gap_other": [0.0, o / 10]})
            _write_metrics(mask_overlap.probe_run(r, o, scale), {"val/top1": [0.1, r / 2]})
            (Path("logs/runs") / mask_overlap.cell_run(r, o, scale) / "eval").mkdir(parents=True, exist_ok=True)
            (Path("logs/runs") / mask_overlap.cell_run(r, o, scale) / "eval" / "localisation.json").write_text(
                json.dumps({"error_mean_of_heads": [1.5, r + o, 2.0]}))
    return {"croco_psnr": 17.25, "mask_0.95_overlap_0.6": 20 * 0.95 + 0.6}


@pytest.mark.parametrize("scale_name", sorted(SCALES))
def test_reports_draw_figures_and_tables_from_the_runs(scale_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scale = SCALES[scale_name]
    expected = _fake_runs(scale)
    doc, figures = Path("docs/results.md"), Path("docs/figures/results")
    doc.parent.mkdir(parents=True)
    doc.write_text("# Results\n\nWritten by hand.\n")
    for name, module_name in STUDIES.items():
        write_section(doc, name, importlib.import_module(module_name).report(doc, figures, scale))
    text = doc.read_text()
    assert text.startswith("# Results\n\nWritten by hand.\n")
    pngs = sorted(p.name for p in figures.glob("*.png"))
    assert pngs == ["crossview_vs_single.png", "decoders.png", "init.png", "mask_overlap.png"]
    assert all((figures / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "](figures/results/crossview_vs_single.png)" in text
    crossview = text.split("<!-- study:crossview -->")[1].split("<!-- /study:crossview -->")[0]
    assert f"| croco | {expected['croco_psnr']:.2f} |" in crossview
    assert "| mae | 18.25 |" in crossview and "| 0.0 |" in crossview  # the single-view network's gap is 0
    assert "1.50 / 1.25, against 0.94" in crossview
    init_part = text.split("<!-- study:init -->")[1]
    assert "0.600 +- 0.100 (3)" in init_part and "0.750 +- 0.000 (3)" in init_part  # croco seeds 0.5, 0.6, 0.7
    assert f"| 0.95 | 19.20 | 19.40 | {expected['mask_0.95_overlap_0.6']:.2f} |" in text
    assert "| 0.5 | 0.70 | 0.90 | 1.10 |" in text  # localisation: the best block's error
    decoders = text.split("<!-- study:decoders -->")[1].split("<!-- /study:decoders -->")[0]
    cross, cat = (Path(pretraining(name, scale)[0]).name for name in ("cross", "cat"))  # e.g. cross3, cat2
    flops = {row.split("|")[1].strip(): float(row.split("|")[2]) for row in decoders.splitlines()
             if row.startswith((f"| {cross} ", f"| {cat} "))}  # fmt: skip
    assert abs(flops[cat] / flops[cross] - 1) < 0.15  # equal compute, within 15%


def test_write_section_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("intro\n\n<!-- study:a -->\nold a\n<!-- /study:a -->\n\nhand text\n")
    write_section(doc, "a", "new a")
    write_section(doc, "b", "first b")
    write_section(doc, "b", "second b")
    assert doc.read_text() == ("intro\n\n<!-- study:a -->\nnew a\n<!-- /study:a -->\n\nhand text\n\n"
                               "<!-- study:b -->\nsecond b\n<!-- /study:b -->\n")  # fmt: skip


def test_cli_dry_run_lists_commands_without_running(tmp_path, monkeypatch, capsys):
    from croco.studies.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["decoders", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "python train.py run_name=study/pretrain/cat2 logger=csv experiment=smoke model.decoder=cat" in out
    assert main(["decoders", "--dry-run", "--scale", "paper", "--pretrain-override", "trainer.devices=8"]) == 0
    out = capsys.readouterr().out
    assert ("python train.py run_name=study_paper/pretrain/cat4 logger=csv experiment=pretrain model.decoder=cat "
            "model.dec_depth=4 trainer.devices=8") in out
    assert not Path("logs").exists()
