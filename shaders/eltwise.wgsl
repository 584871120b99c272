// Element-wise ops, one thread per element: GELU (exact, erf), SiLU, affine scale,
// add/mul with a row-broadcast second operand, and fused SwiGLU.
// Napkin math: pure bandwidth, 8 B (unary) to 12 B (binary) of f32 traffic per element.

struct Params {
    n: u32,       // elements of the output
    b_len: u32,   // elements of the second operand (b[i % b_len] broadcasts a row)
    op: u32,      // see OP_* in src/ops/eltwise.rs
    alpha: f32,
    beta: f32,
}

const OP_GELU: u32 = 0u;
const OP_SILU: u32 = 1u;
const OP_SCALE: u32 = 2u;
const OP_ADD: u32 = 3u;
const OP_MUL: u32 = 4u;

// erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit), enough for f32 parity.
fn erf_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, x >= 0.0);
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

fn apply_unary(x: f32) -> f32 {
    switch p.op {
        case OP_GELU: { return gelu(x); }
        case OP_SILU: { return silu(x); }
        default: { return x * p.alpha + p.beta; }
    }
}

#if unary
@compute @workgroup_size(WG)
fn unary(id: Ids) {
    let i = thread_index(id);
    if (i < p.n) { st_out(i, apply_unary(ld_x(i))); }
}
#endif

#if unary_inplace
@compute @workgroup_size(WG)
fn unary_inplace(id: Ids) {
    let i = thread_index(id);
    if (i < p.n) { st_out(i, apply_unary(ld_out(i))); }
}
#endif

#if binary
@compute @workgroup_size(WG)
fn binary(id: Ids) {
    let i = thread_index(id);
    if (i >= p.n) { return; }
    let a = ld_x(i);
    let b = ld_b(i % p.b_len);
    st_out(i, select(a * b, a + b, p.op == OP_ADD));
}
#endif

#if swiglu_halves
// out[r, c] = silu(x[r, c]) * x[r, I + c] for x = [gate | up] rows of 2·I (I = b_len): the
// output of one fused gate/up projection.
@compute @workgroup_size(WG)
fn swiglu_halves(id: Ids) {
    let i = thread_index(id);
    if (i >= p.n) { return; }
    let j = i + (i / p.b_len) * p.b_len;
    st_out(i, silu(ld_x(j)) * ld_x(j + p.b_len));
}
#endif

#if swiglu
// out = silu(gate) * up
@compute @workgroup_size(WG)
fn swiglu(id: Ids) {
    let i = thread_index(id);
    if (i >= p.n) { return; }
    st_out(i, silu(ld_x(i)) * ld_b(i));
}
#endif
