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
//! Portability: every shader variant the table compiled is parsed, validated and translated
//! by naga to SPIR-V, MSL and HLSL — with the optional capabilities where the device offered
//! them, and without them for the fallback run — so a shader that would break on Metal or
//! DX12 fails here although only Vulkan runs on these machines.
//!
//! Chunked: the storage-binding limit is lowered so the case's largest tensors split into
//! several chunks, exercising the multi-binding accessors.

#[path = "conformance/attention.rs"]
mod attention;
#[path = "conformance/bmm.rs"]
mod bmm;
#[path = "conformance/channel_attn.rs"]
mod channel_attn;
mod common;
#[path = "conformance/conv.rs"]
mod conv;
#[path = "conformance/copy.rs"]
mod copy;
#[path = "conformance/eltwise.rs"]
mod eltwise;
#[path = "conformance/embed.rs"]
mod embed;
#[path = "conformance/matmul.rs"]
mod matmul;
#[path = "conformance/norm.rs"]
mod norm;
#[path = "conformance/reduce.rs"]
mod reduce;
#[path = "conformance/rope.rs"]
mod rope;
#[path = "conformance/sample.rs"]
mod sample;
#[path = "conformance/softmax.rs"]
mod softmax;
#[path = "conformance/window.rs"]
mod window;

use common::{gpu, max_rel_error};
use fvl_wgpu::gpu::{DType, Gpu};

/// A row's check: runs the op on the GPU and the reference on the CPU, returning (gpu
/// output, reference).
pub type Run = Box<dyn Fn(&Gpu, &mut common::Rng) -> (Vec<f32>, Vec<f32>)>;

/// One row of the table.
pub struct Case {
    pub op: &'static str,
    pub shape: String,
    pub dtype: DType,
    /// Runs the op on the GPU and the reference on the CPU: (gpu output, reference).
    pub run: Run,
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
    v.extend(matmul::cases());
    v.extend(norm::cases());
    v.extend(softmax::cases());
    v.extend(rope::cases());
    v.extend(rope::kv_cases());
    v.extend(attention::cases());
    v.extend(bmm::cases());
    v.extend(sample::cases());
    v.extend(conv::cases());
    v.extend(embed::cases());
    v.extend(copy::cases());
    v.extend(window::cases());
    v.extend(channel_attn::cases());
    v.extend(reduce::cases());
    // FVL_CONFORMANCE_ONLY=rope,swiglu runs the rows whose op starts with one of the names
    // (while working on a kernel; CI runs them all).
    if let Ok(only) = std::env::var("FVL_CONFORMANCE_ONLY") {
        v.retain(|c| only.split(',').any(|o| c.op.starts_with(o)));
    }
    v
}

/// Runs `case` on `gpu`; `Err` with the panic's message when its graph needs more storage
/// buffers per stage than the device allows (what the portable limits' 8 may not hold).
fn run_case(gpu: &mut Gpu, case: &Case, rng: &mut common::Rng) -> Result<(Vec<f32>, Vec<f32>), String> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(gpu, rng)));
    run.map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        // The graph's refusal when a step binds more buffers than the device allows (its
        // wording is for users: "… splits its tensors into N buffers, more than the M …").
        if !msg.contains("the adapter binds at once") {
            std::panic::resume_unwind(payload);
        }
        msg
    })
}

/// Runs every case unchunked and chunked on `gpu`; returns the failures.
fn run_table(gpu: &mut Gpu, cases: &[Case]) -> Vec<String> {
    run_table_with(gpu, cases, false).0
}

/// [`run_table`], returning (failures, chunked cases over the storage-buffer limit). A case
/// whose graph needs more storage buffers than the device allows fails, except chunked cases
/// under `tolerate_bindings`: their need is printed and listed instead.
fn run_table_with(gpu: &mut Gpu, cases: &[Case], tolerate_bindings: bool) -> (Vec<String>, Vec<String>) {
    let full_binding = gpu.max_binding;
    let mut failures = Vec::new();
    let mut over = Vec::new();
    let mut rows = 0;
    eprintln!(
        "{:<14} {:<28} {:<5} {:>6} {:>10}  result",
        "op", "shape", "dtype", "chunks", "error"
    );
    for (i, case) in cases.iter().enumerate() {
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
            let label = format!("{} {} {} chunks={chunks}", case.op, case.shape, case.dtype.name());
            let (got, want) = match run_case(gpu, case, &mut rng) {
                Ok(r) => r,
                Err(msg) => {
                    let need = msg
                        .split(" into ")
                        .nth(1)
                        .and_then(|t| t.split(" buffers").next())
                        .unwrap_or("?");
                    eprintln!("{label}: needs {need} storage buffers");
                    if tolerate_bindings && chunked {
                        over.push(format!("{label}: {need}"));
                    } else {
                        failures.push(format!("{label}: needs {need} storage buffers"));
                    }
                    continue;
                }
            };
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
                failures.push(format!("{label}: error {err:.3e}"));
            }
        }
    }
    gpu.max_binding = full_binding;
    eprintln!(
        "{rows} cases on {}, {} failed, {} over the storage-buffer limit",
        gpu.describe(),
        failures.len(),
        over.len()
    );
    (failures, over)
}

