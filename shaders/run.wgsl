
// ---- shaders/run.wgsl, appended to kernels that take ops::RunValue parameters ----
// A value is either fixed when the graph is built (slot == NO_SLOT) or read from the run
// buffer at each replay (a position, a key length, a seed).
const NO_SLOT: u32 = 0xffffffffu;

fn run_value(slot: u32, fixed: u32) -> u32 {
    if (slot == NO_SLOT) { return fixed; }
    return run[slot];
}
