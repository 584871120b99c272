//! Checkpoint loading and the Florence-2 name maps, on the committed fixtures: every folder
//! opens, the three layouts are told apart, the original and Florence-VL files hold exactly
//! the HF-native weights under their own names, and bad input fails with a message that names
//! the thing at fault.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fvl_wgpu::weights::florence2::{
    stored_names, Florence2Checkpoint, Florence2Layout, FINAL_LOGITS_BIAS,
};
use fvl_wgpu::weights::{Checkpoint, Dtype};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh copy of a fixture folder under the system temp dir, for tests that damage it.
fn temp_copy(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fvl-weights-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn err_of<T>(r: fvl_wgpu::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

#[test]
fn every_fixture_folder_opens() {
    // (folder, tensor count, dtype, a tensor and its shape)
    let cases = [
        (
            "florence2-a",
            273,
            Dtype::F32,
            "model.language_model.shared.weight",
            vec![1536, 32],
        ),
        (
            "florence2-b",
            0,
            Dtype::F16,
            "model.vision_tower.convs.0.conv.weight",
            vec![8, 3, 7, 7],
        ),
        (
            "florence2-a-original",
            0,
            Dtype::F32,
            "image_projection",
            vec![48, 32],
        ),
        (
            "florence2-b-original",
            0,
            Dtype::F16,
            "vision_tower.convs.3.proj.weight",
            vec![32, 24, 3, 3],
        ),
        (
            "florence-vl-tiny",
            301,
            Dtype::BF16,
            "model.mm_projector.encoder_mlp.0.weight",
            vec![64, 128],
        ),
        (
            "llama-a",
            0,
            Dtype::BF16,
            "model.embed_tokens.weight",
            vec![512, 64],
        ),
        ("llama-b", 0, Dtype::F32, "lm_head.weight", vec![517, 48]),
    ];
    for (dir, count, dtype, name, shape) in cases {
        let ckpt = Checkpoint::open(fixture(dir)).unwrap();
        if count > 0 {
            assert_eq!(ckpt.names().count(), count, "{dir}");
        }
        assert!(ckpt.config().is_object());
        let (s, dt) = ckpt.info(name).unwrap();
        assert_eq!((s, dt), (&shape[..], dtype), "{dir} {name}");
        let values = ckpt.load_f32(name, &shape).unwrap();
        assert_eq!(values.len(), shape.iter().product::<usize>());
        assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|&v| v != 0.0));
    }
    // Sharded: tensors come from all five shards.
    let llama = Checkpoint::open(fixture("llama-a")).unwrap();
    assert!(
        llama.contains("model.norm.weight")
            && llama.contains("model.layers.2.mlp.down_proj.weight")
    );
    assert!(!llama.contains("lm_head.weight"), "llama-a ties lm_head");
}

#[test]
fn layouts_are_detected() {
    let cases = [
        ("florence2-a", Florence2Layout::HfNative),
        ("florence2-b", Florence2Layout::HfNative),
        ("florence2-a-original", Florence2Layout::Original),
        ("florence2-b-original", Florence2Layout::Original),
        ("florence-vl-tiny", Florence2Layout::FlorenceVl),
    ];
    for (dir, layout) in cases {
        let ckpt = Checkpoint::open(fixture(dir)).unwrap();
        assert_eq!(Florence2Layout::detect(&ckpt).unwrap(), layout, "{dir}");
        assert_eq!(
            Florence2Checkpoint::from_checkpoint(ckpt).unwrap().layout(),
            layout
        );
    }
    let msg = err_of(Florence2Checkpoint::open(fixture("llama-a")));
    assert_mentions(
        &msg,
        &[
            "not a Florence-2 checkpoint",
            "model.vision_tower.convs.0.conv.weight",
            "vision_tower.convs.0.proj.weight",
            "model.vision_tower.vision_tower.vision_tower.convs.0.proj.weight",
        ],
    );
}

