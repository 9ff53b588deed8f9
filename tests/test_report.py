"""``harness report`` and ``harness diff`` end to end, on real run folders.

The report needs the optional ``report`` extra (matplotlib): the tests of
its pages skip, naming it, where it is not installed; the rest (diff, bad
folders, the message without matplotlib) run everywhere.
"""
import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
SMALL = ["--backends", "numpy", "--levels", "raw", "--archs", "single", "--dtype", "float64"]


def harness(*args, code=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "harness", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


# cli.main with matplotlib made unimportable.
NO_MATPLOTLIB = ("import sys; sys.modules['matplotlib'] = None; from harness import cli; "
                 "sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with two backends, every kind of level, both archs, two seeds."""
    out = tmp_path_factory.mktemp("runs") / "run"
    r = harness("run", "--backends", "numpy,torch", "--levels", "raw,optimizer,perceptron",
                "--gates", "nand,xor,not", "--seeds", "0-1", "--epochs", "300", "--dtype", "float64",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "verdicts against the float64 oracle" in r.stdout and "findings: none" in r.stdout
    if HAVE_MATPLOTLIB:
        assert f"report: {out}/report.html" in r.stdout
    else:
        assert "report: skipped" in r.stdout and "feedforward-harness[report]" in r.stdout
    return out


def needs_matplotlib():
    """Skip the calling test, naming what is missing, without the report extra."""
    pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install "
                        "'feedforward-harness[report]')")


def test_run_writes_self_contained_html(run):
    needs_matplotlib()
    text = (run / "report.html").read_text()
    images = re.findall(r"<img [^>]*src='([^']*)'", text)
    assert len(images) >= 6
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    # Nothing fetched: no external references, scripts or stylesheets.
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", text)
    assert "<script" not in text and "<link" not in text
    for needle in ("Verdict matrix", "Deviation from the oracle", "Loss curves",
                   "Decision surfaces", "Level agreement", "Convergence", "Manifest",
                   "Every ok cell agrees with the oracle", "version.torch", "machine.python"):
        assert needle in text, needle


def test_markdown_links_existing_pngs(run):
    needs_matplotlib()
    md = (run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"report-verdicts.png", "report-oracle-dev.png", "report-surfaces.png",
            "report-convergence.png"} <= set(links)
    for name in links:
        assert (run / name).read_bytes().startswith(PNG)
    assert "| backend | level |" in md and "## Manifest" in md
    assert sorted(p.name for p in run.glob("report-*.png")) == sorted(set(links))


def test_report_command_rewrites_and_judges_old_records(run, tmp_path):
    needs_matplotlib()
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for p in old.glob("report*"):
        p.unlink()
    # Records from before verdicts existed: the report judges them itself.
    lines = [json.loads(line) for line in (old / "results.jsonl").read_text().splitlines()]
    for d in lines:
        for key in ("oracle_dev", "tolerance", "agrees", "first_departure", "learned_epoch"):
            d.pop(key, None)
    (old / "results.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    r = harness("report", str(old))
    assert r.returncode == 0, r.stderr
    assert "Every ok cell agrees with the oracle" in (old / "report.html").read_text()


def test_no_report_flag(tmp_path):
    out = tmp_path / "run"
    r = harness("run", *SMALL, "--gates", "and", "--out", str(out), "--no-report")
    assert r.returncode == 0, r.stderr
    assert not (out / "report.html").exists() and not list(out.glob("report-*"))


def test_without_matplotlib(run, tmp_path):
    r = harness("report", str(run), code=NO_MATPLOTLIB)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "feedforward-harness[report]" in r.stderr
    out = tmp_path / "run"
    r = harness("run", *SMALL, "--gates", "and", "--out", str(out), code=NO_MATPLOTLIB)
    assert r.returncode == 0, r.stderr
    assert "report: skipped" in r.stdout and "feedforward-harness[report]" in r.stdout
    assert (out / "results.jsonl").exists() and not (out / "report.html").exists()


@pytest.mark.parametrize("command", ["report", "diff"])
def test_bad_folders_exit_2_one_line(command, run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "results.jsonl").write_text('{"backend": "numpy"}\n')
    extra = [str(run)] if command == "diff" else []
    for folder, needle in ((tmp_path / "missing", "does not exist"), (bad, "results.jsonl:1")):
        r = harness(command, *extra, str(folder))
        assert r.returncode == 2, r.stdout
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert "Traceback" not in r.stderr


def test_diff_identical_runs_is_clean(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    r = harness("diff", str(run), str(copy))
    assert r.returncode == 0, r.stdout + r.stderr
    n = len((run / "results.jsonl").read_text().splitlines())
    assert f"0 of {n} matched cells differ; 0 only in A, 0 only in B" in r.stdout


def test_diff_finds_a_changed_learning_rate(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert harness("run", *SMALL, "--gates", "and,xor", "--out", str(a), "--no-report").returncode == 0
    assert harness("run", *SMALL, "--gates", "and,not", "--lr", "0.5005", "--out", str(b),
                   "--no-report").returncode == 0
    r = harness("diff", str(a), str(b))
    assert r.returncode == 1
    assert "lr: 0.5 (A) vs 0.5005 (B)" in r.stdout
    assert re.search(r"numpy raw single and seed 0: params_final dev \S+ > 1e-09", r.stdout)
    assert "only in A:\n  numpy raw single xor seed 0" in r.stdout
    assert "only in B:\n  numpy raw single not seed 0" in r.stdout
    assert r.stdout.strip().endswith("1 of 1 matched cells differ; 1 only in A, 1 only in B")


def test_diff_compares_status_and_verdict():
    from harness.diff import compare_records
    from harness.oracle import judge
    from conftest import cached_run, make_cell
    import dataclasses

    rec = cached_run(make_cell("numpy", "raw", "multi", "xor", seed=1))
    assert compare_records(rec, rec) == []
    assert compare_records(rec, dataclasses.replace(rec, status="error")) == ["status ok -> error"]
    tilted = dataclasses.replace(rec, loss_curve=[rec.loss_curve[0], *[v * 1.01 for v in
                                                                        rec.loss_curve[1:]]])
    why = compare_records(rec, judge(tilted))
    assert why == ["agrees True -> False", "first_departure None -> 1"]


def test_report_modules_import_no_framework():
    code = ("import json, sys; import harness.oracle, harness.analysis, harness.report, "
            "harness.diff, harness.gradcheck; print(json.dumps([m for m in ['torch', "
            "'tensorflow', 'mxnet', 'chainer', 'autograd', 'matplotlib'] if m in sys.modules]))")
    r = harness(code=code)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_mode_comparison_at_float32(tmp_path):
    # "Does compiling change the numbers?": in the summary and the report.
    pytest.importorskip("matplotlib")
    from conftest import require

    require("mxnet")
    require("tensorflow")
    out = tmp_path / "run"
    r = harness("run", "--backends", "mxnet,tensorflow", "--levels", "optimizer", "--archs",
                "single", "--gates", "and,xor", "--modes", "eager,compiled,graph", "--dtype",
                "float32", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "does compiling change the numbers?" in r.stdout
    md = (out / "report.md").read_text()
    assert "## Does compiling change the numbers?" in md
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in md.splitlines()
            if line.startswith("| mxnet |") or line.startswith("| tensorflow |")}
    # Hybridized Gluon is bit-identical to imperative Gluon; TF's modes are compared too.
    assert "| 2/2 | 0.0e+00 |" in rows[("mxnet", "float32", "compiled")]
    assert ("tensorflow", "float32", "compiled") in rows and ("tensorflow", "float32", "graph") in rows
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(d["backend"], d["mode"], d["status"]) for d in recs} >= {
        ("mxnet", "graph", "unsupported"), ("tensorflow", "graph", "ok")}


def test_framework_against_framework(run):
    pytest.importorskip("matplotlib")
    from conftest import require

    require("torch")
    md = (run / "report.md").read_text()
    assert "## Framework against framework" in md and (run / "report-frameworks.png").is_file()
    row = next(line for line in md.splitlines() if line.startswith("| numpy | torch |"))
    shared, worst = [c.strip() for c in row.split("|")[3:5]]
    assert int(shared) > 0 and float(worst) <= 1e-9
