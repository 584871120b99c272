//! `fvl-wgpu bench vision|florence2`: whole model paths at the real sizes with random weights
//! in memory (no download).

use std::time::Instant;

use fvl_wgpu::gpu::{DType, Gpu, Graph};
use fvl_wgpu::model::bart::Bart;
use fvl_wgpu::model::florence2::VisionTower;
use fvl_wgpu::model::florence_vl::{Fusion, Projector};
use fvl_wgpu::model::generate::{Limits, Pick, Prompt, Session};
use fvl_wgpu::model::layers::Linear;
use fvl_wgpu::model::llama::{Llama, LlamaConfig};
use fvl_wgpu::weights::florence2::{TextConfig, VisionConfig};
use fvl_wgpu::{Error, Result};

use super::{best_run, copy_bandwidth, input, linear_row, noise, Florence2Bench, Sizes};
use crate::cli::{phase, progress, DeviceArgs};

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
pub fn vision(args: &Florence2Bench) -> Result<()> {
    let (gpu, config, size, dtype, light) = args.open()?;
    let cfg = florence2_vision_config(&config)?;
    eprintln!("DaViT-{config} + image head at {size}², {} weights", dtype.name());
    let (copy, best_matmul) = ceilings(&gpu)?;

    let bar = progress(
        VisionTower::tensor_count(&cfg),
        &format!("random {config} weights"),
    );
    let mut weight_bytes = 0u64;
    let counted = std::cell::Cell::new(0u64);
    let src = |_: &str, shape: &[usize]| {
        bar.inc(1);
        let n: usize = shape.iter().product();
        counted.set(counted.get() + n as u64);
        Ok(random_weights(n))
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
    let timing = phase("two timed runs and a profiled one");
    let best = best_run(&gpu, &exe, 2)?;
    let profile = exe.profile(&gpu, &[])?;
    drop(timing);
    print_profile(profile);
    let flops = vision_flops(&cfg, size);
    let gflops = flops / best / 1e9;
    let peak = weight_bytes + exe.arena_bytes + pixels.layout.bytes();
    let summary = serde_json::json!({
        "device": gpu.describe(), "config": config, "image_size": size, "precision": dtype.name(),
        "light_defaults": light,
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
    if args.device.json {
        println!("{summary}");
    }
    Ok(())
}

/// Florence-2 language-model configs at the real sizes (spec §5.1): `base` or `large`.
fn florence2_text_config(name: &str) -> Result<TextConfig> {
    let (d, layers, heads, ffn, max_pos) = match name {
        "base" => (768, 6, 12, 3072, 1024),
        "large" => (1024, 12, 16, 4096, 4096),
        other => {
            return Err(Error::input(format!(
                "--config {other:?}: expected base or large"
            )))
        }
    };
    let tc = serde_json::json!({
        "d_model": d, "encoder_layers": layers, "decoder_layers": layers,
        "encoder_attention_heads": heads, "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn, "vocab_size": 51289,
        "max_position_embeddings": max_pos,
    });
    TextConfig::from_json(&tc, &serde_json::json!({}), &serde_json::Value::Null)
        .map_err(Error::Input)
}

/// `fvl-wgpu bench florence2`: the BART encoder on Florence-VL's three prompts as one batch
/// over the image rows of a `size`² image (577 for 768²), and greedy decoder tokens/s, random
/// weights.
pub fn florence2(args: &Florence2Bench) -> Result<()> {
    let (gpu, config, size, dtype, light) = args.open()?;
    let cfg = florence2_text_config(&config)?;
    // DaViT's grid is the image side / 32, plus the mean token.
    let (d, n, len) = (cfg.d_model, (size / 32).pow(2) + 1, 14);
    eprintln!(
        "Florence-2-{config} language model, {n} image rows ({size}²), {} weights",
        dtype.name()
    );
    let (copy, best_matmul) = ceilings(&gpu)?;

    let src = |_: &str, shape: &[usize]| Ok(random_weights(shape.iter().product()));
    let loading = phase(format!("random {config} weights"));
    let bart = Bart::load(&gpu, &src, &cfg, dtype, true)?;
    drop(loading);
    let v = input(&gpu, &[n, d], DType::F32)?;
    let prompts: Vec<u32> = (0..3 * len as u32).map(|i| 3 + i * 7919 % 50000).collect();
    let ids = fvl_wgpu::gpu::Tensor::from_u32(&gpu, &[3, len], &prompts, "prompts")?;

    // Encoder: three prompts in one pass over the weights.
    let mut g = Graph::new(&gpu);
    let (vi, ii) = (g.external(&v), g.external(&ids));
    let enc = bart.encode(&mut g, vi, ii)?;
    g.keep(enc);
    let encoding = phase(format!("encoder, 3 prompts × {} tokens, 3 runs", n + len));
    let exe = g.build()?;
    exe.run(&gpu, &[])?;
    let enc_s = best_run(&gpu, &exe, 2)?;
    drop(encoding);
    let l = (n + len) as f64;
    let (df, ff) = (d as f64, cfg.encoder_ffn_dim as f64);
    let enc_flops = 3.0
        * cfg.encoder_layers as f64
        * (8.0 * l * df * df + 4.0 * l * df * ff + 4.0 * l * l * df);

    // Decoder: greedy steps after one prompt's prefill; the prefill is timed apart.
    let steps = 32;
    let decoding = phase(format!("decoder, {steps} greedy steps"));
    let t = Instant::now();
    bart.prefill(&gpu, &v, &prompts[..len], steps)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let seq = bart.greedy(&gpu, &v, &prompts[..len], steps)?;
    let decode_s = (t.elapsed().as_secs_f64() - prefill_s).max(1e-9);
    drop(decoding);
    let tokens = seq.len() - 1;
    let wbytes = if dtype == DType::F32 { 4.0 } else { 2.0 };
    // Per token: self-attention q,k,v,o and cross q,o (cross k,v are cached), FFN, LM head.
    let per_token = (cfg.decoder_layers as f64 * (6.0 * df * df + 2.0 * df * ff)
        + cfg.vocab_size as f64 * df)
        * wbytes;
    let tok_s = tokens as f64 / decode_s;
    let gflops = enc_flops / enc_s / 1e9;
    eprintln!(
        "Florence-2-{config} encoder, 3 prompts × {} tokens: {:.1} ms, {:.1} GFLOP → {:.2} GFLOP/s = {:.0}% of the best matmul ({:.2} GFLOP/s)",
        n + len,
        enc_s * 1e3,
        enc_flops / 1e9,
        gflops,
        100.0 * gflops * 1e9 / best_matmul,
        best_matmul / 1e9
    );
    eprintln!(
        "decoder: {tokens} greedy tokens at {tok_s:.1} tokens/s; {:.1} MB of weights per token → {:.2} GB/s = {:.0}% of copy bandwidth ({:.1} GB/s)",
        per_token / 1e6,
        per_token * tok_s / 1e9,
        100.0 * per_token * tok_s / copy,
        copy / 1e9
    );
    if args.device.json {
        println!(
            "{}",
            serde_json::json!({
                "device": gpu.describe(), "config": config, "image_size": size, "image_rows": n,
                "precision": dtype.name(), "light_defaults": light,
                "encoder_ms": enc_s * 1e3, "encoder_gflop": enc_flops / 1e9, "encoder_gflops": gflops,
                "best_matmul_gflops": best_matmul / 1e9, "fraction_of_best_matmul": gflops * 1e9 / best_matmul,
                "decoder_tokens": tokens, "decoder_tokens_per_s": tok_s,
                "decoder_bytes_per_token": per_token, "decoder_gb_per_s": per_token * tok_s / 1e9,
                "copy_gb_per_s": copy / 1e9, "fraction_of_copy_bandwidth": per_token * tok_s / copy,
            })
        );
    }
    Ok(())
}

/// Decoder configs at the real sizes: Llama-3.2-1B, Llama-3.1-8B (+ Florence-VL's pad token)
/// and Phi-3.5-mini (Florence-VL 3B: fused matrices, LongRoPE, 32064 rows for 32011 tokens).
fn llama_config(name: &str) -> Result<LlamaConfig> {
    let (hidden, layers, heads, kv, inter, vocab, tied) = match name {
        "llama-1b" => (2048, 16, 32, 8, 8192, 128256, true),
        "llama-8b" => (4096, 32, 32, 8, 14336, 128257, false),
        "phi3.5-mini" => (3072, 32, 32, 32, 8192, 32064, false),
        other => {
            return Err(Error::input(format!(
                "--config {other:?}: expected llama-1b, llama-8b or phi3.5-mini"
            )))
        }
    };
    let mut c = serde_json::json!({
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "intermediate_size": inter, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072, "tie_word_embeddings": tied,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    });
    if name.starts_with("phi") {
        // Factor values do not change the work; the lists have head_dim/2 = 48 entries.
        let long: Vec<f64> = (0..48).map(|i| 1.0 + i as f64).collect();
        c["model_type"] = "phi3".into();
        c["original_max_position_embeddings"] = 4096.into();
        c["rope_parameters"] = serde_json::json!({"rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": vec![1.0; 48], "long_factor": long});
    }
    LlamaConfig::from_json(&c, vocab)
}

/// Bytes one weight takes in `dtype` (q8/q4 include the f16 block scale).
fn bytes_per_weight(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::U32 => 4.0,
        DType::F16 => 2.0,
        DType::Q8 => 34.0 / 32.0,
        DType::Q4 => 18.0 / 32.0,
    }
}

/// `fvl-wgpu bench decode`: Llama prefill and decode at the real sizes, random weights.
pub fn decode(
    args: &DeviceArgs,
    config: &str,
    quant: DType,
    prompt: Option<usize>,
    tokens: Option<usize>,
) -> Result<()> {
    let cfg = llama_config(config)?;
    let gpu = args.open()?;
    let mut sizes = Sizes::new(&gpu);
    let prompt = sizes.pick("--prompt", prompt, 64, 16);
    let tokens = sizes.pick("--tokens", tokens, 16, 4);
    sizes.announce();
    eprintln!("measuring copy bandwidth…");
    let copy = copy_ceiling(&gpu)?;
    let bar = progress(
        Llama::tensor_count(&cfg),
        &format!("random {config} weights as {}", quant.name()),
    );
    let src = |_: &str, shape: &[usize]| {
        bar.inc(1);
        Ok(random_weights(shape.iter().product()))
    };
    let (h, inter, vocab, layers) = (cfg.hidden, cfg.intermediate, cfg.vocab, cfg.layers);
    let per_layer =
        (h * (cfg.heads * cfg.head_dim) * 2 + h * cfg.kv_dim() * 2 + 3 * h * inter) as f64;
    let llama = Llama::load(&gpu, &src, &|_: &str, _, _| Ok(None), cfg, quant)?;
    bar.finish_and_clear();
    let weights = (layers as f64 * per_layer + (vocab * h) as f64) * bytes_per_weight(quant);

    let mut session = Session::new(&gpu, &llama, prompt + 2 * tokens + 2, Pick::Greedy, 0)?;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| 1000 + i * 37 % 100000).collect();
    let prefilling = phase(format!("prefill {prompt} tokens"));
    let t = Instant::now();
    session.prefill(Prompt::Ids(&ids), false)?;
    let prefill_s = t.elapsed().as_secs_f64();
    drop(prefilling);
    let decoding = phase(format!(
        "decoding {tokens} tokens one step at a time, then {tokens} queued ahead"
    ));
    // The prefill's graph stays alive until the first decode: the peak of the session.
    let (kv_bytes, arena_bytes) = session.gpu_bytes();
    // Warm-up, then one step at a time (submit, wait, read back), then each step queued
    // before the previous id is read back; the device's default mode is the headline.
    session.decode(None)?;
    let t = Instant::now();
    let mut id = 0;
    for _ in 1..tokens {
        id = session.decode(None)?;
    }
    let unqueued_s = t.elapsed().as_secs_f64() / (tokens - 1).max(1) as f64;
    let queue_by_default = session.queue_ahead;
    session.queue_ahead = true;
    let queued_s = 1.0 / generate_tokens_per_s(&mut session, id, tokens)?;
    let decode_s = if queue_by_default {
        queued_s
    } else {
        unqueued_s
    };
    drop(decoding);
    print_profile(session.profile_decode()?);
    // Per token: every weight once (one embedding row aside) and the KV cache so far.
    let kv = (2 * llama.cfg.layers * llama.cfg.kv_dim() * 4 * (prompt + tokens / 2)) as f64;
    let bytes = weights + kv;
    let gbs = bytes / decode_s / 1e9;
    eprintln!(
        "{config} {}: prefill {prompt} tokens in {:.1} ms ({:.1} tokens/s); decode {:.2} tokens/s ({:.2} one step at a time, {:.2} queued ahead; this device's default: {})",
        quant.name(),
        prefill_s * 1e3,
        prompt as f64 / prefill_s,
        1.0 / decode_s,
        1.0 / unqueued_s,
        1.0 / queued_s,
        if queue_by_default { "queued" } else { "one at a time" }
    );
    eprintln!(
        "decode reads {:.1} MB/token → {gbs:.2} GB/s = {:.0}% of copy bandwidth ({:.1} GB/s); {} dispatches, 1 submit per token; peak GPU memory ≈ {:.0} MB = weights {:.0} MB + KV cache {:.0} MB + activations {:.0} MB",
        bytes / 1e6,
        100.0 * gbs * 1e9 / copy,
        copy / 1e9,
        session.decode_dispatches(),
        (weights + (kv_bytes + arena_bytes) as f64) / 1e6,
        weights / 1e6,
        kv_bytes as f64 / 1e6,
        arena_bytes as f64 / 1e6
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "device": gpu.describe(), "config": config, "quant": quant.name(),
                "light_defaults": sizes.light(), "decode_tokens": tokens,
                "prefill_tokens": prompt, "prefill_tokens_per_s": prompt as f64 / prefill_s,
                "decode_tokens_per_s": 1.0 / decode_s, "decode_tokens_per_s_one_step_at_a_time": 1.0 / unqueued_s, "decode_tokens_per_s_queued_ahead": 1.0 / queued_s, "bytes_per_token": bytes,
                "gb_per_s": gbs, "copy_gb_per_s": copy / 1e9, "fraction_of_copy_bandwidth": gbs * 1e9 / copy,
                "dispatches_per_token": session.decode_dispatches(), "submits_per_token": 1,
                "weight_bytes": weights, "kv_cache_bytes": kv_bytes, "activation_bytes": arena_bytes,
                "peak_gpu_bytes": weights + (kv_bytes + arena_bytes) as f64,
            })
        );
    }
    Ok(())
}

