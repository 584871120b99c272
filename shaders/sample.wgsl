// Token selection on the GPU from one row of logits [.., V] (any V), one workgroup of WG
// threads, each owning a contiguous segment of ceil(V / WG) logits. Writes the chosen id into
// ids[at] (u32; `at` fixed or from a run slot, so a decode loop fills a token buffer).
//   argmax: highest logit, ties → lowest index.
//   sample: softmax(logits / T) restricted to the top_k logits (0 = all), then to the
//     smallest set of those holding top_p of their mass (1 = all), HF warper order.
//     Thresholds are found by radix selection on order-preserving u32 keys of the logits:
//     32 rounds, each a parallel count or mass reduction, build the largest key τ with
//     count(key ≥ τ) ≥ top_k (resp. mass ≥ top_p·Z), so ties at the threshold are kept.
//     Then u = hash(seed, step) ∈ [0, 1) picks the token where the kept mass, accumulated
//     in index order (prefix over segments, then within one segment), passes u·total:
//     deterministic for a seed and step.
// Both write NON_FINITE (u32 max) instead when any logit they scan is NaN or ±Inf, so the host
// stops with an error rather than emit a garbage id (one bit test per logit read anyway).
// Napkin math: argmax reads V·4 B once (0.5 MB at V = 128k); sampling with both filters
// reads it ~66 times (2 MB-class L2 traffic a round) and computes ~33·V exps: well under a
// millisecond on a GPU, dominated by the 2·32 barrier-bound reductions.

struct Params {
    n: u32,           // V
    base: u32,        // flat index of the row's first logit
    top_k: u32,       // 0: no top-k filter
    top_p: f32,       // 1: no top-p filter
    inv_temp: f32,    // 1 / temperature
    seed_slot: u32,
    step_slot: u32,
    at_slot: u32,     // run slot of the output index, or NO_SLOT
    at_fixed: u32,
    ids_len: u32,
}

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> non_finite: atomic<u32>; // set when any thread saw a NaN or Inf logit

const NON_FINITE: u32 = 0xffffffffu;

// The thread's segment [lo, hi) of the row.
fn segment(lid: u32) -> vec2<u32> {
    let len = (p.n + WG - 1u) / WG;
    let lo = min(lid * len, p.n);
    return vec2<u32>(lo, min(lo + len, p.n));
}

// Order-preserving map of f32 onto u32 (a < b ⇔ key(a) < key(b) for non-NaN values).
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b >> 31u) == 1u);
}

// Index of the largest logit (ties → lowest), uniform across the workgroup. Also sets
// `non_finite` when a logit is NaN or ±Inf (all exponent bits set); read it after a barrier.
fn wg_argmax(lid: u32) -> u32 {
    if (lid == 0u) { atomicStore(&non_finite, 0u); }
    let seg = segment(lid);
    var bv = 0.0;
    var bi = 0xffffffffu; // an empty segment loses every comparison
    var bad = 0u;
    for (var i = seg.x; i < seg.y; i++) {
        let x = ld_logits(p.base + i);
        bad |= u32((bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u);
        if (bi == 0xffffffffu || x > bv) { bv = x; bi = i; }
    }
    workgroupBarrier(); // red_* may still be read by a previous reduction; the store above
    if (bad != 0u) { atomicOr(&non_finite, 1u); }
    red_v[lid] = bv;
    red_i[lid] = bi;
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if (lid < w) {
            let ov = red_v[lid + w];
            let oi = red_i[lid + w];
            let mine = red_i[lid];
            if (mine == 0xffffffffu || (oi != 0xffffffffu && (ov > red_v[lid] || (ov == red_v[lid] && oi < mine)))) {
                red_v[lid] = ov;
                red_i[lid] = oi;
            }
        }
    }
    return workgroupUniformLoad(&red_i[0]);
}

// Sum of v over the workgroup, uniform.
fn wg_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    red_v[lid] = v;
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if (lid < w) { red_v[lid] += red_v[lid + w]; }
    }
    return workgroupUniformLoad(&red_v[0]);
}

