//! `fvl-wgpu bench kernels`: each kernel family timed on this device, next to the ceilings
//! measured in the same run — buffer-to-buffer copy bandwidth (bytes moved per second) for
//! bandwidth-bound kernels, the best f32 matmul rate for compute-bound ones.
//!
//! Method: a graph holding `REPS` back-to-back dispatches of the kernel is replayed after a
//! warm-up; time per dispatch = best wall time of one replay / `REPS`. Wall time includes
//! one submit and wait per replay, amortised over the repetitions.

use std::time::Instant;

use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::model::florence2::VisionTower;
use fvl_wgpu::ops::attention::{self, Attention};
use fvl_wgpu::ops::conv::{self, Conv2d, ConvInput};
use fvl_wgpu::ops::eltwise::{self, Unary};
use fvl_wgpu::ops::{
    channel_attn, embed, matmul, norm, reduce, sample, softmax, window, RunValue, View,
};
use fvl_wgpu::weights::florence2::VisionConfig;
use fvl_wgpu::{Error, Result};

use super::DeviceArgs;

const REPS: usize = 4;
const TRIALS: usize = 3;

/// One measured row.
struct Row {
    kernel: String,
    shape: String,
    seconds: f64,
    flops: f64,
    bytes: f64,
}

fn noise(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 8) as f32 / 8388608.0 - 1.0)
        .collect()
}

fn input(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_f32(
        gpu,
        shape,
        dtype,
        &noise(shape.iter().product()),
        "bench input",
    )
}

/// Best time of one dispatch of what `record` adds to a graph.
fn time(gpu: &Gpu, mut record: impl FnMut(&mut Graph) -> Result<()>) -> Result<f64> {
    let mut g = Graph::new(gpu);
    for _ in 0..REPS {
        record(&mut g)?;
    }
    let exe = g.build()?;
    exe.run(gpu, &[])?;
    let mut best = f64::INFINITY;
    for _ in 0..TRIALS {
        let t = Instant::now();
        exe.run(gpu, &[])?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best / REPS as f64)
}

/// Copy bandwidth: bytes read + written per second by `copy_buffer_to_buffer`.
fn copy_bandwidth(gpu: &Gpu, bytes: u64) -> Result<f64> {
    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let a = gpu.buffer("copy src", bytes, usage)?;
    let b = gpu.buffer("copy dst", bytes, usage)?;
    let mut best = f64::INFINITY;
    for trial in 0..=TRIALS {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..REPS {
            enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
        }
        let t = Instant::now();
        gpu.queue.submit([enc.finish()]);
        gpu.wait()?;
        if trial > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * bytes as f64 * REPS as f64 / best)
}

fn linear_row(gpu: &Gpu, m: usize, n: usize, k: usize, dtype: DType) -> Result<Row> {
    let x = input(gpu, &[m, k], DType::F32)?;
    let w = input(gpu, &[n, k], dtype)?;
    let out = Tensor::empty(gpu, &[m, n], DType::F32, "bench output")?;
    let seconds = time(gpu, |g| {
        let (xi, wi, oi) = (g.external(&x), g.external(&w), g.external(&out));
        matmul::linear(g, xi, wi, None, oi)
    })?;
    let kernel = if m <= matmul::MATVEC_MAX_ROWS {
        "matvec"
    } else {
        "matmul"
    };
    Ok(Row {
        kernel: format!("{kernel} {}", dtype.name()),
        shape: format!("{m}x{k} · {n}x{k}ᵀ"),
        seconds,
        flops: 2.0 * (m * n * k) as f64,
        bytes: (w.layout.bytes() + 4 * (m * k + m * n) as u64) as f64,
    })
}

