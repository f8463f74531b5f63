"""transformers integration: the tokenizer and chat template of a GGUF file, and the transformers model on
the same (dequantized) weights — the `hf` baselines of the end-to-end benchmark."""
import os

import torch


def load_tokenizer(gguf_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))


def load_hf_model(gguf_path: str):
    """transformers' LlamaForCausalLM with the GGUF weights dequantized to float32 (needs gguf + accelerate)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                                                 torch_dtype=torch.float32)
    return model.eval()


def chat_prompt_ids(tokenizer, messages) -> list:
    """Token ids of a conversation rendered with the model's chat template, ready for the assistant's turn."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
