//! The kernel conformance table, in the spirit of ggml's test-backend-ops: every op × shapes
//! (odd, non-power-of-two included) × every dtype it takes × chunked and unchunked storage,
//! against the plain CPU references in `common/reference.rs`, on random inputs, with outputs
//! poisoned (NaN) before each run so an unwritten element fails.
//!
//! Error budget (largest |error| over largest |reference|, see `common::max_rel_error`): the
//! references use the values the GPU really holds (weights after f16 rounding or
//! quantization), so the budget only covers accumulation order and transcendental functions:
//! 1e-5 for f32 data, 1e-4 when a weight is f16, q8 or q4 (longer decode chains, f16 scales).
//! Quantization error itself is bounded separately in `quantization_error_budget`.
//!
//! Chunked: the storage-binding limit is lowered so the case's largest tensors split into
//! several chunks, exercising the multi-binding accessors.

mod common;
#[path = "conformance/conv.rs"]
mod conv;
#[path = "conformance/copy.rs"]
mod copy;
#[path = "conformance/eltwise.rs"]
mod eltwise;
#[path = "conformance/embed.rs"]
mod embed;

use common::{gpu, max_rel_error};
use fvl_wgpu::gpu::{DType, Gpu};

/// One row of the table.
pub struct Case {
    pub op: &'static str,
    pub shape: String,
    pub dtype: DType,
    /// Runs the op on the GPU and the reference on the CPU: (gpu output, reference).
    pub run: Box<dyn Fn(&Gpu, &mut common::Rng) -> (Vec<f32>, Vec<f32>)>,
    /// Bytes of the largest tensor, to choose a binding limit that splits it.
    pub largest_bytes: u64,
    /// Bytes of the longest row of any tensor (a chunk holds at least one row).
    pub row_bytes: u64,
}

/// The error budget for a case whose weights have `dtype`.
pub fn budget(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::U32 => 1e-5,
        DType::F16 | DType::Q8 | DType::Q4 => 1e-4,
    }
}

fn all_cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(eltwise::cases());
    v.extend(conv::cases());
    v.extend(embed::cases());
    v.extend(copy::cases());
    v
}

#[test]
fn conformance_table() {
    let mut gpu = gpu();
    let full_binding = gpu.max_binding;
    let mut failures = Vec::new();
    let mut rows = 0;
    eprintln!(
        "{:<14} {:<28} {:<5} {:>6} {:>10}  result",
        "op", "shape", "dtype", "chunks", "error"
    );
    for (i, case) in all_cases().iter().enumerate() {
        for chunked in [false, true] {
            // About three chunks for the largest tensor, but at least one row per chunk.
            let limit = if chunked {
                (case.largest_bytes / 3)
                    .max(case.row_bytes)
                    .next_multiple_of(4)
            } else {
                full_binding
            };
            gpu.max_binding = limit;
            let chunks = case.largest_bytes.div_ceil(limit);
            let mut rng = common::Rng::new(1000 + i as u64);
            let (got, want) = (case.run)(&gpu, &mut rng);
            let err = max_rel_error(&got, &want);
            let ok = err <= budget(case.dtype);
            rows += 1;
            eprintln!(
                "{:<14} {:<28} {:<5} {:>6} {:>10.2e}  {}",
                case.op,
                case.shape,
                case.dtype.name(),
                chunks,
                err,
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(format!(
                    "{} {} {} chunked={chunked}: error {err:.3e}",
                    case.op,
                    case.shape,
                    case.dtype.name()
                ));
            }
        }
    }
    eprintln!("{rows} cases, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}