fn write_id(id: u32) {
    let at = run_value(p.at_slot, p.at_fixed);
    if (at < p.ids_len) { stu_ids(at, id); }
}

#if argmax
@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_index) lid: u32) {
    let best = wg_argmax(lid); // its last barrier makes every thread's atomicOr visible
    if (lid == 0u) { write_id(select(best, NON_FINITE, atomicLoad(&non_finite) != 0u)); }
}
#endif

#if sample
// PCG hash (Jarzynski & Olano 2020).
fn hash(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// exp((x − max) / T) of a logit: its unnormalised probability.
fn weight(x: f32, top: f32) -> f32 { return exp((x - top) * p.inv_temp); }

// The thread's kept count (as f32, exact) or mass for logits with key ≥ tau.
fn local_count(seg: vec2<u32>, tau: u32) -> f32 {
    var c = 0.0;
    for (var i = seg.x; i < seg.y; i++) { c += select(0.0, 1.0, key(ld_logits(p.base + i)) >= tau); }
    return c;
}
fn local_mass(seg: vec2<u32>, tau: u32, top: f32) -> f32 {
    var s = 0.0;
    for (var i = seg.x; i < seg.y; i++) {
        let x = ld_logits(p.base + i);
        if (key(x) >= tau) { s += weight(x, top); }
    }
    return s;
}

@compute @workgroup_size(WG)
fn sample(@builtin(local_invocation_index) lid: u32) {
    let seg = segment(lid);
    let top = ld_logits(p.base + wg_argmax(lid));
    let flagged = atomicLoad(&non_finite) != 0u;
    if (flagged && lid == 0u) { write_id(NON_FINITE); }

    // Top-k: the largest τ with count(key ≥ τ) ≥ top_k, bit by bit from the top.
    var tau_k = 0u;
    if (p.top_k > 0u && p.top_k < p.n) {
        for (var bit = 32u; bit > 0u; bit--) {
            let cand = tau_k | (1u << (bit - 1u));
            if (wg_sum(lid, local_count(seg, cand)) >= f32(p.top_k)) { tau_k = cand; }
        }
    }
    // Top-p over what top-k kept: the largest τ whose mass is still ≥ top_p of the total.
    var tau = tau_k;
    if (p.top_p < 1.0) {
        let need = p.top_p * wg_sum(lid, local_mass(seg, tau_k, top));
        var t = 0u;
        for (var bit = 32u; bit > 0u; bit--) {
            let cand = t | (1u << (bit - 1u));
            if (wg_sum(lid, local_mass(seg, max(cand, tau_k), top)) >= need) { t = cand; }
        }
        tau = max(t, tau_k);
    }

    // Draw: exclusive prefix of the segments' kept mass. Every thread sums the same values in
    // the same order, so thread t's end equals thread t+1's start bit for bit and the
    // intervals [start, start + own) tile [0, total) exactly.
    let own = local_mass(seg, tau, top);
    workgroupBarrier();
    red_v[lid] = own;
    workgroupBarrier();
    var start = 0.0;
    var total = 0.0;
    for (var t = 0u; t < WG; t++) {
        if (t == lid) { start = total; }
        total += red_v[t];
    }
    let u = f32(hash(run[p.seed_slot] ^ hash(run[p.step_slot])) >> 8u) * (1.0 / 16777216.0);
    // u < 1, but u·total can round up to total: clamp to the float just below it.
    let goal = min(u * total, bitcast<f32>(bitcast<u32>(total) - 1u));
    if (!flagged && own > 0.0 && goal >= start && goal < start + own) {
        var acc = start;
        var pick = seg.x;
        for (var i = seg.x; i < seg.y; i++) {
            let x = ld_logits(p.base + i);
            if (key(x) < tau) { continue; }
            pick = i; // the last kept token, should rounding carry goal past the end
            acc += weight(x, top);
            if (goal < acc) { break; }
        }
        write_id(pick);
    }
}
#endif
