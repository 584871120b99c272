//! Florence-VL end to end on `florence-vl-tiny` (tools/README.md): the fused and projected
//! features, the prompt ids and embeddings, and the greedy answer against transformers.

mod common;

use common::{fixture_path, fixture_tensor, max_rel_error};
use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::model::florence_vl::FlorenceVl;

const DIR: &str = "florence-vl-tiny";
const EXPECTED: &str = "florence-vl-tiny/expected.safetensors";
/// f32 budget: max abs difference over the largest reference magnitude.
const F32_BUDGET: f64 = 1e-4;

/// The model in f32, with the BART tokenizer of `florence2-a` (the one the fixture used).
fn load(gpu: &Gpu) -> FlorenceVl {
    let bart = fixture_path("florence2-a");
    FlorenceVl::load(gpu, &fixture_path(DIR), DType::F32, Some(&bart)).unwrap()
}

#[test]
fn fused_and_projected_features_match_transformers() {
    let gpu = common::gpu();
    let m = load(&gpu);
    let (shape, pixels) = fixture_tensor(EXPECTED, "pixel_values");
    let pixels = Tensor::from_f32(&gpu, &shape[1..], DType::F32, &pixels, "pixels").unwrap();
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let f = m.features(&mut g, p).unwrap();
    for id in [f.v, f.fused, f.projected] {
        g.keep(id);
    }
    let exe = g.build().unwrap();
    exe.run(&gpu, &[]).unwrap();
    for (name, id) in [
        ("image_features", f.v),
        ("fused", f.fused),
        ("projected", f.projected),
    ] {
        let (shape, want) = fixture_tensor(EXPECTED, name);
        assert_eq!(exe.tensor(id).shape(), &shape[1..], "{name}");
        let err = max_rel_error(&exe.tensor(id).read_f32(&gpu).unwrap(), &want);
        eprintln!("{name}: max rel error {err:.2e}");
        assert!(err <= F32_BUDGET, "{name}: {err:e}");
    }
}
