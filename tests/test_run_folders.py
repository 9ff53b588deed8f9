"""Run folders are input: ``harness report``, ``diff`` and ``run --resume``
on folders a test damages or booby-traps, as a user (or an attacker) could.

Every damaged folder is answered with one line naming the file, line and
field, exit 2, and nothing written: not a table, not a manifest entry, not
a lock file, not a cell run by a resume that would have had work to do.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results import MAX_DEPTH, load_run

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("report", "diff", "resume")


def harness(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=600)


def snapshot(folder: Path) -> dict:
    """Every entry of a folder: name -> bytes, or the target of a link."""
    return {p.name: (("link", os.readlink(p)) if p.is_symlink() else ("fifo",) if p.is_fifo()
                     else p.read_bytes())
            for p in sorted(folder.iterdir())}


def command(name, folder, other):
    return {"report": ["report", str(folder)], "diff": ["diff", str(other), str(folder)],
            "resume": ["run", "--resume", str(folder), "--quiet", "--no-report"]}[name]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A finished run (single and multi arch, so that every shape is there)
    and a copy of it with its last record missing, which a resume would run."""
    base = tmp_path_factory.mktemp("good")
    done = base / "done"
    r = harness("run", "--backends", "numpy", "--levels", "raw", "--archs", "single,multi",
                "--gates", "and,xor", "--dtype", "float64", "--no-report", "--out", str(done))
    assert r.returncode == 0, r.stderr
    partial = base / "partial"
    shutil.copytree(done, partial)
    lines = (partial / "results.jsonl").read_text().splitlines(keepends=True)
    (partial / "results.jsonl").write_text("".join(lines[:-1]))
    return done, partial


def lines_of(folder):
    return (folder / "results.jsonl").read_bytes().splitlines(keepends=True)


def edit_record(n, **changes):
    """Damage record n (1-based) of results.jsonl: field -> new value."""
    def edit(folder):
        lines = lines_of(folder)
        rec = json.loads(lines[n - 1])
        rec.update(changes)
        lines[n - 1] = (json.dumps(rec) + "\n").encode()
        (folder / "results.jsonl").write_bytes(b"".join(lines))
    return edit


def replace_line(n, data: bytes):
    def edit(folder):
        lines = lines_of(folder)
        lines[n - 1] = data
        (folder / "results.jsonl").write_bytes(b"".join(lines))
    return edit


def edit_manifest(**changes):
    def edit(folder):
        man = json.loads((folder / "manifest.json").read_text())
        man.update(changes)
        (folder / "manifest.json").write_text(json.dumps(man))
    return edit


def nested(depth):
    return "[" * depth + "]" * depth


def deep_record_line(folder, depth):
    text = lines_of(folder)[0].decode().rstrip("\n")
    return (text[:-1] + f', "info": {{"x": {nested(depth)}}}}}\n').encode()


# (name, damage, what the one line must say): each a kind of fault, not an example.
DAMAGE = [
    ("seed-is-a-list", edit_record(2, seed=[1]), "results.jsonl:2: ", "field 'seed' is [1]"),
    ("seed-is-negative", edit_record(1, seed=-1), "results.jsonl:1: ", "field 'seed' is -1"),
    ("params-final-is-a-string", edit_record(1, params_final="W"), "results.jsonl:1: ",
     'field \'params_final\' is "W"'),
    ("params-final-null-in-ok-record", edit_record(3, params_final=None), "results.jsonl:3: ",
     "field 'params_final' is null"),
    ("params-wrong-shape", edit_record(1, params_init={"W": [[1.0]], "b": [0.0]}),
     "results.jsonl:1: ", "field 'params_init'"),
    ("loss-curve-is-a-string", edit_record(2, loss_curve="0.5"), "results.jsonl:2: ",
     'field \'loss_curve\' is "0.5"'),
    ("loss-curve-too-short", edit_record(2, loss_curve=[0.5]), "results.jsonl:2: ",
     "field 'loss_curve' is [0.5]"),
    ("probs-hold-a-string", edit_record(1, probs=["a", 0, 0, 1]), "results.jsonl:1: ",
     "field 'probs'"),
    ("unknown-status", edit_record(1, status="weird"), "results.jsonl:1: ",
     'field \'status\' is "weird", expected one of {ok,'),
    ("unknown-gate", edit_record(1, gate="nandd"), "results.jsonl:1: ", "field 'gate'"),
    ("lr-is-true", edit_record(1, lr=True), "results.jsonl:1: ", "field 'lr' is true"),
    ("agrees-is-a-string", edit_record(1, agrees="yes"), "results.jsonl:1: ", "field 'agrees'"),
    ("multi-without-hidden", edit_record(3, hidden=None), "results.jsonl:3: ", "field 'hidden'"),
    ("nan-token", replace_line(2, b'{"backend": NaN}\n'), "results.jsonl:2: ", "NaN"),
    ("not-utf8-mid-file", replace_line(2, b'{"backend": "\xff\xfe"}\n'), "results.jsonl:2: ",
     "not UTF-8"),
    ("record-nested-too-deep", lambda f: replace_line(1, deep_record_line(f, 100_000))(f),
     "results.jsonl:1: ", "nested more than"),
    ("record-nested-just-too-deep", lambda f: replace_line(1, deep_record_line(f, MAX_DEPTH))(f),
     "results.jsonl:1: ", "nested more than"),
    ("same-cell-twice", lambda f: replace_line(2, lines_of(f)[0])(f), "results.jsonl:2: ",
     "a second record of the cell on line 1"),
    ("manifest-versions-null", edit_manifest(versions=None), "manifest.json: ",
     "field 'versions' is null"),
    ("manifest-git-a-list", edit_manifest(git=["x"]), "manifest.json: ", "field 'git'"),
    ("manifest-command-not-strings", edit_manifest(command=[1]), "manifest.json: ",
     "field 'command'"),
    ("manifest-schema-version-a-string", edit_manifest(schema_version="2"), "manifest.json: ",
     "schema_version"),
    ("manifest-nested-too-deep",
     lambda f: (f / "manifest.json").write_text('{"a": ' + nested(100_000) + "}"),
     "manifest.json: ", "nested more than"),
    ("manifest-not-utf8", lambda f: (f / "manifest.json").write_bytes(b'{"a": "\xff"}'),
     "manifest.json: ", "not UTF-8"),
    ("manifest-a-fifo", lambda f: ((f / "manifest.json").unlink(),
                                   os.mkfifo(f / "manifest.json")),
     "manifest.json: ", "not a regular file"),
]


