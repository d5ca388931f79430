"""What the command-line tests share: run ``jaxbp`` in this process and read a one-line error."""

from jaxbp import cli


def run_cli(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``jaxbp`` in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, *needles):
    """A user's error: one line from ``jaxbp ...``, no traceback, naming each of ``needles``."""
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("jaxbp "), err
    for needle in needles:
        assert needle in err, (needle, err)