/// Translates every shader compiled on `gpu` to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12)
/// with naga, validating with `caps`; returns the failures.
fn translate_all(gpu: &Gpu, caps: naga::valid::Capabilities) -> Vec<String> {
    use naga::back::{hlsl, msl, spv};
    let mut failures = Vec::new();
    let sources = gpu.shader_sources();
    for (entry, source) in &sources {
        let label = format!("{entry} ({} bytes)", source.len());
        let module = match naga::front::wgsl::parse_str(source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{label}: parse: {}", e.emit_to_string(source)));
                continue;
            }
        };
        let info = match naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
        {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{label}: validate: {}", e.emit_to_string(source)));
                continue;
            }
        };
        let stage = naga::ShaderStage::Compute;
        if let Err(e) = spv::write_vec(
            &module,
            &info,
            &spv::Options::default(),
            Some(&spv::PipelineOptions {
                shader_stage: stage,
                entry_point: entry.clone(),
            }),
        ) {
            failures.push(format!("{label}: SPIR-V: {e}"));
        }
        let msl_opts = msl::Options {
            lang_version: (2, 4),
            fake_missing_bindings: true,
            ..Default::default()
        };
        if let Err(e) =
            msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default())
        {
            failures.push(format!("{label}: MSL: {e}"));
        }
        let hlsl_opts = hlsl::Options {
            shader_model: hlsl::ShaderModel::V6_2,
            fake_missing_bindings: true,
            ..Default::default()
        };
        let pipeline = hlsl::PipelineOptions {
            entry_point: Some((stage, entry.clone())),
        };
        let mut out = String::new();
        if let Err(e) =
            hlsl::Writer::new(&mut out, &hlsl_opts, &pipeline).write(&module, &info, None)
        {
            failures.push(format!("{label}: HLSL: {e}"));
        }
    }
    eprintln!(
        "{} shader variants translated to SPIR-V, MSL and HLSL, {} failed",
        sources.len(),
        failures.len()
    );
    failures
}

/// The table on the device as offered (f16 and subgroups where the adapter has them), then
/// every shader it compiled through naga for the three backends.
#[test]
fn conformance_table() {
    let mut gpu = gpu();
    let failures = run_table(&mut gpu, &all_cases());
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    let failures = translate_all(&gpu, naga::valid::Capabilities::all());
    assert!(
        failures.is_empty(),
        "portability failures:\n{}",
        failures.join("\n")
    );
}

/// Whether this is the full run (CI: `tools/test.sh --full` sets `FVL_TEST_FULL=1`). A
/// developer's quick run checks the fallback shaders on the linear layers only
/// (`linear_layers_without_subgroups`); the full table without optional features doubles the
/// table's time, which on lavapipe is mostly shader compilation.
fn full_run() -> bool {
    std::env::var_os("FVL_TEST_FULL").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The same table with SHADER_F16 and SUBGROUP turned off: the fallback shaders must be
/// right and must translate without those capabilities. It also runs the kernels in their
/// other layout choice (GPU-style on lavapipe), so both are checked on one device.
/// Full runs only ([`full_run`]).
#[test]
fn conformance_table_without_optional_features() {
    if !full_run() {
        eprintln!("skipped: the full run (tools/test.sh --full, or FVL_TEST_FULL=1) has it");
        return;
    }
    let mut gpu = common::gpu_without_optional_features();
    assert!(!gpu.subgroups && !gpu.shader_f16);
    gpu.cpu_style_kernels = !gpu.cpu_style_kernels;
    let failures = run_table(&mut gpu, &all_cases());
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    let caps = naga::valid::Capabilities::all()
        - naga::valid::Capabilities::SHADER_FLOAT16
        - naga::valid::Capabilities::SUBGROUP
        - naga::valid::Capabilities::SUBGROUP_BARRIER;
    let failures = translate_all(&gpu, caps);
    assert!(
        failures.is_empty(),
        "portability failures:\n{}",
        failures.join("\n")
    );
}

/// The linear layers once more without SUBGROUP but in the device's own layout choice: on
/// lavapipe that is the CPU-style matrix-vector kernel whose lanes cannot share x loads,
/// the path of software drivers whose subgroups are not exactly 8 wide.
#[test]
fn linear_layers_without_subgroups() {
    let mut gpu = common::gpu_without_optional_features();
    let failures = run_table(&mut gpu, &matmul::cases());
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

/// The table on a device opened with the portable limits (`fvl_wgpu::gpu::portable_limits`:
/// 256 invocations per workgroup, 16 KiB of workgroup memory, 8 storage buffers per stage,
/// 128 MiB bindings), so a kernel that needs more than every desktop GPU offers fails here
/// on any adapter. Every unchunked row must fit; chunked rows bind each chunk separately and
/// may need more than 8 buffers, which is printed (docs/reliability.md lists them) rather than
/// failed. Full runs only ([`full_run`]). Named to sort after the other tables: libtest starts
/// tests in name order on as many threads as cores, and on a cold shader cache this run
/// should find the kernels `conformance_table` already compiled rather than compile them
/// again beside it.
#[test]
fn table_under_portable_limits() {
    if !full_run() {
        eprintln!("skipped: the full run (tools/test.sh --full, or FVL_TEST_FULL=1) has it");
        return;
    }
    let mut gpu = Gpu::new(&fvl_wgpu::gpu::GpuOptions {
        portable_limits: true,
        ..Default::default()
    })
    .expect("a Vulkan adapter");
    assert!(gpu.limits.max_storage_buffers_per_shader_stage <= 8);
    assert!(gpu.limits.max_compute_workgroup_storage_size <= 16384);
    assert!(gpu.limits.max_compute_invocations_per_workgroup <= 256);
    assert!(gpu.max_binding <= 128 << 20);
    let (failures, over) = run_table_with(&mut gpu, &all_cases(), true);
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    eprintln!("chunked rows over 8 storage buffers:\n{}", over.join("\n"));
}