pub fn kernels(args: &DeviceArgs, quick: bool, only: Option<&str>) -> Result<()> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let gpu = args.open()?;
    let copy_bytes = (if quick { 32u64 } else { 128 } << 20).min(gpu.limits.max_buffer_size / 2);
    eprintln!("measuring copy bandwidth ({} MiB)…", copy_bytes >> 20);
    let copy = copy_bandwidth(&gpu, copy_bytes)?;
    let (mm, mv_n, mv_k, rows, cols) = if quick {
        (512, 4096, 1024, 1024, 1024)
    } else {
        (1024, 8192, 2048, 4096, 1024)
    };

    // The compute ceiling: our f32 matmul at the size the issue names, always measured.
    eprintln!("matmul {mm}³ f32 (ceiling)…");
    let ceiling = linear_row(&gpu, mm, mm, mm, DType::F32)?;
    let best_matmul = ceiling.flops / ceiling.seconds;
    let mut rows_out = vec![ceiling];
    for dtype in [DType::F16, DType::Q8, DType::Q4] {
        if wanted(&format!("matmul {}", dtype.name())) {
            eprintln!("matmul {mm}³ {}…", dtype.name());
            rows_out.push(linear_row(&gpu, mm, mm, mm, dtype)?);
        }
    }
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        if wanted(&format!("matvec {}", dtype.name())) {
            eprintln!("matvec {mv_n}x{mv_k} {}…", dtype.name());
            rows_out.push(linear_row(&gpu, 1, mv_n, mv_k, dtype)?);
        }
    }
    let x = input(&gpu, &[rows, cols], DType::F32)?;
    let gamma = input(&gpu, &[cols], DType::F32)?;
    let beta = input(&gpu, &[cols], DType::F32)?;
    let elems = (rows * cols) as f64;
    let out = Tensor::empty(&gpu, &[rows, cols], DType::F32, "bench output")?;
    let shape = format!("{rows}x{cols}");
    if wanted("layernorm") {
        let seconds = time(&gpu, |g| {
            let (xi, gi, bi, oi) = (
                g.external(&x),
                g.external(&gamma),
                g.external(&beta),
                g.external(&out),
            );
            norm::layernorm(g, xi, gi, bi, 1e-5, oi)
        })?;
        rows_out.push(Row {
            kernel: "layernorm".into(),
            shape: shape.clone(),
            seconds,
            flops: 8.0 * elems,
            bytes: 8.0 * elems,
        });
    }
    if wanted("gelu") {
        let seconds = time(&gpu, |g| {
            let (xi, oi) = (g.external(&x), g.external(&out));
            eltwise::unary(g, Unary::Gelu, xi, oi)
        })?;
        rows_out.push(Row {
            kernel: "gelu".into(),
            shape,
            seconds,
            flops: 20.0 * elems,
            bytes: 8.0 * elems,
        });
    }
    if wanted("softmax") {
        let seconds = time(&gpu, |g| {
            let (xi, oi) = (g.external(&x), g.external(&out));
            softmax::softmax(g, xi, oi)
        })?;
        rows_out.push(Row {
            kernel: "softmax".into(),
            shape: format!("{rows}x{cols}"),
            seconds,
            flops: 5.0 * elems,
            bytes: 12.0 * elems,
        });
    }
    if wanted("attention") {
        // Florence-2-large encoder self-attention: 591 tokens, 16 heads of 64, from fused qkv.
        let (t, heads, d) = if quick { (256, 8, 64) } else { (591, 16, 64) };
        let qkv = input(&gpu, &[t, 3 * heads * d], DType::F32)?;
        let o = Tensor::empty(&gpu, &[t, heads * d], DType::F32, "bench output")?;
        let a = Attention {
            batch: 1,
            tq: t,
            s_max: t,
            q_heads: heads,
            kv_heads: heads,
            head_dim: d,
            kv_len: RunValue::Fixed(t as u32),
            causal: false,
            scale: (d as f32).powf(-0.5),
        };
        let seconds = time(&gpu, |g| {
            let (qi, oi) = (g.external(&qkv), g.external(&o));
            let view = |off| View::strided(qi, off, 3 * heads * d);
            attention::attention(g, view(0), view(heads * d), view(2 * heads * d), oi, &a)
        })?;
        rows_out.push(Row {
            kernel: "attention".into(),
            shape: format!("{t} tok, {heads}x{d}"),
            seconds,
            flops: 4.0 * (t * t * heads * d) as f64,
            bytes: 16.0 * (t * heads * d) as f64,
        });
    }
    if wanted("conv2d") {
        // DaViT-large stage-1 patch embedding: 3×3 stride 2 over 96² tokens, 256 → 512.
        let (hw, cin, cout) = if quick {
            (48, 128, 256)
        } else {
            (96, 256, 512)
        };
        let xin = input(&gpu, &[hw * hw, cin], DType::F32)?;
        let w = input(&gpu, &[cout, cin, 3, 3], DType::F16)?;
        let c = Conv2d::square(3, 2, 1, ConvInput::Hwc { h: hw, w: hw });
        let ho = hw / 2;
        let o = Tensor::empty(&gpu, &[ho * ho, cout], DType::F32, "bench output")?;
        let seconds = time(&gpu, |g| {
            let (xi, wi, oi) = (g.external(&xin), g.external(&w), g.external(&o));
            conv::conv2d(g, &c, xi, wi, None, oi)
        })?;
        rows_out.push(Row {
            kernel: "conv2d f16".into(),
            shape: format!("{hw}²x{cin} k3s2 →{cout}"),
            seconds,
            flops: 2.0 * (ho * ho * cout * cin * 9) as f64,
            bytes: (4 * (hw * hw * cin + ho * ho * cout) + 2 * cout * cin * 9) as f64,
        });
    }
    if wanted("dwconv") {
        let (hw, c) = if quick { (48, 256) } else { (96, 512) };
        let xin = input(&gpu, &[hw * hw, c], DType::F32)?;
        let w = input(&gpu, &[c, 1, 3, 3], DType::F32)?;
        let b = input(&gpu, &[c], DType::F32)?;
        let o = Tensor::empty(&gpu, &[hw * hw, c], DType::F32, "bench output")?;
        let seconds = time(&gpu, |g| {
            let (xi, wi, bi, oi) = (
                g.external(&xin),
                g.external(&w),
                g.external(&b),
                g.external(&o),
            );
            conv::dwconv3x3(g, xi, (hw, hw), wi, bi, true, oi)
        })?;
        let n = (hw * hw * c) as f64;
        rows_out.push(Row {
            kernel: "dwconv3x3".into(),
            shape: format!("{hw}²x{c}"),
            seconds,
            flops: 18.0 * n,
            bytes: 8.0 * n,
        });
    }
    if wanted("embed") {
        let (v, d, t) = (32000, 1024, 64);
        let table = input(&gpu, &[v, d], DType::F16)?;
        let ids: Vec<u32> = (0..t as u32).map(|i| i * 487 % v as u32).collect();
        let ids = Tensor::from_u32(&gpu, &[t], &ids, "ids")?;
        let o = Tensor::empty(&gpu, &[t, d], DType::F32, "bench output")?;
        let seconds = time(&gpu, |g| {
            let (ii, ti, oi) = (g.external(&ids), g.external(&table), g.external(&o));
            embed::embed(g, ii, ti, None, oi)
        })?;
        rows_out.push(Row {
            kernel: "embed f16".into(),
            shape: format!("{t} rows of {v}x{d}"),
            seconds,
            flops: 0.0,
            bytes: (6 * t * d) as f64,
        });
    }
    if wanted("argmax") {
        // Llama-3's vocabulary plus Florence-VL's pad token.
        let v = 128257;
        let logits = input(&gpu, &[1, v], DType::F32)?;
        let ids = Tensor::empty(&gpu, &[1], DType::U32, "ids")?;
        let seconds = time(&gpu, |g| {
            let (li, ii) = (g.external(&logits), g.external(&ids));
            sample::argmax(g, li, 0, ii, RunValue::Fixed(0))
        })?;
        rows_out.push(Row {
            kernel: "argmax".into(),
            shape: format!("{v}"),
            seconds,
            flops: v as f64,
            bytes: 4.0 * v as f64,
        });
    }
    // DaViT-large stage 0 (192² tokens × 256; quick: stage 1, 96² × 512), windows of 12.
    let (hw, c) = if quick { (96, 512) } else { (192, 256) };
    let n = (hw * hw * c) as f64;
    let tokens = input(&gpu, &[hw * hw, c], DType::F32)?;
    let wins = input(
        &gpu,
        &[window::window_count(hw, hw, 12), 144, c],
        DType::F32,
    )?;
    if wanted("window") {
        let part = Tensor::empty(&gpu, wins.shape(), DType::F32, "bench output")?;
        let seconds = time(&gpu, |g| {
            let (xi, oi) = (g.external(&tokens), g.external(&part));
            window::partition(g, xi, (hw, hw), 12, oi)
        })?;
        rows_out.push(Row {
            kernel: "window part".into(),
            shape: format!("{hw}²x{c} ws12"),
            seconds,
            flops: 0.0,
            bytes: 8.0 * n,
        });
        let merged = Tensor::empty(&gpu, tokens.shape(), DType::F32, "bench output")?;
        let seconds = time(&gpu, |g| {
            let (wi, ri, oi) = (g.external(&wins), g.external(&tokens), g.external(&merged));
            window::merge(g, wi, (hw, hw), 12, Some(ri), oi)
        })?;
        rows_out.push(Row {
            kernel: "window merge+r".into(),
            shape: format!("{hw}²x{c} ws12"),
            seconds,
            flops: n,
            bytes: 12.0 * n,
        });
    }
    if wanted("channel_attn") {
        // Groups of 32 channels, as in every DaViT stage.
        let qkv = input(&gpu, &[hw * hw, 3 * c], DType::F32)?;
        let seconds = time(&gpu, |g| {
            let (qi, oi) = (g.external(&qkv), g.external(&tokens));
            channel_attn::channel_attention(g, qi, hw * hw, c / 32, oi)
        })?;
        rows_out.push(Row {
            kernel: "channel_attn".into(),
            shape: format!("{hw}²x{c} groups of 32"),
            seconds,
            flops: 4.0 * n * 32.0,
            bytes: 16.0 * n,
        });
    }
    if wanted("mean_rows") {
        let mean = Tensor::empty(&gpu, &[1, c], DType::F32, "bench output")?;
        let seconds = time(&gpu, |g| {
            let (xi, oi) = (g.external(&tokens), g.external(&mean));
            reduce::mean_rows(g, xi, oi)
        })?;
        rows_out.push(Row {
            kernel: "mean_rows".into(),
            shape: format!("{}x{c}", hw * hw),
            seconds,
            flops: n,
            bytes: 4.0 * n,
        });
    }
    eprintln!(
        "\ndevice {}: copy bandwidth {:.1} GB/s, best matmul {:.1} GFLOP/s",
        gpu.describe(),
        copy / 1e9,
        best_matmul / 1e9
    );
    eprintln!(
        "{:<14} {:<26} {:>10} {:>10} {:>7} {:>9} {:>7}",
        "kernel", "shape", "ms", "GFLOP/s", "of mm", "GB/s", "of copy"
    );
    let mut json_rows = Vec::new();
    for r in &rows_out {
        let (gflops, gbs) = (r.flops / r.seconds / 1e9, r.bytes / r.seconds / 1e9);
        eprintln!(
            "{:<14} {:<26} {:>10.3} {:>10.2} {:>6.0}% {:>9.2} {:>6.0}%",
            r.kernel,
            r.shape,
            r.seconds * 1e3,
            gflops,
            100.0 * gflops * 1e9 / best_matmul,
            gbs,
            100.0 * gbs * 1e9 / copy
        );
        json_rows.push(serde_json::json!({
            "kernel": r.kernel, "shape": r.shape, "ms": r.seconds * 1e3,
            "gflops": gflops, "fraction_of_best_matmul": gflops * 1e9 / best_matmul,
            "gb_per_s": gbs, "fraction_of_copy_bandwidth": gbs * 1e9 / copy,
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "device": gpu.describe(),
                "ceilings": {"copy_gb_per_s": copy / 1e9, "best_matmul_gflops": best_matmul / 1e9},
                "kernels": json_rows,
            })
        );
    }
    Ok(())
}

