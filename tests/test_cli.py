"""The command line end to end, in subprocesses, as a user runs it."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.records import SCHEMA_VERSION
from harness.tasks import GATES, LEVELS

ROOT = Path(__file__).resolve().parent.parent


def harness(*args, cwd=None, **extra_env):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra_env}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=600)


def test_run_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    r = harness("run", "--backends", "numpy", "--gates", "and,xor", "--archs", "single",
                "--levels", "raw,perceptron", "--seeds", "0-1", "--dtype", "float64",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "numpy" in r.stdout and "learned" in r.stdout
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 8
    keys = [(d["level"], d["gate"], d["seed"]) for d in records]
    # Sorted in presentation order: levels and gates as declared, then seeds.
    assert keys == sorted(keys, key=lambda k: (LEVELS.index(k[0]), list(GATES).index(k[1]), k[2]))
    first = records[0]
    for field in ("backend", "backend_version", "level", "arch", "gate", "seed", "dtype", "init",
                  "init_scale", "lr", "epochs", "hidden", "status", "message", "params_init",
                  "params_final", "probs", "preds", "accuracy", "learned", "loss_final",
                  "loss_curve", "seconds"):
        assert field in first
    assert {d["status"] for d in records} == {"ok"}
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8 and json.loads(rows[0]["params_final"]).keys() == {"W", "b"}
    man = json.loads((out / "manifest.json").read_text())
    assert man["schema_version"] == SCHEMA_VERSION and man["config"]["seeds"] == [0, 1]
    assert "numpy" in man["versions"] and "commit" in man["git"]
    assert man["machine"]["python"].startswith("3.")


def test_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('backends = ["numpy"]\nlevels = "raw"\ngates = "not"\narchs = "single"\n'
                   'seeds = [1, 2]\nepochs = 5\n')
    out = tmp_path / "run"
    r = harness("run", "--config", str(cfg), "--seeds", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(d["seed"], d["epochs"], d["gate"]) for d in recs] == [(4, 5, "not")]


def test_missing_framework_is_skipped_with_reason(tmp_path):
    # A registry entry whose framework cannot be imported is `skipped`, not an error.
    out = tmp_path / "run"
    r = harness("run", "--backends", "ghost", "--levels", "raw", "--gates", "and", "--archs",
                "single", "--out", str(out), HARNESS_EXTRA_BACKENDS="ghost=tests.ghost_backend")
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["status"] == "skipped" and "not_a_real_framework" in rec["message"]


def one_line_exit_2(r, needle):
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("args,needle", [
    (["--backends", "pytorch"], "'pytorch'"),
    (["--levels", "modules"], "Did you mean 'module'"),
    (["--gates", "xorr"], "'xorr'"),
    (["--archs", "deep"], "'deep'"),
    (["--seeds", "5-1"], "'5-1'"),
    (["--seeds", "x"], "'x'"),
    (["--seeds", ""], "seed"),
    (["--seeds", "1,,2"], "seed"),
    (["--lr", "-1"], "lr"),
    (["--lr", "0"], "lr"),
    (["--epochs", "-3"], "epochs"),
    # Recipes (issue 9).
    (["--optimizer", "adamw"], "Unknown optimizer 'adamw'"),
    (["--optimizer", "momentum", "--beta2", "0.9"], "Invalid beta2 0.9 with optimizer momentum"),
    (["--optimizer", "adam", "--beta1", "1"], "Invalid beta1 1.0. Expected a value in [0, 1)"),
    (["--optimizer", "adam", "--beta2", "-0.1"], "beta2"),
    (["--optimizer", "rmsprop", "--rho", "1.5"], "Invalid rho 1.5"),
    (["--optimizer", "adam", "--eps", "0"], "Invalid eps '0'. Expected a value > 0"),
    (["--optimizer", "adam", "--hparams", "defaults", "--eps", "1e-7"], "hparams 'defaults'"),
    (["--hparams", "some"], "'some'"),
    (["--batch-size", "0"], "batch_size"),
    (["--batch-size", "3"], "Invalid batch_size 3: gate 'not' has 2 rows"),
    (["--batch-size", "5", "--gates", "and"], "Expected 1 to 4"),
    (["--reduction", "avg"], "'avg'"),
    (["--epochs", "2.5"], "epochs"),
    (["--dtype", "float16"], "'float16'"),
    (["--init", "ones"], "'ones'"),
    (["--hidden", "0"], "hidden"),
    (["--timeout", "0"], "timeout"),
    (["--timeout", "soon"], "'soon'"),
    (["--repeat", "0"], "repeat"),
    (["--jobs", "0"], "--jobs '0'"),
    (["--jobs", "many"], "--jobs 'many'"),
    (["--config", "no/such.toml"], "no/such.toml"),
    (["--lr"], "--lr"),
    (["--frobnicate"], "--frobnicate"),
    # Numbers are ASCII digits only: int() takes underscores, isdigit() and
    # int() take the digits of other scripts.
    (["--seeds", "\u0663"], "'\u0663'"),
    (["--seeds", "1_0"], "'1_0'"),
    (["--seeds", "0-\u0661"], "'0-\u0661'"),
    (["--jobs", "\u0662"], "--jobs '\u0662'"),
    (["--jobs", "1_0"], "--jobs '1_0'"),
    (["--epochs", "1_0"], "epochs '1_0'"),
    (["--epochs", " 10"], "epochs ' 10'"),
    (["--hidden", "\u0662"], "hidden '\u0662'"),
    (["--repeat", "\uff12"], "repeat '\uff12'"),
    (["--lr", "0_5"], "lr '0_5'"),
    (["--lr", "\u0660.\u0665"], "lr '\u0660.\u0665'"),
    (["--lr", "nan"], "lr 'nan'"),
    (["--lr", "infinity"], "lr 'infinity'"),
    (["--timeout", "1_0"], "timeout '1_0'"),
    (["--init-scale", "1e999"], "finite"),
    # Bounded before anything is allocated.
    (["--seeds", "0-99999999"], "at most 100000 seeds"),
    (["--seeds", "0-5,99999999999999999999"], "seeds must be from 0 to"),
    (["--seeds", "0-99999"], "at most 1000000"),
    (["--backends", "numpy", "--repeat", "99999999"], "at most 1000000"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle):
    out = tmp_path / "run"
    t0 = time.monotonic()
    r = harness("run", *args, "--out", str(out))
    one_line_exit_2(r, needle)
    assert not out.exists()
    assert time.monotonic() - t0 < 60  # refused at once, not after filling memory


@pytest.mark.parametrize("args", [["--out", ""], ["--out", "", "--backends", "numpy"]])
def test_empty_out_is_refused_not_the_current_directory(tmp_path, args):
    r = harness("run", *args, "--levels", "raw", "--gates", "and", "--archs", "single",
                cwd=tmp_path)
    one_line_exit_2(r, "Invalid out ''")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text,needle", [
    ("out = 5\n", "Invalid out 5"),
    ("out = [\"a\"]\n", "Invalid out ['a']"),
    ("out = \"\"\n", "Invalid out ''"),
    ("out = \"a\\u0000b\"\n", "Invalid out"),
    ("out = {a = 1}\n", "Invalid out"),
    ("dtype = [\"float32\"]\n", "Invalid dtype ['float32']"),
    ("init = 0\n", "Invalid init 0"),
    ("levels = [1]\n", "Invalid levels [1]"),
    ("gates = {and = true}\n", "Invalid gates"),
    ("seeds = [[1]]\n", "Invalid seeds [[1]]"),
    ("seeds = 1.5\n", "Invalid seeds 1.5"),
    ("seeds = \"\\u0663\"\n", "'\u0663'"),
    ("epochs = 2.0\n", "Invalid epochs 2.0"),
    ("epochs = \"1_0\"\n", "Invalid epochs '1_0'"),
    ("hidden = true\n", "Invalid hidden True"),
    ("lr = [0.5]\n", "Invalid lr [0.5]"),
    ("timeout = \"soon\"\n", "Invalid timeout 'soon'"),
    ("repeat = 2.0\n", "Invalid repeat 2.0"),
    ("seeds = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_config_values_of_the_wrong_type(tmp_path, text, needle):
    # No --out flag: the file's own `out` (or the default) is what is tested,
    # and the current directory is where a bad one would have been created.
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + ("" if "out =" in text else "backends = \"numpy\"\n"))
    r = harness("run", "--config", str(cfg), cwd=tmp_path)
    one_line_exit_2(r, needle)
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]


@pytest.mark.parametrize("seed", ["\u0663", "1_0", "-1", " 1"])
def test_gradcheck_seed_ascii_only(seed):
    one_line_exit_2(harness("gradcheck", "--backends", "numpy", "--seed", seed),
                    f"Invalid seed {seed!r}")


@pytest.mark.parametrize("text,needle", [
    ("backends = [\"numpy\"\n", "not valid TOML"),
    ("gates = \"and\"\ncolour = \"red\"\n", "Unknown key 'colour'"),
    ("lr = \"fast\"\n", "'fast'"),
    ("seeds = true\n", "seeds"),
])
def test_bad_config_file(tmp_path, text, needle):
    cfg, out = tmp_path / "c.toml", tmp_path / "run"
    cfg.write_text(text)
    one_line_exit_2(harness("run", "--config", str(cfg), "--out", str(out)), needle)
    assert not out.exists()


def test_bad_out_folder(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_exit_2(harness("run", "--out", str(a_file)), "is a file")
    one_line_exit_2(harness("run", "--out", str(a_file / "run")), "cannot be created")
    full = tmp_path / "full"
    full.mkdir()
    (full / "other.txt").write_text("x")
    one_line_exit_2(harness("run", "--out", str(full)), "not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
    # Passes every check but mkdir (even for root): /sys refuses new folders.
    if Path("/sys/kernel").is_dir():
        r = harness("run", "--backends", "numpy", "--levels", "raw", "--gates", "and", "--archs",
                    "single", "--out", "/sys/harness-test/run")
        one_line_exit_2(r, "cannot be created")


def test_bad_extra_backends_hook():
    r = harness("list", HARNESS_EXTRA_BACKENDS="nonsense")
    one_line_exit_2(r, "'nonsense'")


def test_resume_rejects_folders_that_are_not_ours(tmp_path):
    one_line_exit_2(harness("run", "--resume", str(tmp_path / "nope")), "does not exist")
    one_line_exit_2(harness("run", "--resume", str(tmp_path)), "manifest.json: missing")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "run"
    # --no-report: the folder holds only the text files this test edits.
    assert harness("run", "--backends", "numpy", "--levels", "raw", "--gates", "and,or",
                   "--archs", "single", "--no-report", "--out", str(out)).returncode == 0
    good = {p.name: p.read_text() for p in out.iterdir()}
    lines = good["results.jsonl"].splitlines(keepends=True)
    man = json.loads(good["manifest.json"])
    # One record left out in most cases, so that resuming would have work to do.
    cases = [
        (["--lr", "2"], {}, "--lr cannot be combined"),
        (["--config", "x.toml"], {}, "--config cannot be combined"),
        ([], {"results.jsonl": lines[0] + "[1, 2]\n"}, "results.jsonl:2: not a harness record"),
        ([], {"results.jsonl": lines[0] + "{oops\n"}, "results.jsonl:2: not a JSON line"),
        ([], {"results.jsonl": lines[0].replace('"and"', '"nand"')},
         "results.jsonl:1: this cell is not in"),
        ([], {"manifest.json": json.dumps({**man, "config": {**man["config"], "gates": ["andd"]}}),
              "results.jsonl": lines[0]}, "'andd'"),
        ([], {"manifest.json": json.dumps({**man, "config": "x"})}, "field 'config' is \"x\""),
        ([], {"manifest.json": json.dumps({**man, "versions": {**man["versions"], "numpy": "0.1"}}),
              "results.jsonl": lines[0]}, "'0.1'"),
        ([], {"manifest.json": json.dumps({**man, "schema_version": 99})}, "schema_version"),
        ([], {"manifest.json": "{"}, "manifest.json: not valid JSON"),
    ]
    for args, files, needle in cases:
        for name, text in {**good, **files}.items():
            (out / name).write_text(text)
        before = {p.name: p.read_text() for p in out.iterdir()}
        one_line_exit_2(harness("run", "--resume", str(out), *args), needle)
        assert {p.name: p.read_text() for p in out.iterdir()} == before  # nothing written


def test_list_shows_backends_and_gates():
    r = harness("list")
    assert r.returncode == 0
    assert "numpy" in r.stdout and "ok" in r.stdout and "xnor" in r.stdout


def test_load_run_reads_back_and_rejects_foreign_folders(tmp_path):
    from harness.results import RunFolderError, load_run

    out = tmp_path / "run"
    assert harness("run", "--backends", "numpy", "--levels", "raw", "--gates", "and",
                   "--archs", "single", "--out", str(out)).returncode == 0
    man, recs = load_run(out)
    assert man["schema_version"] == SCHEMA_VERSION and [r.gate for r in recs] == ["and"]
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"backend": "num')  # a torn last line is ignored
    assert len(load_run(out)[1]) == 1
    (out / "results.jsonl").write_text("hello\n")
    with pytest.raises(RunFolderError, match="results.jsonl:1"):
        load_run(out)
    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(tmp_path / "nope")
