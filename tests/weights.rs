//! Checkpoint loading on the committed fixtures: every folder opens, and bad input fails with
//! a message that names the thing at fault.

use std::path::{Path, PathBuf};

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
