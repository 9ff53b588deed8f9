"""The command line end to end, in subprocesses, as a user runs it."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def harness(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
    assert keys == sorted(keys)
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
    assert man["schema_version"] == 1 and man["config"]["seeds"] == [0, 1]
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
    code = ("import sys; from harness import registry, cli;"
            "registry.BACKENDS['ghost'] = 'tests.ghost_backend';"
            "sys.exit(cli.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code, "run", "--backends", "ghost", "--levels", "raw",
                        "--gates", "and", "--archs", "single", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["status"] == "skipped" and "not_a_real_framework" in rec["message"]


@pytest.mark.parametrize("args,needle", [
    (["--backends", "pytorch"], "'pytorch'"),
    (["--levels", "modules"], "Did you mean 'module'"),
    (["--gates", "xorr"], "'xorr'"),
    (["--archs", "deep"], "'deep'"),
    (["--seeds", "5-1"], "'5-1'"),
    (["--seeds", "x"], "'x'"),
    (["--seeds", ""], "seed"),
    (["--lr", "-1"], "lr"),
    (["--epochs", "-3"], "epochs"),
    (["--dtype", "float16"], "'float16'"),
    (["--config", "no/such.toml"], "no/such.toml"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle):
    out = tmp_path / "run"
    r = harness("run", *args, "--out", str(out))
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert not out.exists()


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
    assert man["schema_version"] == 1 and [r.gate for r in recs] == ["and"]
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"backend": "num')  # a torn last line is ignored
    assert len(load_run(out)[1]) == 1
    (out / "results.jsonl").write_text("hello\n")
    with pytest.raises(RunFolderError, match="results.jsonl:1"):
        load_run(out)
    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(tmp_path / "nope")