@pytest.mark.parametrize("name,damage,where,needle", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_folder_one_line_exit_2_nothing_written(tmp_path, good, name, damage, where,
                                                        needle):
    done, partial = good
    folder = tmp_path / "run"
    shutil.copytree(partial, folder)
    damage(folder)
    before, other = snapshot(folder), snapshot(done)
    for cmd in COMMANDS:
        r = harness(*command(cmd, folder, done))
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert r.stdout == "" and "Traceback" not in r.stderr, (cmd, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (cmd, r.stderr)
        line = r.stderr.strip()
        assert line.startswith("harness: error: ") and str(folder / where.split(":")[0]) in line
        assert where in line and needle in line, (cmd, line)
        assert snapshot(folder) == before, cmd  # nothing written, not even a lock file
        assert snapshot(done) == other


def test_torn_last_line_is_still_tolerated(tmp_path, good):
    done, partial = good
    folder = tmp_path / "run"
    shutil.copytree(partial, folder)
    with open(folder / "results.jsonl", "ab") as fh:
        fh.write(lines_of(done)[-1][:100])  # killed in the middle of the last record
    assert len(load_run(folder)[1]) == len(lines_of(done)) - 1
    r = harness(*command("diff", folder, done))
    assert r.returncode == 1 and "only in A" in r.stdout, r.stderr  # the torn cell is missing
    r = harness(*command("resume", folder, done))
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["params_final"] for x in lines_of(folder)] == \
           [json.loads(x)["params_final"] for x in lines_of(done)]


# ------------------------------------------------------------------ symlinks

def test_planted_temporary_names_are_not_followed(tmp_path, good):
    """Links planted where the old writer put its temporary files: nothing is
    written through them (temporary files get fresh names, created
    exclusively), and no temporary file is left."""
    _, partial = good
    folder, victim = tmp_path / "run", tmp_path / "victim.txt"
    shutil.copytree(partial, folder)
    victim.write_text("precious\n")
    for name in ("results.jsonl", "results.csv", "manifest.json", "report.html", "report.md"):
        (folder / f".{name}.tmp").symlink_to(victim)
    commands = [command("resume", folder, None)]
    try:
        import matplotlib  # noqa: F401
        commands.append(["report", str(folder)])
    except ImportError:
        pass  # the resume alone writes results and manifest; the report needs matplotlib
    for args in commands:
        r = harness(*args)
        assert r.returncode == 0, r.stderr
        assert victim.read_text() == "precious\n"
    left = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert left == sorted(f".{n}.tmp" for n in ("results.jsonl", "results.csv", "manifest.json",
                                                 "report.html", "report.md"))
    assert all((folder / n).is_symlink() for n in left)


@pytest.mark.parametrize("name", ["results.jsonl", "results.csv", "manifest.json",
                                  "report.html", "report-verdicts.png", ".lock", "curves.f64"])
def test_output_name_that_is_a_symlink_is_refused(tmp_path, good, name):
    done, partial = good
    folder, victim = tmp_path / "run", tmp_path / "victim.txt"
    shutil.copytree(partial, folder)
    if (folder / name).exists():
        victim.write_bytes((folder / name).read_bytes())  # a link to a valid copy
        (folder / name).unlink()
    else:
        victim.write_text("precious\n")
    (folder / name).symlink_to(victim)
    before, kept = snapshot(folder), victim.read_bytes()
    for cmd in COMMANDS:
        r = harness(*command(cmd, folder, done))
        assert r.returncode == 2, (cmd, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert f"{folder / name}: a symbolic link" in r.stderr, r.stderr
        assert snapshot(folder) == before and victim.read_bytes() == kept


@pytest.mark.parametrize("versions", [{}, {"numpy": None}])
def test_resume_checks_versions_it_cannot_skip(tmp_path, good, versions):
    # `versions: null` is refused by the loader (above); a mapping without
    # the backend the resume needs cannot be checked either, and is refused
    # rather than skipped.
    _, partial = good
    folder = tmp_path / "run"
    shutil.copytree(partial, folder)
    edit_manifest(versions=versions)(folder)
    before = snapshot(folder)
    r = harness(*command("resume", folder, None))
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "field 'versions'" in r.stderr and str(folder / "manifest.json") in r.stderr
    assert snapshot(folder) == before