/// The size flags of `bench e2e` as given (`None`: the default for the adapter).
pub struct E2e {
    /// Florence-2 tower and encoder: base or large.
    pub vision: Option<String>,
    /// Language model: llama-1b, llama-8b or phi3.5-mini.
    pub llm: Option<String>,
    /// Square image side in pixels.
    pub size: Option<usize>,
    /// Decode steps to time.
    pub tokens: Option<usize>,
}

/// `fvl-wgpu bench e2e`: Florence-VL at real sizes with random weights — vision + fusion (one
/// submit), prefill of the spliced prompt from embeddings, decode — time to first token split
/// into its parts, decode tokens/s, memory against weights + KV cache.
pub fn e2e(args: &DeviceArgs, given: E2e, quant: DType) -> Result<()> {
    let gpu = args.open()?;
    let mut sizes = Sizes::new(&gpu);
    let vision = sizes.pick("--vision", given.vision, "large".into(), "base".into());
    let llm = sizes.pick("--llm", given.llm, "llama-8b".into(), "llama-1b".into());
    let size = sizes.pick("--size", given.size, 768, 384);
    let tokens = sizes.pick("--tokens", given.tokens, 8, 4);
    sizes.announce();
    let (vcfg, tcfg, lcfg) = (
        florence2_vision_config(&vision)?,
        florence2_text_config(&vision)?,
        llama_config(&llm)?,
    );
    let side = gpu.default_dtype();
    let bytes = std::cell::Cell::new(0u64);
    let src = |_: &str, shape: &[usize]| {
        let n: usize = shape.iter().product();
        bytes.set(bytes.get() + n as u64);
        Ok(random_weights(n))
    };
    let loading = phase(format!(
        "random weights: DaViT-{vision}, Florence-2-{vision} encoder, projector, {llm} as {}",
        quant.name()
    ));
    let tower = VisionTower::load(&gpu, &src, &vcfg, side)?;
    let bart = Bart::load(&gpu, &src, &tcfg, side, false)?;
    let (d, h) = (tcfg.d_model, lcfg.hidden);
    let projector = Projector {
        layers: (0..3)
            .map(|k| {
                Linear::load(
                    &gpu,
                    &src,
                    &Projector::prefix(k),
                    h,
                    if k == 0 { 4 * d } else { h },
                    true,
                    side,
                )
            })
            .collect::<Result<_>>()?,
    };
    let side_bytes = bytes.get() * if side == DType::F32 { 4 } else { 2 };
    let llama = Llama::load(&gpu, &src, &|_: &str, _, _| Ok(None), lcfg, quant)?;
    let prompts: Vec<u32> = (0..42u32).map(|i| 3 + i * 7919 % 50000).collect();
    let prompts = fvl_wgpu::gpu::Tensor::from_u32(&gpu, &[3, 14], &prompts, "prompts")?;
    drop(loading);

    // Vision, then fusion, each its own graph here so the two can be timed apart (`infer`
    // records them as one).
    let pixels = input(&gpu, &[3, size, size], DType::F32)?;
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let v = tower.forward(&mut g, p)?.features;
    g.keep(v);
    let vision_exe = g.build()?;
    let mut g = Graph::new(&gpu);
    let vi = g.external(vision_exe.tensor(v));
    let fusion = Fusion {
        tower: &tower,
        bart: &bart,
        projector: &projector,
        prompts: &prompts,
    };
    let features = fusion.fuse(&mut g, vi, true)?;
    g.keep(features.projected);
    let fusion_exe = g.build()?;
    let timed = |exe: &fvl_wgpu::gpu::Executable| -> Result<(f64, f64)> {
        exe.run(&gpu, &[])?; // warm-up: pipeline compilation
        let t = Instant::now();
        exe.run(&gpu, &[])?;
        let wall = t.elapsed().as_secs_f64();
        let busy = exe
            .profile(&gpu, &[])?
            .map_or(f64::NAN, |p| p.iter().map(|k| k.1).sum());
        Ok((wall, busy))
    };
    let seeing = phase(format!("vision and fusion at {size}², warm-up and timed runs"));
    let (vision_s, vision_busy) = timed(&vision_exe)?;
    let (fusion_s, fusion_busy) = timed(&fusion_exe)?;
    drop(seeing);
    let busy = vision_busy + fusion_busy;
    let rows = fusion_exe.tensor(features.projected).shape()[0];

    // The prompt: ~60 text tokens around the image rows, as embeddings.
    let positions = rows + 60;
    let embeds = input(&gpu, &[positions, h], DType::F32)?;
    let mut session = Session::new(&gpu, &llama, positions + tokens + 1, Pick::Greedy, 0)?;
    let prefilling = phase(format!("prefill {positions} positions"));
    let t = Instant::now();
    let first = session.prefill(Prompt::Embeddings(&embeds), false)?;
    let prefill_s = t.elapsed().as_secs_f64();
    drop(prefilling);
    let decoding = phase(format!("decoding {tokens} tokens"));
    let decode_tps = generate_tokens_per_s(&mut session, first, tokens + 1)?;
    drop(decoding);
    let kv = (2 * llama.cfg.layers * llama.cfg.kv_dim() * 4 * (positions + tokens + 1)) as f64;
    let llm_weights = llama.cfg.layers as f64
        * ((h * (llama.cfg.heads * llama.cfg.head_dim) * 2
            + h * llama.cfg.kv_dim() * 2
            + 3 * h * llama.cfg.intermediate) as f64)
        * bytes_per_weight(quant)
        + (2 * llama.cfg.vocab * h) as f64 * bytes_per_weight(quant);
    let total_weights = side_bytes as f64 + llm_weights;
    let arenas = vision_exe.arena_bytes + fusion_exe.arena_bytes;
    eprintln!(
        "time to first token {:.1} s = vision {:.1} s + fusion {:.1} s ({:.0}% GPU-busy by timestamps) + prefill of {positions} positions {:.1} s; decode {decode_tps:.2} tokens/s",
        vision_s + fusion_s + prefill_s,
        vision_s,
        fusion_s,
        100.0 * busy / (vision_s + fusion_s),
        prefill_s
    );
    eprintln!(
        "weights ≈ {:.0} MB (vision side {:.0} MB as {}, {llm} {:.0} MB as {}) + KV cache {:.0} MB + activation arenas {:.0} MB",
        total_weights / 1e6,
        side_bytes as f64 / 1e6,
        side.name(),
        llm_weights / 1e6,
        quant.name(),
        kv / 1e6,
        arenas as f64 / 1e6
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "device": gpu.describe(), "vision": vision, "llm": llm, "quant": quant.name(), "image_size": size,
                "decode_tokens": tokens, "light_defaults": sizes.light(),
                "image_rows": rows, "prompt_positions": positions,
                "ttft_ms": (vision_s + fusion_s + prefill_s) * 1e3, "vision_ms": vision_s * 1e3,
                "fusion_ms": fusion_s * 1e3, "gpu_busy_fraction": busy / (vision_s + fusion_s),
                "prefill_ms": prefill_s * 1e3, "decode_tokens_per_s": decode_tps,
                "weight_bytes": total_weights, "kv_cache_bytes": kv, "arena_bytes": arenas,
            })
        );
    }
    Ok(())
}

