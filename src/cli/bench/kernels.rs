//! `fvl-wgpu bench kernels`: each kernel family at a few real sizes.

use fvl_wgpu::gpu::{DType, Tensor};
use fvl_wgpu::ops::attention::{self, Attention};
use fvl_wgpu::ops::conv::{self, Conv2d, ConvInput};
use fvl_wgpu::ops::eltwise::{self, Unary};
use fvl_wgpu::ops::{channel_attn, embed, norm, reduce, sample, softmax, window, RunValue, View};
use fvl_wgpu::Result;

use super::{copy_bandwidth, input, linear_row, time, Row};
use crate::cli::DeviceArgs;

pub fn kernels(args: &DeviceArgs, quick: bool, full: bool, only: Option<&str>) -> Result<()> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let gpu = args.open()?;
    // The full sizes take many minutes on a CPU adapter: quick ones unless asked.
    let light = gpu.is_software() && !quick && !full;
    if light {
        eprintln!("CPU adapter: light sizes --quick (the full sizes take many minutes here; ask for them with --full)");
    }
    let quick = quick || light;
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
            window: None,
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
            sample::argmax(g, li, sample::Row::all(0), ii, RunValue::Fixed(0))
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
                "device": gpu.describe(), "quick": quick, "light_defaults": light,
                "ceilings": {"copy_gb_per_s": copy / 1e9, "best_matmul_gflops": best_matmul / 1e9},
                "kernels": json_rows,
            })
        );
    }
    Ok(())
}