/// Florence-2 vision configs at the real sizes (spec §3.1): `base` or `large`.
fn florence2_vision_config(name: &str) -> Result<VisionConfig> {
    let (dims, heads, proj) = match name {
        "base" => ([128, 256, 512, 1024], [4, 8, 16, 32], 768),
        "large" => ([256, 512, 1024, 2048], [8, 16, 32, 64], 1024),
        other => {
            return Err(Error::input(format!(
                "--config {other:?}: expected base or large"
            )))
        }
    };
    let vc = serde_json::json!({
        "embed_dim": dims, "num_heads": heads, "num_groups": heads, "depths": [1, 1, 9, 1],
        "patch_size": [7, 3, 3, 3], "patch_stride": [4, 2, 2, 2], "patch_padding": [3, 1, 1, 1],
        "patch_prenorm": [false, true, true, true], "window_size": 12, "projection_dim": proj,
        "mlp_ratio": 4.0, "qkv_bias": true, "max_position_embeddings": 50, "max_temporal_embeddings": 100,
    });
    VisionConfig::from_json(&vc, &serde_json::json!({})).map_err(Error::Input)
}

/// Napkin FLOPs of DaViT + image head at `size`² (spec §9.1): linear layers, window and
/// channel attention, depthwise and patch convolutions, the projection.
fn vision_flops(cfg: &VisionConfig, size: usize) -> f64 {
    let (mut hw, mut cin, mut total) = (size, cfg.in_channels, 0.0);
    for s in 0..cfg.stages() {
        let (k, st, pad) = (cfg.patch_size[s], cfg.patch_stride[s], cfg.patch_padding[s]);
        hw = (hw + 2 * pad - k) / st + 1;
        let (n, c) = ((hw * hw) as f64, cfg.embed_dim[s] as f64);
        total += 2.0 * n * c * cin as f64 * (k * k) as f64;
        let w = cfg.window_size as f64;
        let block = 24.0 * n * c * c + 36.0 * n * c; // linears + two depthwise convs
        total += cfg.depths[s] as f64 * (2.0 * block + 4.0 * n * w * w * c + 4.0 * n * c * 32.0);
        cin = cfg.embed_dim[s];
    }
    total + 2.0 * (hw * hw + 1) as f64 * cin as f64 * cfg.projection_dim as f64
}