/// Prints a graph's GPU time by kernel (from [`fvl_wgpu::gpu::Executable::profile`]).
fn print_profile(profile: Option<Vec<(String, f64, usize)>>) {
    let Some(profile) = profile else { return };
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

/// Decode speed of `Session::generate` from `first` over `tokens` ids, with no stop id: the
/// loop `generate` and `infer` run.
fn generate_tokens_per_s(session: &mut Session<Llama>, first: u32, tokens: usize) -> Result<f64> {
    let limits = Limits {
        max_new: tokens,
        reserve: 0,
        keep_stop: false,
    };
    let gen = session.generate(first, &limits, &|_| false, &mut |_| Ok(true))?;
    Ok(gen.decode_tokens_per_s)
}

/// `n` random weights of the magnitude trained ones have (|w| ≤ 0.02), for benches.
fn random_weights(n: usize) -> Vec<f32> {
    noise(n).iter().map(|v| v * 0.02).collect()
}

/// Copy bandwidth (bytes/s) over 128 MiB (or half the largest buffer): the decode ceiling.
fn copy_ceiling(gpu: &Gpu) -> Result<f64> {
    copy_bandwidth(gpu, (128u64 << 20).min(gpu.limits.max_buffer_size / 2))
}

/// The ceilings the model benches report against, measured on `gpu` now: (copy bytes/s,
/// our best f32 matmul FLOP/s at 1024³).
fn ceilings(gpu: &Gpu) -> Result<(f64, f64)> {
    eprintln!("measuring ceilings…");
    let copy = copy_ceiling(gpu)?;
    let matmul = linear_row(gpu, 1024, 1024, 1024, DType::F32)?;
    Ok((copy, matmul.flops / matmul.seconds))
}
