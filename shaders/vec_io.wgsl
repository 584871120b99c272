
// ---- shaders/vec_io.wgsl, appended to kernels that move x to out V values at a time ----
// With VEC4 defined (rows a multiple of 4 long), T is vec4<f32> and the accessors load and
// store four values; otherwise one.
#if VEC4
const V: u32 = 4u;
alias T = vec4<f32>;
fn ldv_x(i: u32) -> T { return ld4_x(i); }
fn stv_out(i: u32, v: T) { st4_out(i, v); }
#else
const V: u32 = 1u;
alias T = f32;
fn ldv_x(i: u32) -> T { return ld_x(i); }
fn stv_out(i: u32, v: T) { st_out(i, v); }
#endif
