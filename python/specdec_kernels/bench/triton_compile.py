"""Compile every Triton kernel to a cubin for sm_80 and sm_90 without a GPU, with the constexprs the entry
points use: the interpreter (TRITON_INTERPRET=1) accepts programs the compiler rejects (loop-carried types,
scalar bitcasts, fp64 scans), so this is the compiled-mode check of a CPU-only machine. Slow (minutes).

    specdec bench triton-compile [--arch 90]
"""
import traceback

from specdec_kernels.extras import optional_imports

STRIDES_ATTENTION = ["stride_qb", "stride_qt", "stride_qh", "stride_kb", "stride_ks", "stride_kh", "stride_tb",
                     "stride_tt", "stride_os", "stride_ob", "stride_ot", "stride_oh", "stride_ss"]


def _cases():
    """(kernel, pointer/scalar types by argument, constexprs, num_warps) for each compiled variant."""
    from specdec_kernels.triton import kv_compact, tree_attention, tree_verify, w4a16  # needs triton: on use

    tree = dict(tokens_ptr="*i64", parents_ptr="*i64", idx_ptr="*i64", len_ptr="*i64", bonus_ptr="*i64", T="i32",
                V="i32")
    yield tree_verify._greedy_kernel, dict(tree, logits_ptr="*bf16"), dict(BLOCK_T=64, BLOCK_V=2048), 8
    for sampled in (False, True):
        yield (tree_verify._sample_kernel,
               dict(tree, logits_ptr="*bf16", draft_ptr="*fp32", uniforms_ptr="*fp32", p_scratch="*fp32",
                    temperature="fp32", top_p="fp32", top_k="i32"),
               dict(SAMPLED=sampled, BLOCK_T=64, BLOCK_V=2048), 8)
    for dtype, ieee in (("fp16", False), ("bf16", False), ("fp32", True)):
        for d in (64, 128):
            for splits, has_mask in ((1, True), (4, False)):
                yield (tree_attention._tree_attention_kernel,
                       dict({name: "i32" for name in STRIDES_ATTENTION}, q_ptr="*" + dtype, k_ptr="*" + dtype,
                            v_ptr="*" + dtype, lens_ptr="*i32", mask_ptr="*i64", max_ptr="*fp32", sum_ptr="*fp32",
                            out_ptr="*" + (dtype if splits == 1 else "fp32"), scale="fp32", T="i32", G="i32",
                            HKV="i32", cache_chunk="i32"),
                       dict(D=d, BLOCK_R=64, BLOCK_S=64 if d <= 64 else 32, HAS_MASK=has_mask, NUM_SPLITS=splits,
                            IEEE=ieee), 4)
    yield (tree_attention._merge_kernel,
           dict(part_ptr="*fp32", max_ptr="*fp32", sum_ptr="*fp32", out_ptr="*bf16", stride_ps="i32", stride_ss="i32"),
           dict(D=128, NUM_SPLITS=8), 4)
    yield (kv_compact._kv_compact_kernel,
           dict(k_ptr="*bf16", v_ptr="*bf16", lens_ptr="*i32", idx_ptr="*i64", len_ptr="*i64", B="i32", T="i32",
                S="i32", FEATURES="i32"), dict(BLOCK_F=1024), 4)
    for dtype, ieee in (("fp16", False), ("bf16", False), ("fp32", True)):
        for block_m, block_n, block_k in ((16, 64, 64), (32, 64, 32), (64, 128, 128)):
            yield (w4a16._w4a16_kernel.fn,
                   dict({name: "i32" for name in ("M", "N", "K", "group_size", "k_per_split", "stride_xm", "stride_qn",
                                                  "stride_sn", "stride_ys", "stride_ym")},
                        x_ptr="*" + dtype, q_ptr="*u8", s_ptr="*fp16", m_ptr="*fp16", y_ptr="*" + dtype),
                   dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=1, IEEE=ieee), 4)


def compile_kernel(kernel, types, constexprs, num_warps, arch):
    with optional_imports():
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else types[name] for name in kernel.arg_names}
    constants = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    return triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": 3})


def add_arguments(parser):
    parser.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 90 (default: 80 and 90)")


def run(args) -> int:
    failures = 0
    for arch in args.arch or (80, 90):
        for kernel, types, constexprs, num_warps in _cases():
            try:
                compile_kernel(kernel, types, constexprs, num_warps, arch)
                print(f"ok    sm_{arch} {kernel.__name__} {constexprs}")
            except Exception:  # report every failing variant, not only the first
                failures += 1
                print(f"FAIL  sm_{arch} {kernel.__name__} {constexprs}\n{traceback.format_exc(limit=2)}")
    return 1 if failures else 0
