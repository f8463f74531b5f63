"""`specdec plan`'s table of ada's lengths: one row per bin of the predictor's output."""
from types import SimpleNamespace

from specdec_kernels.cli.plan import print_ada_lengths
from specdec_kernels.drafters.ldlp import LengthTable


def test_ada_lengths_are_printed_per_bin(capsys):
    table = LengthTable((0.5, 1.5), ((8, 2, 0, 0), (3, 4, 2, 1), (0, 1, 2, 7)))
    print_ada_lengths(SimpleNamespace(length_table=table, bin_lengths=(0, 1, 3)))
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("[")]
    assert rows == [["[-inf,", "0.50)", "10", "0.20", "0"], ["[0.50,", "1.50)", "10", "1.10", "1"],
                    ["[1.50,", "inf)", "10", "2.60", "3"]]


def test_a_predictor_without_a_table_is_said_to_round(capsys):
    print_ada_lengths(SimpleNamespace(length_table=None, bin_lengths=None))
    assert "no length table" in capsys.readouterr().out