/// `fvl-wgpu bench vision`: DaViT + image head at the real sizes with random weights.
pub fn vision(
    args: &DeviceArgs,
    config: &str,
    size: usize,
    precision: Option<super::Precision>,
) -> Result<()> {
    let cfg = florence2_vision_config(config)?;
    let gpu = args.open()?;
    let dtype = super::ModelArgs::dtype_for(precision, &gpu);
    eprintln!("measuring ceilings…");
    let copy = copy_bandwidth(&gpu, (128u64 << 20).min(gpu.limits.max_buffer_size / 2))?;
    let ceiling = linear_row(&gpu, 1024, 1024, 1024, DType::F32)?;
    let best_matmul = ceiling.flops / ceiling.seconds;

    let bar = super::progress(
        VisionTower::tensor_count(&cfg),
        &format!("random {config} weights"),
    );
    let mut weight_bytes = 0u64;
    let counted = std::cell::Cell::new(0u64);
    let src = |_: &str, shape: &[usize]| {
        bar.inc(1);
        let n: usize = shape.iter().product();
        counted.set(counted.get() + n as u64);
        Ok(noise(n).iter().map(|v| v * 0.02).collect())
    };
    let tower = VisionTower::load(&gpu, &src, &cfg, dtype)?;
    bar.finish_and_clear();
    weight_bytes += counted.get() * if dtype == DType::F32 { 4 } else { 2 };

    let pixels = input(&gpu, &[3, size, size], DType::F32)?;
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let out = tower.forward(&mut g, p)?;
    g.keep(out.features);
    let exe = g.build()?;
    eprintln!(
        "{} dispatches, arena {} MiB; warm-up run…",
        exe.dispatches(),
        exe.arena_bytes >> 20
    );
    exe.run(&gpu, &[])?;
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let t = Instant::now();
        exe.run(&gpu, &[])?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    if let Some(profile) = exe.profile(&gpu, &[])? {
        let total: f64 = profile.iter().map(|k| k.1).sum();
        eprintln!(
            "GPU time by kernel (timestamps, one replay; {:.1} ms in all):",
            total * 1e3
        );
        for (label, t, n) in &profile {
            eprintln!(
                "  {label:<28} {:>10.1} ms {:>5.1}%  {n} dispatches",
                t * 1e3,
                100.0 * t / total
            );
        }
    }
    let flops = vision_flops(&cfg, size);
    let gflops = flops / best / 1e9;
    let peak = weight_bytes + exe.arena_bytes + pixels.layout.bytes();
    let summary = serde_json::json!({
        "device": gpu.describe(), "config": config, "image_size": size, "precision": dtype.name(),
        "ms_per_image": best * 1e3, "gflop": flops / 1e9, "gflops": gflops,
        "best_matmul_gflops": best_matmul / 1e9, "fraction_of_best_matmul": gflops * 1e9 / best_matmul,
        "copy_gb_per_s": copy / 1e9, "dispatches": exe.dispatches(), "submits_per_image": 1,
        "weight_bytes": weight_bytes, "arena_bytes": exe.arena_bytes, "peak_gpu_bytes": peak,
    });
    eprintln!(
        "DaViT-{config} + image head at {size}²: {:.1} ms/image, {:.1} GFLOP → {:.2} GFLOP/s = {:.0}% of the best matmul ({:.2} GFLOP/s)",
        best * 1e3,
        flops / 1e9,
        gflops,
        100.0 * gflops * 1e9 / best_matmul,
        best_matmul / 1e9
    );
    eprintln!(
        "peak GPU memory ≈ {} MiB = weights {} MiB + activations arena {} MiB (+ input); {} dispatches, 1 submit",
        peak >> 20,
        weight_bytes >> 20,
        exe.arena_bytes >> 20,
        exe.dispatches()
    );
    if args.json {
        println!("{summary}");
    }
    Ok(())
}
