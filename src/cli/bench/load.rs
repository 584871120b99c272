//! `fvl-wgpu bench load`: how fast checkpoints load from disk, in bytes per second, next to a
//! plain sequential `read` of the same files in the same run.
//!
//! Method: the bench writes one `model.safetensors` and one `pytorch_model.bin` holding the
//! same random f16 `[1024, 1024]` tensors (or takes the model folder `--dir`). For each
//! folder and each of two passes it times (1) reading every weight file start to end into a
//! 16 MiB buffer, (2) `Checkpoint::open` plus `load_f32` of every float tensor, (3) `Checkpoint::open`
//! plus touching every tensor's mapped bytes (what an f16 upload reads). Every byte is summed
//! so none of it is skipped. The page cache cannot be dropped without root, so the output
//! says which passes were warm.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fvl_wgpu::weights::{torch, Checkpoint, Dtype};
use fvl_wgpu::{Error, Result};

use super::noise;
use crate::cli::DeviceArgs;

/// Elements per tensor written: `[1024, 1024]` f16 = 2 MiB, a typical weight matrix.
const TENSOR: usize = 1024 * 1024;

/// Removes the bench's temporary folder however the bench ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `fvl-wgpu bench load`.
pub fn load(args: &DeviceArgs, size_mb: Option<usize>, dir: Option<&Path>) -> Result<()> {
    let cpu = cpu_name();
    eprintln!("CPU: {cpu}");
    let _tmp;
    let (folders, warmth) = match dir {
        Some(d) => (
            vec![("as found".to_string(), d.to_path_buf())],
            ["cold unless the OS cached these files earlier", "warm"],
        ),
        None => {
            // Only the default size depends on the adapter: small where it is the CPU.
            let gpu = args.open()?;
            let mut sizes = super::Sizes::new(&gpu);
            let mb = sizes.pick("--size-mb", size_mb, 1024, 64);
            sizes.announce();
            let root = std::env::temp_dir().join(format!("fvl-bench-load-{}", std::process::id()));
            _tmp = TempDir(root.clone());
            let folders = write_random(&root, mb)?;
            (folders, ["warm (files just written)", "warm"])
        }
    };
    let mut rows = Vec::new();
    for (pass, warmth) in warmth.iter().enumerate() {
        for (format, folder) in &folders {
            let row = measure(folder)?;
            eprintln!(
                "{format:<12} pass {}, {}: {:.0} MB in {} file(s) | sequential read {:.2} GB/s | \
                 open {:.1} ms | open + load_f32 {:.2} GB/s ({:.0}% of read) | open + mapped \
                 bytes {:.2} GB/s ({:.0}% of read)",
                pass + 1,
                warmth,
                row.bytes as f64 / 1e6,
                row.files,
                row.read / 1e9,
                row.open_s * 1e3,
                row.f32 / 1e9,
                100.0 * row.f32 / row.read,
                row.mapped / 1e9,
                100.0 * row.mapped / row.read,
            );
            rows.push(serde_json::json!({
                "format": format, "pass": pass + 1, "cache": warmth, "bytes": row.bytes,
                "files": row.files, "tensors": row.tensors,
                "sequential_read_gb_per_s": row.read / 1e9, "open_ms": row.open_s * 1e3,
                "open_load_f32_gb_per_s": row.f32 / 1e9, "open_mapped_gb_per_s": row.mapped / 1e9,
            }));
        }
    }
    if args.json {
        println!("{}", serde_json::json!({ "cpu": cpu, "rows": rows }));
    }
    Ok(())
}

/// Writes the same random f16 tensors (`mb` MiB in all) as `model.safetensors` and as
/// `pytorch_model.bin` in two folders under `root`.
fn write_random(root: &Path, mb: usize) -> Result<Vec<(String, PathBuf)>> {
    let total = (mb.max(1) << 20) / 2;
    let count = total.div_ceil(TENSOR);
    // One pool of random halves; tensor i starts i elements in, so no two are equal.
    let pool: Vec<u8> = noise(TENSOR + count)
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let tensors: Vec<(String, Vec<usize>, &[u8])> = (0..count)
        .map(|i| {
            let n = TENSOR.min(total - i * TENSOR);
            // Whole MiBs of halves: n is a multiple of 1024.
            (
                format!("layers.{i}.weight"),
                vec![n / 1024, 1024],
                &pool[2 * i..2 * (i + n)],
            )
        })
        .collect();
    eprintln!("writing {count} random f16 tensors ({mb} MiB) in each format…");
    let mut folders = Vec::new();
    for format in ["safetensors", "pytorch .bin"] {
        let dir = root.join(format.replace(' ', "-"));
        let io = |e: std::io::Error| Error::File {
            path: dir.display().to_string(),
            msg: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::write(dir.join("config.json"), "{}").map_err(io)?;
        if format == "safetensors" {
            let views = tensors.iter().map(|(name, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(Dtype::F16, shape.clone(), bytes);
                view.map(|v| (name.clone(), v))
            });
            let views = views.collect::<std::result::Result<Vec<_>, _>>();
            let path = dir.join("model.safetensors");
            views
                .and_then(|v| safetensors::serialize_to_file(v, None, &path))
                .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        } else {
            let list: Vec<torch::TensorToWrite> = tensors
                .iter()
                .map(|(n, shape, bytes)| (n.as_str(), Dtype::F16, &shape[..], *bytes))
                .collect();
            torch::write(&dir.join("pytorch_model.bin"), &list).map_err(Error::input)?;
        }
        folders.push((format.to_string(), dir));
    }
    Ok(folders)
}

/// One folder's timings: bytes/s of the three ways to read it.
struct Measured {
    bytes: u64,
    files: usize,
    tensors: usize,
    read: f64,
    open_s: f64,
    f32: f64,
    mapped: f64,
}

/// A sum over every 8 bytes, so reads cannot be skipped.
fn checksum(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|&b| u64::from(b)).sum();
    words.fold(tail, |s, w| {
        s.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")))
    })
}

fn measure(folder: &Path) -> Result<Measured> {
    // Files and size from a first open (not timed).
    let files: Vec<PathBuf> = Checkpoint::open(folder)?
        .files()
        .map(Path::to_path_buf)
        .collect();
    let mut bytes = 0u64;
    let mut sum = 0u64;
    let t = Instant::now();
    let mut buf = vec![0u8; 16 << 20];
    for path in &files {
        let io = |e: std::io::Error| Error::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            sum = sum.wrapping_add(checksum(&buf[..n]));
        }
    }
    let read = bytes as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let ck = Checkpoint::open(folder)?;
    let open_s = t.elapsed().as_secs_f64();
    let names: Vec<String> = ck.names().map(str::to_string).collect();
    for name in &names {
        // Integer buffers (position ids and the like) are not floats to convert.
        let (shape, dtype) = ck.info(name)?;
        if ![Dtype::F32, Dtype::F16, Dtype::BF16].contains(&dtype) {
            continue;
        }
        let v = ck.load_f32(name, shape)?;
        sum = sum.wrapping_add(v.iter().map(|x| x.to_bits() as u64).sum::<u64>());
    }
    let f32 = bytes as f64 / t.elapsed().as_secs_f64();
    drop(ck);

    let t = Instant::now();
    let ck = Checkpoint::open(folder)?;
    for name in &names {
        sum = sum.wrapping_add(checksum(ck.raw(name)?.0));
    }
    let mapped = bytes as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(sum);
    Ok(Measured {
        bytes,
        files: files.len(),
        tensors: names.len(),
        read,
        open_s,
        f32,
        mapped,
    })
}

/// The CPU's model name (Linux), for the record.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}