#[test]
fn configs_parse_the_same_from_both_styles() {
    for m in ["a", "b"] {
        let native = Florence2Checkpoint::open(fixture(&format!("florence2-{m}"))).unwrap();
        let orig = Florence2Checkpoint::open(fixture(&format!("florence2-{m}-original"))).unwrap();
        let (a, b) = (native.vision(), orig.vision());
        assert_eq!(
            format!("{a:?}").replace("original_keys: false", ""),
            format!("{b:?}").replace("original_keys: true", "")
        );
        let (a, b) = (native.text(), orig.text());
        assert_eq!(
            (
                a.d_model,
                a.encoder_layers,
                a.decoder_layers,
                a.encoder_ffn_dim,
                a.decoder_ffn_dim
            ),
            (
                b.d_model,
                b.encoder_layers,
                b.decoder_layers,
                b.encoder_ffn_dim,
                b.decoder_ffn_dim
            )
        );
        assert_eq!(
            (
                a.bos_token_id,
                a.pad_token_id,
                a.eos_token_id,
                a.decoder_start_token_id
            ),
            (0, 1, 2, 2)
        );
        assert_eq!(
            (
                b.bos_token_id,
                b.pad_token_id,
                b.eos_token_id,
                b.decoder_start_token_id
            ),
            (0, 1, 2, 2)
        );
        assert_eq!(
            (a.activation_function.as_str(), a.scale_embedding),
            ("gelu", false)
        );
        // The real vocabulary is the stored embedding's: HF-native pads it to a multiple of 64.
        let (hf, orig_v) = if m == "a" { (1536, 1525) } else { (1664, 1658) };
        assert_eq!((a.vocab_size, b.vocab_size), (hf, orig_v));
    }
    let a = Florence2Checkpoint::open(fixture("florence2-a")).unwrap();
    let v = a.vision();
    assert_eq!(v.embed_dim, [16, 24, 32, 48]);
    assert_eq!(
        (v.num_heads.clone(), v.num_groups.clone(), v.depths.clone()),
        (vec![2, 3, 4, 6], vec![2, 3, 4, 6], vec![1, 1, 2, 1])
    );
    assert_eq!(
        (
            v.patch_size.clone(),
            v.patch_stride.clone(),
            v.patch_padding.clone()
        ),
        (vec![7, 3, 3, 3], vec![4, 2, 2, 2], vec![3, 1, 1, 1])
    );
    assert_eq!(v.patch_prenorm, [false, true, true, true]);
    assert_eq!(
        (
            v.window_size,
            v.projection_dim,
            v.max_pos_embeddings,
            v.max_temporal_embeddings
        ),
        (3, 32, 50, 100)
    );
    assert_eq!((v.mlp_ratio, v.in_channels, v.qkv_bias), (4.0, 3, true));
    let t = a.text();
    assert_eq!(
        (
            t.d_model,
            t.max_position_embeddings,
            t.encoder_attention_heads
        ),
        (32, 128, 4)
    );
}

/// Walks every canonical tensor of the HF-native model and finds it in `other` under each of
/// its stored names; `expect` turns a native value into the one `other` stores (identity, or
/// bf16 rounding). Returns the stored names visited.
fn compare_with_native(
    native: &Florence2Checkpoint,
    other: &Florence2Checkpoint,
    expect: impl Fn(f32) -> f32,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let real_vocab = other.text().vocab_size;
    for (canonical, shape) in native.canonical_tensors() {
        let want = native.load(&canonical, &shape).unwrap();
        let mut other_shape = shape.clone();
        if canonical == "model.language_model.shared.weight" {
            // HF-native appended `<image>` and zero rows to pad to a multiple of 64.
            other_shape[0] = real_vocab;
            let cut = real_vocab * shape[1];
            assert!(
                want[cut..].iter().all(|&v| v == 0.0),
                "padding rows are zero"
            );
        }
        let n = other_shape.iter().product::<usize>();
        let want: Vec<f32> = want[..n].iter().map(|&v| expect(v)).collect();
        // Through the canonical loader (transposes where needed) ...
        assert_eq!(
            other.load(&canonical, &other_shape).unwrap(),
            want,
            "{canonical}"
        );
        // ... and every stored copy of it (tied embeddings may be stored several times).
        let mut found = 0;
        for (name, transposed) in stored_names(other.layout(), &canonical).unwrap() {
            if !other.checkpoint().contains(&name) {
                continue;
            }
            let got = if transposed {
                other
                    .checkpoint()
                    .load_f32_transposed(&name, [other_shape[0], other_shape[1]])
            } else {
                other.checkpoint().load_f32(&name, &other_shape)
            };
            assert_eq!(got.unwrap(), want, "{canonical} stored as {name}");
            seen.insert(name);
            found += 1;
        }
        assert!(found > 0, "{canonical} is reachable");
    }
    seen
}

