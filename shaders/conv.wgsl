// Convolutions for DaViT: a general 2-D convolution (the patch embeddings) and the depthwise
// 3×3 convolution of every Spatial/Channel block.
//
// conv2d / conv2d_bias: out[b, oy·Wo + ox, co] = bias[co] +
//     Σ_{ci, ky, kx} w[co, ci, ky, kx] · x[b, ci, oy·sy − py + ky, ox·sx − px + kx]   (zero padding)
//   * x is an image in CHW layout or tokens in HWC layout; the kernel only sees two element
//     strides, between pixels and between channels (CHW: 1 and H·W, HWC: C_in and 1).
//   * w is PyTorch's [C_out, C_in, kh, kw], i.e. rows of K = C_in·kh·kw; out is HWC tokens.
//   * An implicit GEMM (M = Ho·Wo positions, N = C_out, K): each thread holds a TM×TN block of
//     outputs (TM positions × TN channels) in registers, so one loaded input feeds TN FMAs and
//     one loaded weight feeds TM. Threads next to each other share positions and take
//     consecutive channel blocks, so they read the same input pixels.
//   Napkin math: 2·M·N·K FLOPs; per K step a thread loads TM + TN values for TM·TN FMAs.
//   DaViT stage 0 at 768 px (7×7/4 on 3 channels, C_out 256): M 36864, K 147 → 2.8 GFLOP;
//   stages 1–3 (3×3/2 on tokens): K = 9·C_in, 21.7 GFLOP each; weights ≤ 9216·2048 (75 MB f32).
//   TM = 4, TN = 8 measured best on lavapipe (2 busy cores): ~5.5 GFLOP/s on a 3×3/2 token conv
//   (576×256, K 1152), ~4.3 on the 7×7/4 stem at 768 px (0.32 s); TM = 8 was ~2× slower
//   (64 accumulators spill), TM = 2 ~1.7× slower in a single run (more loads per FMA).
//
// dwconv3x3: depthwise 3×3, stride 1, zero pad 1, over tokens [B, H·W, C] with w [C, 1, 3, 3]
//   and bias [C]; out = bias + Σ w·x (+ x when p.residual = 1, DaViT's x + DWConv(x)).
//   One thread per output element: 9 FMAs against 9 input reads that neighbouring threads
//   share through the cache, so it is bandwidth-bound at ~8 B of f32 traffic per element.

struct Params {
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,     // dwconv: channels
    wo: u32,
    m: u32,         // output positions per batch item (Ho·Wo; dwconv: H·W)
    kh: u32,
    kw: u32,
    sy: u32,
    sx: u32,
    py: u32,
    px: u32,
    pix_stride: u32,  // input elements between neighbouring pixels
    ch_stride: u32,   // input elements between neighbouring channels
    blocks_n: u32,    // ceil(c_out / TN)
    blocks_m: u32,    // ceil(m / TM)
    threads: u32,     // threads doing work (conv2d: batch · blocks_m · blocks_n; dwconv: elements)
    residual: f32,    // dwconv: 1.0 adds the input back
}

#if conv2d conv2d_bias
const TM: u32 = 4u;  // output positions per thread
const TN: u32 = 8u;  // output channels per thread, held as two vec4 per position

@compute @workgroup_size(WG)
#if conv2d_bias
fn conv2d_bias(id: Ids) {
#else
fn conv2d(id: Ids) {
#endif
    let t = thread_index(id);
    if (t >= p.threads) { return; }
    let nb = t % p.blocks_n;
    let mb = (t / p.blocks_n) % p.blocks_m;
    let b = t / (p.blocks_n * p.blocks_m);
    let kk = p.kh * p.kw;
    let k_len = p.c_in * kk;
    let x_off = b * p.c_in * p.h * p.w;

    // Out-of-range positions and channels compute on clamped (valid) indices and are not stored.
    var oy: array<i32, TM>;
    var ox: array<i32, TM>;
    for (var j = 0u; j < TM; j++) {
        let pos = min(mb * TM + j, p.m - 1u);
        oy[j] = i32((pos / p.wo) * p.sy) - i32(p.py);
        ox[j] = i32((pos % p.wo) * p.sx) - i32(p.px);
    }
    var w_row: array<u32, TN>;
    for (var q = 0u; q < TN; q++) {
        w_row[q] = min(nb * TN + q, p.c_out - 1u) * k_len;
    }

    var acc: array<array<vec4<f32>, 2>, TM>;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            // Where each position's tap lands; a tap in the padding reads pixel 0 times 0.
            var base: array<u32, TM>;
            var inside: array<f32, TM>;
            for (var j = 0u; j < TM; j++) {
                let iy = oy[j] + i32(ky);
                let ix = ox[j] + i32(kx);
                let ok = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
                base[j] = x_off + select(0u, u32(iy) * p.w + u32(ix), ok) * p.pix_stride;
                inside[j] = select(0.0, 1.0, ok);
            }
            let tap = ky * p.kw + kx;
            for (var ci = 0u; ci < p.c_in; ci++) {
                let k = ci * kk + tap;
                let w_lo = vec4<f32>(ld_w(w_row[0] + k), ld_w(w_row[1] + k), ld_w(w_row[2] + k), ld_w(w_row[3] + k));
                let w_hi = vec4<f32>(ld_w(w_row[4] + k), ld_w(w_row[5] + k), ld_w(w_row[6] + k), ld_w(w_row[7] + k));
                for (var j = 0u; j < TM; j++) {
                    let xv = ld_x(base[j] + ci * p.ch_stride) * inside[j];
                    acc[j][0] += xv * w_lo;
                    acc[j][1] += xv * w_hi;
                }
            }
        }
    }

    // Constant trip counts (no early exit) let the compiler unroll and keep acc in registers.
    for (var j = 0u; j < TM; j++) {
        let pos = mb * TM + j;
        for (var q = 0u; q < TN; q++) {
            let co = nb * TN + q;
            if (pos < p.m && co < p.c_out) {
#if conv2d_bias
                let bias = ld_b(co);
#else
                let bias = 0.0;
#endif
                st_out((b * p.m + pos) * p.c_out + co, acc[j][q / 4u][q % 4u] + bias);
            }
        }
    }
}
#endif

#if dwconv3x3
@compute @workgroup_size(WG)
fn dwconv3x3(id: Ids) {
    let i = thread_index(id);
    if (i >= p.threads) { return; }
    let c = i % p.c_out;
    let pix = (i / p.c_out) % p.m;
    let img = i - (i % (p.m * p.c_out));  // first element of this batch item
    let y = pix / p.w;
    let x = pix % p.w;
    var acc = ld_b(c) + p.residual * ld_x(i);
    for (var dy = 0u; dy < 3u; dy++) {
        let yy = y + dy;  // padded coordinate: the input row is yy − 1
        if (yy < 1u || yy > p.h) { continue; }
        for (var dx = 0u; dx < 3u; dx++) {
            let xx = x + dx;
            if (xx < 1u || xx > p.w) { continue; }
            acc += ld_w(c * 9u + dy * 3u + dx) * ld_x(img + ((yy - 1u) * p.w + xx - 1u) * p.c_out + c);
        }
    }
    st_out(i, acc);
}
#endif
