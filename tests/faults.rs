//! Faults surface as errors, never panics: allocations past the adapter's limits, and a lost
//! device.

mod common;

use fvl_wgpu::gpu::{DType, Gpu, GpuOptions, Graph, Tensor};
use fvl_wgpu::model::generate::{Pick, Prompt, Session};
use fvl_wgpu::model::llama::Llama;
use fvl_wgpu::ops::eltwise::{self, Unary};
use fvl_wgpu::weights::Checkpoint;
use fvl_wgpu::Error;

#[test]
fn buffer_past_the_limit_is_an_error() {
    let gpu = common::gpu();
    let too_big = gpu.limits.max_buffer_size + 4;
    let err = gpu
        .buffer("huge", too_big, wgpu::BufferUsages::STORAGE)
        .unwrap_err();
    assert!(matches!(err, Error::AdapterLimits(_)), "{err}");
    assert!(err.to_string().contains("huge"), "{err}");
}

#[test]
fn a_row_larger_than_a_binding_is_an_error() {
    let mut gpu = common::gpu();
    gpu.max_binding = 1024;
    let err = Tensor::empty(&gpu, &[2, 512], DType::F32, "wide").unwrap_err();
    assert!(err.to_string().contains("storage binding limit"), "{err}");
}

#[test]
fn lost_device_is_an_error() {
    let gpu = common::gpu();
    let x = Tensor::from_f32(&gpu, &[64], DType::F32, &[0.5; 64], "x").unwrap();
    let mut g = Graph::new(&gpu);
    let xi = g.external(&x);
    eltwise::unary(&mut g, Unary::Gelu, xi, xi).unwrap();
    let exe = g.build().unwrap();
    gpu.destroy();
    let run = exe
        .run(&gpu, &[])
        .and_then(|_| x.read_f32(&gpu).map(|_| ()));
    assert!(run.is_err(), "work on a destroyed device must fail");
}

fn load_llama(gpu: &Gpu) -> fvl_wgpu::Result<Llama> {
    let ck = Checkpoint::open(common::fixture_path("llama-b"))?;
    Llama::from_checkpoint(gpu, &ck, DType::F32, &|| ())
}

/// Greedy ids for a fixed prompt on `gpu`: a Llama session built from scratch.
fn generate(gpu: &Gpu) -> fvl_wgpu::Result<Vec<u32>> {
    let llama = load_llama(gpu)?;
    let mut s = Session::new(gpu, &llama, 64, Pick::Greedy, 0)?;
    let mut ids = vec![s.prefill(Prompt::Ids(&[1, 5, 9, 2]), false)?];
    for _ in 0..3 {
        ids.push(s.decode(None)?);
    }
    Ok(ids)
}

/// An allocation the device cannot hold (its largest buffer lowered to 1 KiB at creation,
/// as on a smaller adapter) is one clear error, not a panic or a hang; the same process then
/// opens a device and builds the model and session again, with the right answer.
#[test]
fn failed_allocation_is_one_error_and_the_model_builds_again() {
    let want = generate(&common::gpu()).unwrap();
    let small = Gpu::new(&GpuOptions {
        max_buffer_size: Some(1 << 10),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(small.limits.max_buffer_size, 1 << 10);
    let err = generate(&small).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, Error::AdapterLimits(_) | Error::OutOfMemory(_)), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    // The failed device still runs work that fits.
    let x = Tensor::from_f32(&small, &[64], DType::F32, &[2.0; 64], "x").unwrap();
    let mut g = Graph::new(&small);
    let xi = g.external(&x);
    eltwise::unary(&mut g, Unary::Gelu, xi, xi).unwrap();
    g.build().unwrap().run(&small, &[]).unwrap();
    assert!((x.read_f32(&small).unwrap()[63] - 1.9545).abs() < 1e-3);
    drop(small);
    assert_eq!(generate(&common::gpu()).unwrap(), want);
}

/// A device lost mid-session (destroyed, as a driver reset would) makes the next decode step
/// one clear error rather than a hang on the token readback, and a new device runs the model
/// again in the same process. wgpu reports the loss through the device-lost callback.
#[test]
fn lost_device_mid_session_is_one_error_and_a_new_device_works() {
    let gpu = common::gpu();
    let llama = load_llama(&gpu).unwrap();
    let mut s = Session::new(&gpu, &llama, 64, Pick::Greedy, 0).unwrap();
    let first = s.prefill(Prompt::Ids(&[1, 5, 9, 2]), false).unwrap();
    gpu.destroy();
    let err = s.decode(None).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("device was destroyed") || err.contains("stopped taking work"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    drop(s);
    drop(llama);
    drop(gpu);
    let ids = generate(&common::gpu()).unwrap();
    assert_eq!(ids[0], first);
}