#[test]
fn original_layout_holds_the_native_weights() {
    for (m, tied) in [("a", 3), ("b", 1)] {
        let native = Florence2Checkpoint::open(fixture(&format!("florence2-{m}"))).unwrap();
        let orig = Florence2Checkpoint::open(fixture(&format!("florence2-{m}-original"))).unwrap();
        let mut seen = compare_with_native(&native, &orig, |v| v);
        let tied_names = stored_names(Florence2Layout::Original, "lm_head.weight").unwrap();
        let stored_tied = tied_names.iter().filter(|(n, _)| seen.contains(n)).count();
        assert_eq!(stored_tied, tied, "florence2-{m}-original tied copies");
        assert_eq!(
            orig.actual_name("model.multi_modal_projector.image_projection.weight")
                .unwrap(),
            Some(("image_projection".to_string(), true))
        );
        // Microsoft's logits bias: only in the original files, non-zero there.
        assert_eq!(native.actual_name(FINAL_LOGITS_BIAS).unwrap(), None);
        let v = orig.text().vocab_size;
        let bias = orig.load(FINAL_LOGITS_BIAS, &[1, v]).unwrap();
        assert!(bias.iter().any(|&b| b != 0.0));
        seen.insert(orig.actual_name(FINAL_LOGITS_BIAS).unwrap().unwrap().0);
        // Nothing in the original file is left unmapped.
        let all: BTreeSet<String> = orig.checkpoint().names().map(String::from).collect();
        assert_eq!(seen, all, "florence2-{m}-original: unmapped tensors");
    }
}

#[test]
fn florence_vl_tower_is_florence2_a_in_bf16() {
    let native = Florence2Checkpoint::open(fixture("florence2-a")).unwrap();
    let fvl = Florence2Checkpoint::open(fixture("florence-vl-tiny")).unwrap();
    // The LLaVA config has no Florence-2 section: it names the tower folder instead.
    assert!(fvl
        .config_path()
        .ends_with("florence2-a-original/config.json"));
    let round = |v: f32| half::bf16::from_f32(v).to_f32();
    let mut seen = compare_with_native(&native, &fvl, round);
    let v = fvl.text().vocab_size;
    assert_eq!(v, 1525);
    assert!(fvl
        .load(FINAL_LOGITS_BIAS, &[1, v])
        .unwrap()
        .iter()
        .all(|&b| b == 0.0));
    seen.insert(fvl.actual_name(FINAL_LOGITS_BIAS).unwrap().unwrap().0);
    let tower: BTreeSet<String> = fvl
        .checkpoint()
        .names()
        .filter(|n| n.starts_with("model.vision_tower.vision_tower."))
        .map(String::from)
        .collect();
    assert_eq!(seen, tower, "florence-vl-tiny: unmapped tower tensors");
}

#[test]
fn unknown_canonical_and_absent_tensors_are_named() {
    let native = Florence2Checkpoint::open(fixture("florence2-a")).unwrap();
    let msg = err_of(native.load(FINAL_LOGITS_BIAS, &[1, 1536]));
    assert_mentions(&msg, &["final_logits_bias", "HfNative"]);
    let msg = err_of(native.load("model.vision_tower.convs.0.proj.weight", &[1]));
    assert_mentions(
        &msg,
        &[
            "model.vision_tower.convs.0.proj.weight",
            "not a Florence-2 tensor name",
        ],
    );
    let msg = err_of(native.checkpoint().load_f32("no.such.tensor", &[1]));
    assert_mentions(&msg, &["no.such.tensor", "florence2-a"]);
    // Transposed loads report the stored shape and what was asked for.
    let orig = Florence2Checkpoint::open(fixture("florence2-a-original")).unwrap();
    let msg = err_of(orig.load(
        "model.multi_modal_projector.image_projection.weight",
        &[32, 40],
    ));
    assert_mentions(
        &msg,
        &[
            "image_projection: shape [48, 32]",
            "expected [40, 32]",
            "[32, 40] after transposing",
        ],
    );
}

#[test]
fn wrong_shape_names_tensor_file_and_both_shapes() {
    let ckpt = Checkpoint::open(fixture("florence2-a")).unwrap();
    let msg = err_of(ckpt.load_f32("model.vision_tower.convs.0.conv.weight", &[32, 3, 7, 7]));
    assert_eq!(
        msg,
        "model.vision_tower.convs.0.conv.weight: shape [16, 3, 7, 7] in model.safetensors, expected [32, 3, 7, 7]"
    );
}

