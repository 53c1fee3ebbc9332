import sys
SCORE_MAX, VALUE_MAX, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = open('/tmp/sw2.cu').read()
RS = s[s.index('__device__ __forceinline__ void tpla_wgmma_m64n64k16_00('):]
RS = RS[:RS.index('\n}\n')+3]
regs = ", ".join(f"%{i}" for i in range(32))
outs = ", ".join(f'"+f"(d[{i}])' for i in range(32))
rsfn = f'''__device__ __forceinline__ void tpla_wgmma_m64n64k16_r0(float* d, const unsigned* a, unsigned long long db, int scale_d = 1) {{
    asm volatile(
        "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %37, 0;\\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {{{regs}}}, {{%32, %33, %34, %35}}, %36, p, 1, 1, 0;\\n}}\\n"
        : {outs}
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
}}
'''
s = s.replace(RS, RS + rsfn)
old = "    if (warp < 4) {\n        for (int it_ = 0; it_ < pb2_n; ++it_) {"
assert old in s
inc = f"tpla_setmaxnreg_inc<{SCORE_MAX}>();" if SCORE_MAX else ""
dec = f"tpla_setmaxnreg_dec<{VALUE_MAX}>();" if VALUE_MAX else ""
qload = f'''    if (warp < 4) {{
        {inc}
        unsigned qa_[144];
        #pragma unroll
        for (int kk = 0; kk < 36; ++kk) {{
        #pragma unroll
            for (int h = 0; h < 4; ++h) {{
                const int r_ = wm64 * 16 + (lane >> 2) + ((h & 1) << 3);
                const int c_ = kk * 16 + ((lane & 3) << 1) + ((h >> 1) << 3);
                qa_[kk * 4 + h] = *(const unsigned*)&sm_t0_1[(((((unsigned)(c_)) >> 6) * 4096u) + (r_) * 64 + ((((((unsigned)(c_)) >> 3) & 7u) ^ (((unsigned)(r_)) & 7u)) << 3) + ((c_) & 7))];
            }}
        }}
        for (int it_ = 0; it_ < pb2_n; ++it_) {{'''
s = s.replace(old, qload, 1)
i = s.index("tpla_wgmma_m64n64k16_00(t7, (da_")
j = s.index("), (db_", i)
s = s[:i] + "tpla_wgmma_m64n64k16_r0(t7, &qa_[(k_ / 16) * 4]" + s[j+1:]
old2 = "    } else {\n        const int pw_ = warp - 4;"
assert old2 in s
s = s.replace(old2, f"    }} else {{\n        {dec}\n        const int pw_ = warp - 4;", 1)
open(out,'w').write(s)
