//! Faults surface as errors, never panics: allocations past the adapter's limits, and a lost
//! device.

mod common;

use fvl_wgpu::gpu::{DType, Graph, Tensor};
use fvl_wgpu::ops::eltwise::{self, Unary};
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
