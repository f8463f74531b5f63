"""transformers adapter: the tokenizer and chat template of a model (a GGUF file or a Hugging Face directory),
and the transformers model on the same (dequantized) weights: the `hf` baselines of the end-to-end benchmark."""
import os

import torch

from specdec_kernels.extras import optional_imports


def _source(path: str) -> dict:
    """from_pretrained's arguments for a GGUF file or a checkpoint directory."""
    if os.path.isdir(path):
        return {"pretrained_model_name_or_path": path}
    return {"pretrained_model_name_or_path": os.path.dirname(path), "gguf_file": os.path.basename(path)}


def load_tokenizer(path: str):
    with optional_imports():
        from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(**_source(path))


def load_hf_model(path: str):
    """transformers' causal LM on the model's weights in float32 (a GGUF file's dequantized; needs gguf)."""
    with optional_imports():
        from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(**_source(path), dtype=torch.float32).eval()


def chat_prompt_ids(tokenizer, messages) -> list:
    """Token ids of a conversation rendered with the model's chat template, ready for the assistant's turn."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def conversation_ids(tokenizer, messages) -> list:
    """The ids a model continues from for a conversation: rendered with its chat template, or, for a model without
    one (a base model), the messages' texts joined by blank lines with the tokenizer's own special tokens (BOS),
    as transformers encodes a prompt."""
    if tokenizer.chat_template is None:
        return list(tokenizer.encode("\n\n".join(message["content"] for message in messages)))
    return chat_prompt_ids(tokenizer, messages)


def user_prompt_ids(tokenizer, text: str) -> list:
    """The ids `specdec generate` decodes from: the user's message as a one-message conversation."""
    return conversation_ids(tokenizer, [{"role": "user", "content": text}])
