"""Speculative decoding of transformers models with our kernels and drafters (engines.hf_tree_attention,
engines.hf_speculative):

    from specdec_kernels import hf
    hf.register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="specdec_tree")
    drafter = EagleDrafter(hf.HFTarget(model), head)  # or None (with lookup=): prompt lookup alone
    result = hf.speculative_generate(model, drafter, prompt_ids, 128, lookup=NgramLookup())
    result.tokens, result.accepted_per_step           # model.generate's greedy tokens, tokens per forward

Importing this module does not import transformers.
"""
from .engines.hf_speculative import HFTarget, speculative_generate
from .engines.hf_tree_attention import NAME, TREE_MASK_KWARG, register

__all__ = ["NAME", "TREE_MASK_KWARG", "HFTarget", "register", "speculative_generate"]
