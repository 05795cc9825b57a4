"""The command line refuses bad flags and values with exit status 2, the
command's usage and a one-line message naming the flag, and leaves no
output directory behind; --version. (The experiments' own runs are tested
in test_experiments.py.)"""

from __future__ import annotations

import os

import pytest
import torch

import fastntk
from fastntk.cli import main


def refused(argv, capsys) -> str:
    """Run main(argv), expect exit status 2, return stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def one_line_after_usage(err: str, prog: str) -> str:
    """The error line, after checking that the usage of ``prog`` (or of one
    of its subcommands) comes first and that there is no traceback."""
    assert err.startswith(f"usage: {prog}") and "Traceback" not in err, err
    message = err.strip().splitlines()[-1]
    assert message.startswith(prog) and ": error: " in message, err
    return message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path, capsys):
    out = tmp_path / "res" / "deeper"
    err = refused(["run", "dispersion", "--device", "cuda", "--out", str(out)], capsys)
    assert "argument --device: 'cuda': CUDA is not available" in one_line_after_usage(err, "fastntk run")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("device,words", [("gpu", "is not a torch device"), ("meta", "runs on cpu or cuda")])
def test_device_not_usable(device, words, tmp_path, capsys):
    err = refused(["run", "layer_shares", "--device", device, "--out", str(tmp_path / "res")], capsys)
    assert f"argument --device: '{device}'" in err and words in err
    assert not (tmp_path / "res").exists()


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = refused(["run", "dispersion", "--out", str(tmp_path / "file" / "res")], capsys)
    assert "argument --out: cannot write to" in one_line_after_usage(err, "fastntk run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any directory")
def test_out_unwritable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = refused(["run", "dispersion", "--out", str(locked / "res")], capsys)
    assert "argument --out: cannot write to" in err and "ermission denied" in err


def test_demo_bad_width_is_one_line(tmp_path, capsys):
    out = tmp_path / "demo"
    err = refused(["demo", "--width", "-1", "--out", str(out)], capsys)
    assert "width must be a positive int; got -1" in one_line_after_usage(err, "fastntk demo")
    assert not out.exists()


def test_value_error_while_running_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "res"
    err = refused(["run", "dispersion", "--depths", "0", "--inits", "3", "--out", str(out)], capsys)
    assert "depths" in one_line_after_usage(err, "fastntk run")
    assert not out.exists() and tmp_path.exists()


def test_existing_directory_is_kept_on_failure(tmp_path, capsys):
    refused(["run", "dispersion", "--depths", "0", "--inits", "3", "--out", str(tmp_path)], capsys)
    assert tmp_path.is_dir()


def test_repeated_single_value_flag_is_refused(tmp_path, capsys):
    err = refused(["run", "dispersion", "--inits", "3", "--inits=5", "--out", str(tmp_path / "r")], capsys)
    assert "argument --inits: given 2 times; give it once" in err
    assert not (tmp_path / "r").exists()


def test_dispersion_sampler_flag(tmp_path, capsys):
    argv = ["run", "dispersion", "--depths", "2", "--sigma-w2", "2", "--width", "6", "--inits", "4",
            "--cosine", "0.5", "--out", str(tmp_path), "--no-progress"]
    main(argv + ["--sampler", "projected"])
    assert len((tmp_path / "dispersion.csv").read_text().strip().splitlines()) == 1 + 1
    assert '"sampler": "projected"' in (tmp_path / "dispersion.json").read_text()
    err = refused(argv + ["--sampler", "exact"], capsys)
    assert "--sampler" in err and "projected" in err


def test_repeated_list_flag_keeps_every_value(tmp_path, capsys):
    """--cosine 1 --cosine 0.5: both values are used, or the repeat is refused."""
    argv = ["run", "dispersion", "--depths", "1", "--sigma-w2", "1", "--width", "6", "--inits", "4",
            "--cosine", "1", "--cosine", "0.5", "--out", str(tmp_path), "--no-progress"]
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 2 and "argument --cosine: given 2 times" in capsys.readouterr().err
    else:
        assert "0.5" in (tmp_path / "dispersion.csv").read_text()
        assert len((tmp_path / "dispersion.csv").read_text().strip().splitlines()) == 1 + 2


def test_unknown_run_flag_prints_the_run_usage(tmp_path, capsys):
    err = refused(["run", "dispersion", "--bogus", "3", "--out", str(tmp_path / "r")], capsys)
    assert "unrecognized arguments: --bogus 3" in one_line_after_usage(err, "fastntk run")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"fastntk {fastntk.__version__} (torch {torch.__version__}")