#[test]
fn missing_shard_is_named() {
    let dir = temp_copy("llama-a", "missing-shard");
    std::fs::remove_file(dir.join("model-00003-of-00005.safetensors")).unwrap();
    let msg = err_of(Checkpoint::open(&dir));
    assert_mentions(
        &msg,
        &[
            "model.safetensors.index.json",
            "model-00003-of-00005.safetensors",
            "do not exist",
        ],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn index_entry_absent_from_its_shard_names_both() {
    let dir = temp_copy("llama-a", "bad-index");
    let path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00005.safetensors".into();
    std::fs::write(&path, index.to_string()).unwrap();
    let msg = err_of(Checkpoint::open(&dir));
    assert_mentions(
        &msg,
        &["model-00001-of-00005.safetensors", "model.norm.weight"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_and_corrupt_files_are_errors_not_panics() {
    let dir = temp_copy("florence2-b", "corrupt");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        (
            "cut in the data",
            bytes[..bytes.len() - 100].to_vec(),
            &["model.safetensors", "truncated"],
        ),
        (
            "cut in the header",
            bytes[..8 + header_len / 2].to_vec(),
            &["model.safetensors", "header length", "past the end"],
        ),
        (
            "cut in the length",
            bytes[..5].to_vec(),
            &["model.safetensors", "too short"],
        ),
        (
            "header not JSON",
            {
                let mut b = bytes.clone();
                b[8..16].copy_from_slice(b"garbage!");
                b
            },
            &["model.safetensors", "not valid JSON"],
        ),
    ];
    for (what, content, parts) in cases {
        std::fs::write(&path, content).unwrap();
        let msg = err_of(Checkpoint::open(&dir));
        assert_mentions(&msg, parts);
        eprintln!("{what}: {msg}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn config_json_problems_name_the_file() {
    let dir = temp_copy("llama-b", "config");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert_mentions(
        &err_of(Checkpoint::open(&dir)),
        &["config.json", "invalid JSON"],
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_mentions(&err_of(Checkpoint::open(&dir)), &["config.json"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let dir = std::env::temp_dir().join(format!("fvl-weights-{}-i32", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let data: Vec<u8> = [1i32, 2, 3, 4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2, 2], &data).unwrap();
    safetensors::serialize_to_file([("ids", view)], None, &dir.join("model.safetensors")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_eq!(ckpt.info("ids").unwrap(), (&[2usize, 2][..], Dtype::I32));
    assert_mentions(&err_of(ckpt.load_f32("ids", &[2, 2])), &["ids", "I32"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Copies a Florence-2 fixture, edits its config.json and returns the open error.
fn open_with_config_edit(name: &str, tag: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let dir = temp_copy(name, tag);
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let msg = err_of(Florence2Checkpoint::open(&dir));
    std::fs::remove_dir_all(dir).unwrap();
    msg
}

#[test]
fn config_that_does_not_fit_the_weights_names_field_and_tensor() {
    let msg = open_with_config_edit("florence2-a", "dim", |c| {
        c["vision_config"]["embed_dim"][1] = 27.into()
    });
    assert_mentions(&msg, &["config.json", "vision_config.embed_dim[1] = 27 but model.vision_tower.convs.1.conv.weight has 24 output channels"]);
    let msg = open_with_config_edit("florence2-a-original", "dim-orig", |c| {
        c["vision_config"]["dim_embed"][3] = 36.into()
    });
    assert_mentions(&msg, &["vision_config.dim_embed[3] = 36 but vision_tower.convs.3.proj.weight has 48 output channels"]);
    let msg = open_with_config_edit("florence2-a", "depth", |c| {
        c["vision_config"]["depths"][2] = 1.into()
    });
    assert_mentions(&msg, &["vision_config.depths[2] = 1 but the checkpoint also has model.vision_tower.blocks.2.1.spatial_block.conv1.weight"]);
    let msg = open_with_config_edit("florence2-b-original", "layers", |c| {
        c["text_config"]["decoder_layers"] = 4.into()
    });
    assert_mentions(&msg, &["text_config.decoder_layers = 4 but the checkpoint has no language_model.model.decoder.layers.3.fc1.weight"]);
    let msg = open_with_config_edit("florence2-a", "ffn", |c| {
        c["text_config"]["encoder_ffn_dim"] = 128.into()
    });
    assert_mentions(&msg, &["text_config.encoder_ffn_dim = 128 but model.language_model.encoder.layers.0.fc1.weight has 64 output channels"]);
    let msg = open_with_config_edit("florence2-a-original", "proj", |c| {
        c["vision_config"]["projection_dim"] = 40.into();
        c["text_config"]["d_model"] = 40.into();
    });
    assert_mentions(
        &msg,
        &["vision_config.projection_dim = 40 but image_projection has 32 output channels"],
    );
    let msg = open_with_config_edit("florence2-a", "heads", |c| {
        c["vision_config"]["num_heads"][0] = 3.into()
    });
    assert_mentions(
        &msg,
        &["vision_config.num_heads[0] = 3 does not divide vision_config.embed_dim[0] = 16"],
    );
}

#[test]
fn florence_vl_without_its_tower_config_says_where_it_looked() {
    // A copy has no sibling `florence2-a-original` folder for `mm_vision_tower` to name.
    let dir = temp_copy("florence-vl-tiny", "no-tower");
    let msg = err_of(Florence2Checkpoint::open(&dir));
    assert_mentions(
        &msg,
        &[
            "mm_vision_tower = \"florence2-a-original\"",
            "florence2-a-original/config.json",
        ],
    );
    std::fs::remove_dir_all(dir).unwrap();
}
