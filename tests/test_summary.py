from harness.results import Record
from harness.text import summary_table
from harness.tasks import Cell


def rec(backend, level, status, learned=None):
    cell = Cell(backend=backend, level=level, arch="single", gate="and", seed=0)
    return Record.for_cell(cell, status, learned=learned)


def test_rows_of_only_unsupported_cells_are_named_below_the_table():
    text = summary_table([rec("numpy", "perceptron", "ok", True),
                          rec("torch", "raw", "ok", True),
                          rec("torch", "perceptron", "unsupported"),
                          rec("autograd", "module", "unsupported")])
    body, note = text.rsplit("\n", 1)
    assert "numpy    perceptron" in body and "torch    raw" in body
    assert "torch    perceptron" not in body and "autograd" not in body
    assert note == ("unsupported, not shown (reasons in each record's message): "
                    "module on autograd; perceptron on torch")
    total = next(line for line in body.splitlines() if line.startswith("total")).split()
    assert total[1:4] == ["4", "2", "2"]  # cells, ok, learned: the hidden rows still count


def test_findings_name_a_known_departure():
    from harness.analysis import findings

    cell = Cell(backend="mxnet", level="module", arch="single", gate="and", seed=0,
                dtype="float64", init="zeros")
    r = Record.for_cell(cell, "ok", agrees=False, oracle_dev=1e-3, tolerance=1e-9,
                        first_departure=1)
    (f,) = [f for f in findings([r], conv=[], levels=[]) if f.kind == "disagrees with the oracle"]
    assert "known: Gluon's SigmoidBinaryCrossEntropyLoss" in f.detail
