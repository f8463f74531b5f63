"""Write a specdec_w4a16 checkpoint: specdec convert SRC OUT_DIR [--group-size G]

SRC is a GGUF file (its 4-bit types kept exactly) or a Hugging Face directory (GPTQ/AWQ kept exactly, float
weights RTN-quantized in groups of G). OUT_DIR gets config.json, model.safetensors and the tokenizer; transformers
(specdec_kernels.engines.hf_quantizer) and the runner (--model OUT_DIR) load it. Format: docs/checkpoint.md.
"""
import os

from specdec_kernels.cli.args import UsageError, model_path
from specdec_kernels.quant import GROUP_SIZES


def add_arguments(parser):
    parser.add_argument("source", type=model_path, help="a GGUF file or a Hugging Face checkpoint directory")
    parser.add_argument("out_dir", help="the folder to write (created; files of the same names are replaced)")
    parser.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=128,
                        help="RTN group size for a float source (default 128; quantized sources keep theirs)")


def run(args):
    from specdec_kernels.checkpoint.convert import convert

    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UsageError(f"{args.out_dir}: exists and is not a directory")
    if os.path.abspath(args.out_dir) == args.source:
        raise UsageError(f"{args.out_dir}: the output folder must not be the source")
    try:
        convert(args.source, args.out_dir, args.group_size)
    except ValueError as error:  # a source this format cannot carry exactly: say which part, no traceback
        raise UsageError(str(error)) from None
    print(f"wrote {args.out_dir} (specdec_w4a16): load it with --model {args.out_dir} or transformers' "
          "from_pretrained after specdec_kernels.engines.hf_quantizer.register()")
