"""Loss curves in curves.f64 (schema 5, ``--curves inline|file|auto``): real
runs written both ways hold the same numbers; report, diff and --resume
read a file-curves folder; a killed run leaves a folder that loads and
resumes; a damaged curves file is refused in one line.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import records as rec_mod
from harness.config import AUTO_FILE_SEEDS, curves_mode
from harness.records import CURVES_FILE, Record, upgrade
from harness.results import (CurveFile, RecordWriter, RunFolderError, iter_records, load_run,
                             stored_ref)

from test_engine import EXTRA, complete_lines, start, wait_for
from test_run_folders import snapshot

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ["--backends", "numpy", "--levels", "raw", "--archs", "single", "--gates", "xor",
         "--dtype", "float64", "--seeds", f"0-{AUTO_FILE_SEEDS + 49}"]
# Diverges at lr 1000 (loss and parameters inf/NaN) on and off the perceptron levels.
WILD = ["--backends", "numpy", "--levels", "raw,perceptron", "--archs", "single,multi",
        "--gates", "nand,not", "--seeds", "0-1", "--lr", "1000", "--no-report"]


def harness(*args, **env):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def lines(folder):
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]


def one_line_exit_2(r, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def same_values(a: list[Record], b: list[Record]):
    """Two runs' records hold the same numbers, whatever form their curves take."""
    assert [r.cell for r in a] == [r.cell for r in b]
    for x, y in zip(a, b):
        for name in rec_mod.OWN_FIELDS:
            if name not in ("loss_curve", "seconds"):
                assert getattr(x, name) == getattr(y, name), (x.cell, name)
        if x.loss_curve is None or y.loss_curve is None:
            assert x.loss_curve is None and y.loss_curve is None
        else:
            assert np.array_equal(rec_mod.curve_values(x.loss_curve),
                                  rec_mod.curve_values(y.loss_curve), equal_nan=True), x.cell


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 150 cells with the default (auto: file above 100 seeds) and
    with --curves inline."""
    base = tmp_path_factory.mktemp("curves")
    auto, inline = base / "auto", base / "inline"
    r = harness("run", *SWEEP, "--out", str(auto))
    assert r.returncode == 0, r.stderr
    r = harness("run", *SWEEP, "--curves", "inline", "--no-report", "--out", str(inline))
    assert r.returncode == 0, r.stderr
    return auto, inline


def test_auto_means_file_above_100_seeds(runs):
    auto, inline = runs
    assert curves_mode({"seeds": list(range(AUTO_FILE_SEEDS)), "curves": "auto"}) == "inline"
    assert curves_mode({"seeds": list(range(AUTO_FILE_SEEDS + 1)), "curves": "auto"}) == "file"
    assert curves_mode({"seeds": [0]}) == "inline"  # a config from before --curves
    assert json.loads((auto / "manifest.json").read_text())["config"]["curves"] == "auto"
    refs = [d["loss_curve"] for d in lines(auto)]
    assert len(refs) == AUTO_FILE_SEEDS + 50
    assert all(set(ref) == {"file", "offset", "length"} and ref["file"] == CURVES_FILE
               and ref["length"] == 100 for ref in refs)
    # Appended one after another (in the order cells finished), nothing reserved left over.
    assert sorted(ref["offset"] for ref in refs) == list(range(0, 100 * len(refs), 100))
    assert (auto / CURVES_FILE).stat().st_size == 8 * 100 * len(refs)
    assert all(isinstance(d["loss_curve"], list) for d in lines(inline))
    assert not (inline / CURVES_FILE).exists()
    # results.csv carries the reference too (not 150 curves' worth of text).
    assert '"{""file"":""curves.f64"",""offset"":' in (auto / "results.csv").read_text()


def test_inline_and_file_hold_the_same_numbers(runs):
    auto, inline = runs
    _, a = load_run(auto)
    _, b = load_run(inline)
    same_values(a, b)
    curve = a[0].loss_curve
    assert isinstance(curve, np.ndarray) and curve.dtype == np.float64 and not curve.flags.writeable
    assert isinstance(b[0].loss_curve, list)
    # The bytes are the values, little-endian float64, at the reference's offset.
    ref = lines(auto)[0]["loss_curve"]
    raw = np.fromfile(auto / CURVES_FILE, dtype="<f8")
    assert raw[ref["offset"]:ref["offset"] + ref["length"]].tolist() == b[0].loss_curve


def test_nan_and_infinities_round_trip_exactly(tmp_path):
    inline, stored = tmp_path / "inline", tmp_path / "file"
    assert harness("run", *WILD, "--curves", "inline", "--out", str(inline)).returncode == 0
    assert harness("run", *WILD, "--curves", "file", "--out", str(stored)).returncode == 0
    _, a = load_run(inline)
    _, b = load_run(stored)
    assert {r.status for r in a} >= {"diverged"}
    nonfinite = set()
    for x, y in zip(a, b):
        if x.loss_curve is None:
            continue
        values = np.asarray(y.loss_curve)
        # Inline, strict JSON writes NaN and infinities as null (unchanged);
        # the curves file keeps each one as it was.
        assert [None if not np.isfinite(v) else v for v in values.tolist()] == x.loss_curve
        nonfinite |= {str(v) for v in values[~np.isfinite(values)]}
    assert nonfinite >= {"inf"}, nonfinite
    r = harness("diff", str(inline), str(stored))
    assert r.returncode == 0, r.stdout


def test_report_and_diff_of_a_file_curves_run(runs, tmp_path):
    pytest.importorskip("matplotlib")
    auto, inline = runs
    html = (auto / "report.html").read_text()  # written at the end of the run
    assert "Learned seeds" in html
    assert (auto / "report-learned-map.png").is_file()
    assert (auto / "report.html").stat().st_size < 2_000_000
    copy = tmp_path / "copy"
    shutil.copytree(auto, copy)
    (copy / "report.html").unlink()
    r = harness("report", str(copy))
    assert r.returncode == 0, r.stderr
    assert (copy / "report.html").read_text().count("<img") == html.count("<img")
    r = harness("diff", str(auto), str(inline))
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip().endswith("0 of 150 matched cells differ; 0 only in A, 0 only in B")


def test_writer_takes_lists_and_arrays(runs, tmp_path):
    """RecordWriter, as a batch hands records over: curves as lists or as
    float64 arrays, one at a time or many at once, in either mode."""
    _, inline = runs
    _, recs = load_run(inline)
    recs = recs[:6]
    given = [r if i % 2 else Record(**{**{f: getattr(r, f) for f in ("cell", *rec_mod.OWN_FIELDS)},
                                        "loss_curve": np.array(r.loss_curve)})
             for i, r in enumerate(recs)]
    for mode in ("inline", "file"):
        folder = tmp_path / mode
        folder.mkdir()
        (folder / "manifest.json").write_bytes((inline / "manifest.json").read_bytes())
        writer = RecordWriter(folder / "results.jsonl", mode)
        stored = [writer.write(given[0]), *writer.write_many(given[1:])]
        writer.close()
        same_values(stored, recs)
        on_disk = lines(folder)
        if mode == "file":
            assert all(stored_ref(r.loss_curve, folder) == d["loss_curve"]
                       for r, d in zip(stored, on_disk))
            assert all(not r.loss_curve.flags.writeable for r in stored)
            assert (folder / CURVES_FILE).stat().st_size == 8 * 100 * len(recs)
        else:
            assert all(isinstance(d["loss_curve"], list) for d in on_disk)
        same_values(list(iter_records(folder)), recs)


def test_curve_file_never_writes_over_what_is_there(tmp_path):
    (tmp_path / CURVES_FILE).write_bytes(b"\x01" * 13)  # a torn value at the end
    with CurveFile(tmp_path) as cf:
        offset, view = cf.append([1.5, float("nan")])
        assert offset == 2 and np.array_equal(view, [1.5, np.nan], equal_nan=True)
    data = (tmp_path / CURVES_FILE).read_bytes()
    assert len(data) == 32 and data[:13] == b"\x01" * 13


def test_resume_of_a_killed_file_curves_run(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--backends", "faulty", "--levels", "raw", "--archs", "single", "--gates",
            "and", "--seeds", "0-19", "--dtype", "float64", "--curves", "file", "--jobs", "1",
            "--no-report", "--quiet", "--out", str(out)]
    slow = {"FAULTY_SLEEP": "0.05", "HARNESS_EXTRA_BACKENDS": EXTRA}
    assert harness(*args, **slow).returncode == 0
    shutil.move(out, tmp_path / "uninterrupted")

    proc = start(*args, **slow)
    try:
        wait_for(lambda: complete_lines(out) >= 6)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    kept = complete_lines(out)
    assert kept < 20, "the run finished before it could be killed"
    assert len(load_run(out)[1]) == kept  # a killed run's folder loads
    # As if killed in the middle of a curve, then of a line: neither is referred to.
    with open(out / CURVES_FILE, "ab") as fh:
        fh.write(b"\x7f" * 11)
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"backend": "faulty", "lev')
    r = harness("run", "--resume", str(out), HARNESS_EXTRA_BACKENDS=EXTRA)
    assert r.returncode == 0, r.stderr
    _, done = load_run(tmp_path / "uninterrupted")
    _, resumed = load_run(out)
    same_values(resumed, done)
    assert all(isinstance(d["loss_curve"], dict) for d in lines(out))


def test_file_size_limit_with_file_curves_keeps_records_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--backends", "numpy", "--levels", "raw", "--archs", "single", "--gates",
            "and,or,xor", "--seeds", "0-9", "--dtype", "float64", "--curves", "file", "--jobs",
            "1", "--no-report", "--quiet", "--out", str(out)]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    # No bytecode: a truncated .pyc would break every later import.
    r = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, preexec_fn=limit,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 3 and "File too large" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    kept = load_run(out)[1]  # every line whole, every reference inside curves.f64
    assert 0 < len(kept) < 30
    r = harness("run", "--resume", str(out), "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    _, recs = load_run(out)
    assert len(recs) == 30 and {x.status for x in recs} == {"ok"}
    by_cell = {x.cell: x for x in recs}
    same_values(kept, [by_cell[x.cell] for x in kept])


def test_damaged_curves_file_is_refused_in_one_line(runs, tmp_path):
    auto, _ = runs
    for name, damage, needle in (
            ("truncated", lambda f: os.truncate(f / CURVES_FILE, 800 * 8 + 3),
             "holds 800 values, but "),
            ("missing", lambda f: (f / CURVES_FILE).unlink(), "curves.f64: missing"),
            ("a-fifo", lambda f: ((f / CURVES_FILE).unlink(), os.mkfifo(f / CURVES_FILE)),
             "not a regular file")):
        folder = tmp_path / name
        shutil.copytree(auto, folder)
        damage(folder)
        before = snapshot(folder)
        for args in (["report", str(folder)], ["diff", str(auto), str(folder)],
                     ["run", "--resume", str(folder), "--no-report"]):
            r = harness(*args)
            one_line_exit_2(r, str(folder / CURVES_FILE), needle)
            assert snapshot(folder) == before, (name, args)
    with pytest.raises(RunFolderError, match="truncated, or not this run's"):
        load_run(tmp_path / "truncated")


@pytest.mark.parametrize("ref,needle", [
    ({"file": "../curves.f64", "offset": 0, "length": 100}, "field 'loss_curve' is"),
    ({"file": "curves.f64", "offset": -1, "length": 100}, "field 'loss_curve' is"),
    ({"file": "curves.f64", "offset": 0, "length": 99}, "a list of 100 numbers for this cell"),
    ({"file": "curves.f64", "offset": 0, "length": 100, "x": 1}, "field 'loss_curve' is"),
])
def test_bad_references_are_refused(runs, tmp_path, ref, needle):
    auto, _ = runs
    folder = tmp_path / "run"
    shutil.copytree(auto, folder)
    text = (folder / "results.jsonl").read_text().splitlines()
    rec = json.loads(text[1])
    rec["loss_curve"] = ref
    text[1] = json.dumps(rec)
    (folder / "results.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(RunFolderError, match="results.jsonl:2: ") as exc:
        load_run(folder)
    assert needle in str(exc.value)


def test_schema_4_folder_has_no_references(runs, tmp_path):
    auto, inline = runs
    for source, loads in ((inline, True), (auto, False)):
        folder = tmp_path / source.name
        shutil.copytree(source, folder)
        man = json.loads((folder / "manifest.json").read_text())
        man["schema_version"] = 4
        (folder / "manifest.json").write_text(json.dumps(man))
        if loads:
            assert len(load_run(folder)[1]) == AUTO_FILE_SEEDS + 50
        else:
            with pytest.raises(RunFolderError, match="schema 4 has no curves.f64"):
                load_run(folder)


def test_v4_to_v5_changes_no_record():
    rec = {"backend": "numpy", "loss_curve": [1.0, None]}
    assert upgrade(dict(rec), 4) == rec
    assert set(rec_mod.MIGRATIONS) == set(range(1, rec_mod.SCHEMA_VERSION))


@pytest.mark.parametrize("args,needle", [
    (["--curves", "bogus"], "Unknown curves 'bogus'. Expected one of {inline, file, auto}."),
    (["--curves", "files"], "Did you mean 'file'?"),
])
def test_bad_curves_value(tmp_path, args, needle):
    out = tmp_path / "run"
    one_line_exit_2(harness("run", *args, "--out", str(out)), needle)
    assert not out.exists()
    cfg = tmp_path / "c.toml"
    cfg.write_text("curves = 5\n")
    one_line_exit_2(harness("run", "--config", str(cfg), "--out", str(out)),
                    "Invalid curves 5. Expected a string, one of {inline, file, auto}.")
    assert not out.exists()


def test_resume_keeps_the_runs_curves_setting(runs):
    auto, _ = runs
    one_line_exit_2(harness("run", "--resume", str(auto), "--curves", "inline"),
                    "--curves cannot be combined with --resume")


def test_findings_table_is_capped():
    from harness.report import render

    found = list(range(render.FINDINGS_LISTED + 7))
    listed, note = render._listed(found)
    assert len(listed) == render.FINDINGS_LISTED and f"of {len(found)} findings" in note
    assert render._listed(found[:3]) == (found[:3], "")
