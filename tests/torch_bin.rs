//! PyTorch checkpoints (`pytorch_model.bin`, single and sharded) read without Python, on
//! fixtures written by `torch.save` (tools/make_torch_fixtures.py): every tensor equals what
//! torch holds for it (the `expected.safetensors` torch wrote from the same tensors), views
//! and tied names point into the mapped file, and each bad input fails with one clear line.

use std::path::{Path, PathBuf};

use fvl_wgpu::weights::torch::{archive_bytes, parse};
use fvl_wgpu::weights::{Checkpoint, Dtype};
use safetensors::SafeTensors;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(rel)
}

fn expected() -> Vec<u8> {
    std::fs::read(fixture("expected.safetensors")).unwrap()
}

/// Every tensor of `ck` equals torch's: same names, shapes, dtypes and bytes, and floats
/// load as torch's values.
fn assert_matches_torch(ck: &Checkpoint) {
    let bytes = expected();
    let want = SafeTensors::deserialize(&bytes).unwrap();
    let mut want_names: Vec<&str> = want.names();
    want_names.sort();
    assert_eq!(ck.names().collect::<Vec<_>>(), want_names);
    for name in &want_names {
        let w = want.tensor(name).unwrap();
        let (raw, dtype, shape) = ck.raw(name).unwrap();
        assert_eq!((dtype, shape), (w.dtype(), w.shape()), "{name}");
        assert_eq!(raw, w.data(), "{name}: bytes differ from torch's");
        let as_f32: Option<Vec<f32>> = match dtype {
            Dtype::F32 => Some(
                w.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::F16 => Some(
                w.data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
            Dtype::BF16 => Some(
                w.data()
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
            _ => None,
        };
        match as_f32 {
            Some(v) => {
                assert!(
                    v.iter().all(|x| x.abs() >= 0.49),
                    "{name}: fixture has zeros"
                );
                assert_eq!(ck.load_f32(name, shape).unwrap(), v, "{name}");
            }
            None => {
                let msg = ck.load_f32(name, shape).unwrap_err().to_string();
                assert!(msg.contains(name) && msg.contains("I64"), "{msg}");
            }
        }
    }
}

#[test]
fn single_file_equals_torch() {
    let ck = Checkpoint::open(fixture("single")).unwrap();
    assert_matches_torch(&ck);
    assert_eq!(ck.info("c.bf16").unwrap(), (&[7][..], Dtype::BF16));
    assert_eq!(ck.info("scalar").unwrap(), (&[][..], Dtype::F32));
}

#[test]
fn sharded_index_equals_torch() {
    let ck = Checkpoint::open(fixture("sharded")).unwrap();
    assert_matches_torch(&ck);
}

#[test]
fn views_and_tied_names_point_into_one_mapped_storage() {
    let ck = Checkpoint::open(fixture("single")).unwrap();
    let ptr = |n: &str| ck.raw(n).unwrap().0.as_ptr() as usize;
    // Tied embeddings: both names are the same bytes of the map, not two copies.
    assert_eq!(ptr("embed.weight"), ptr("head.weight"));
    // big[2:5] and big[5:] of one [8, 6] f32 storage: offsets 12 and 30 elements.
    assert_eq!(ptr("view.tail") - ptr("view.rows"), (30 - 12) * 4);
    // And the storage they view really is in the file, past the zip entry header.
    let file = std::fs::read(fixture("single/pytorch_model.bin")).unwrap();
    let t = &parse(&file).unwrap()["view.rows"];
    assert_eq!(
        &file[t.start..t.end],
        ck.raw("view.rows").unwrap().0,
        "parse and Checkpoint disagree"
    );
}

/// Opens a bad fixture folder; the error is one line naming the file and saying `parts`.
fn assert_refused(case: &str, file: &str, parts: &[&str]) {
    let err = match Checkpoint::open(fixture(&format!("bad/{case}"))) {
        Ok(_) => panic!("{case}: opened"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains('\n'), "{case}: not one line: {err}");
    for p in [file].iter().chain(parts) {
        assert!(err.contains(p), "{case}: {err:?} should mention {p:?}");
    }
}

#[test]
fn foreign_global_is_refused_by_name() {
    assert_refused(
        "foreign_global",
        "pytorch_model.bin",
        &["global posix.system", "refused"],
    );
}

#[test]
fn truncated_zip_is_refused() {
    assert_refused("truncated", "pytorch_model.bin", &["truncated"]);
}

#[test]
fn storage_shorter_than_its_tensor_is_refused() {
    assert_refused(
        "short_storage",
        "pytorch_model.bin",
        &[
            "tensor w ",
            "[4, 3]",
            "elements 0..12",
            "holds 10 elements (40 bytes)",
        ],
    );
}

#[test]
fn non_contiguous_view_is_refused() {
    assert_refused(
        "noncontiguous",
        "pytorch_model.bin",
        &["tensor w.t", "non-contiguous", "strides [1, 3]"],
    );
}

#[test]
fn compressed_legacy_and_big_endian_files_are_refused() {
    assert_refused(
        "compressed",
        "pytorch_model.bin",
        &["is compressed (deflate)", "uncompressed"],
    );
    assert_refused(
        "legacy",
        "pytorch_model.bin",
        &["legacy format", "PyTorch 1.6"],
    );
    assert_refused("big_endian", "pytorch_model.bin", &["big-endian"]);
}

#[test]
fn index_naming_a_missing_shard_is_refused() {
    assert_refused(
        "missing_shard",
        "pytorch_model.bin.index.json",
        &["pytorch_model-00002-of-00002.bin", "do not exist"],
    );
}

/// A model folder in the temp dir holding `config.json` and `files`.
fn temp_model(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fvl-torch-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

#[test]
fn index_shards_outside_the_folder_are_refused_before_any_open() {
    let outside = fixture("single/pytorch_model.bin");
    let outside = outside.to_str().unwrap();
    for (index, shard) in [
        (
            "pytorch_model.bin.index.json",
            "../single/pytorch_model.bin",
        ),
        ("pytorch_model.bin.index.json", outside),
        (
            "model.safetensors.index.json",
            "../../outside/stolen.safetensors",
        ),
        ("model.safetensors.index.json", "/etc/passwd"),
    ] {
        let json = format!(r#"{{"weight_map": {{"x": "{shard}"}}}}"#);
        let dir = temp_model("escape", &[(index, &json)]);
        let err = Checkpoint::open(&dir).err().expect("opened").to_string();
        assert!(
            err.contains(index)
                && err.contains(shard)
                && err.contains("not inside the model folder"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn folder_without_weights_names_both_formats() {
    let dir = temp_model("empty", &[]);
    let err = Checkpoint::open(&dir).err().expect("opened").to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("pytorch_model.bin"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_files_give_errors_not_panics() {
    // Every truncation and every single-byte change of the pickle region: parse must return
    // (Ok or Err), never panic. The fuzz targets go further; this keeps the basics in CI.
    let file = std::fs::read(fixture("single/pytorch_model.bin")).unwrap();
    for len in 0..file.len() {
        let _ = parse(&file[..len]);
    }
    let pkl = &parse(&file).unwrap(); // sanity: the intact file parses
    assert_eq!(pkl.len(), 10);
    let start = file.windows(8).position(|w| w == b"data.pkl").unwrap();
    for i in start..(start + 600).min(file.len()) {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[i] ^= flip;
            let _ = parse(&bad);
        }
    }
}

/// Parses `pickle` wrapped as torch.save wraps it; the error it gives.
fn pickle_err(pickle: &[u8]) -> String {
    parse(&archive_bytes(pickle, &[("0", &[0; 8])]).unwrap()).expect_err("parsed")
}

#[test]
fn hostile_pickles_are_refused_by_name_without_running_anything() {
    // Protocol-4 STACK_GLOBAL builtins.eval, called on a string.
    let mut p = vec![0x80, 4, 0x8c, 8];
    p.extend(b"builtins");
    p.extend([0x8c, 4]);
    p.extend(b"eval");
    p.extend([0x93, 0x8c, 1, b'1', 0x85, b'R', b'.']);
    assert!(
        pickle_err(&p).contains("global builtins.eval"),
        "{}",
        pickle_err(&p)
    );
    // An opcode a state dict never uses (INST builds any class from text).
    let err = pickle_err(b"\x80\x02(ios\nsystem\nX\x01\x00\x00\x001.");
    assert!(err.contains("opcode INST (0x69) at byte 3"), "{err}");
    // A string claiming 4 GiB: refused as truncated, nothing allocated.
    let err = pickle_err(b"\x80\x02X\xff\xff\xff\xff.");
    assert!(err.contains("ends inside an opcode at byte 7"), "{err}");
    // A storage class called directly instead of named in a persistent id.
    let err = pickle_err(b"\x80\x02ctorch\nFloatStorage\n)R.");
    assert!(err.contains("calls torch.FloatStorage"), "{err}");
    // Not a state dict.
    assert!(pickle_err(b"\x80\x02K\x07.").contains("holds a int, not a state dict"));
}

#[test]
fn self_referencing_and_deep_pickles_stay_bounded() {
    // A list appended to itself 10⁵ times (a billion-laughs shape) and 10⁶ nested tuples:
    // each opcode adds at most one object, and nothing recurses on the way out.
    let mut p = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..100_000 {
        p.extend([b'h', 0, b'a']);
    }
    p.push(b'.');
    assert!(pickle_err(&p).contains("holds a list"));
    let mut p = vec![0x80, 2, b')'];
    p.extend(std::iter::repeat_n(0x85, 1_000_000));
    p.push(b'.');
    assert!(pickle_err(&p).contains("holds a tuple"));
}

#[test]
fn written_files_read_back_and_are_what_torch_writes() {
    // Odd shapes, every float dtype, a scalar and an empty tensor.
    let f32s: Vec<u8> = (0..35)
        .flat_map(|i| (i as f32 * 0.37 - 5.0).to_le_bytes())
        .collect();
    let f16s: Vec<u8> = (0..6)
        .flat_map(|i| half::f16::from_f32(i as f32 + 0.5).to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = (0..3)
        .flat_map(|i| half::bf16::from_f32(-(i as f32) - 1.25).to_le_bytes())
        .collect();
    let one = 2.5f32.to_le_bytes();
    let tensors = [
        ("w", Dtype::F32, &[5usize, 7][..], &f32s[..]),
        ("h", Dtype::F16, &[1, 2, 3][..], &f16s[..]),
        ("b", Dtype::BF16, &[3][..], &bf16s[..]),
        ("s", Dtype::F32, &[][..], &one[..]),
        ("e", Dtype::F32, &[0, 4][..], &[][..]),
    ];
    let dir = temp_model("write", &[]);
    let path = dir.join("pytorch_model.bin");
    fvl_wgpu::weights::torch::write(&path, &tensors).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    for (name, dtype, shape, bytes) in tensors {
        assert_eq!(ck.raw(name).unwrap(), (bytes, dtype, shape), "{name}");
    }
    // The layout torch.save uses: stored entries under archive/, data 64-byte aligned.
    let file = std::fs::read(&path).unwrap();
    let found = parse(&file).unwrap();
    assert!(
        found.values().all(|t| t.start % 64 == 0),
        "unaligned storage"
    );
    assert!(file.windows(16).any(|w| w == b"archive/data.pkl"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_load_runs_on_a_torch_folder() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args(["bench", "load", "--json", "--dir"])
        .arg(fixture("sharded"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    assert_eq!(
        (rows[0]["files"].as_u64(), rows[0]["tensors"].as_u64()),
        (Some(2), Some(10))
    );
    assert!(rows
        .iter()
        .all(|r| r["open_load_f32_gb_per_s"].as_f64().unwrap() > 0.0));
}
