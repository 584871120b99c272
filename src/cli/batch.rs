//! `--images DIR|GLOB|FILE…`: one JSON line per image, in input order, to stdout or to
//! `--out` (written through a temporary file and renamed, never over an input); a file that
//! fails becomes an `{"image", "error"}` line and the batch goes on. A progress bar shows
//! images/s and ETA.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use fvl_wgpu::pipeline::batch::{expand_inputs, overlapped};
use fvl_wgpu::{Error, Result};

/// Runs `one` on each image `prepare`d ahead of it and writes the lines.
pub fn run<T: Send>(
    specs: &[PathBuf],
    out: Option<&Path>,
    prepare: impl Fn(&Path) -> Result<T> + Sync,
    one: impl FnMut(T) -> Result<Value>,
) -> Result<()> {
    let paths = expand_inputs(specs)?;
    let t0 = Instant::now();
    let errors = match out {
        Some(o) => {
            let inputs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
            let mut failure = None;
            let mut errors = 0;
            fvl_wgpu::output::write_file(o, &inputs, |w| {
                lines(&paths, w, prepare, one)
                    .map(|n| errors = n)
                    .map_err(|e| {
                        let msg = e.to_string();
                        failure = Some(e);
                        std::io::Error::other(msg)
                    })
            })
            .map_err(|e| failure.take().unwrap_or(e))?;
            errors
        }
        None => lines(&paths, &mut std::io::stdout().lock(), prepare, one)?,
    };
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} images ({errors} failed) in {secs:.1} s: {:.2} images/s",
        paths.len(),
        paths.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Writes one line per path; returns how many were errors.
fn lines<T: Send>(
    paths: &[PathBuf],
    sink: &mut dyn Write,
    prepare: impl Fn(&Path) -> Result<T> + Sync,
    mut one: impl FnMut(T) -> Result<Value>,
) -> Result<usize> {
    let bar = indicatif::ProgressBar::new(paths.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{pos}/{len} images [{bar:30}] {per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut errors = 0;
    let result = overlapped(paths, prepare, |_, path, item| {
        let line = match item.and_then(&mut one) {
            Ok(mut v) => {
                v["image"] = json!(path.display().to_string());
                v
            }
            Err(e) => {
                errors += 1;
                json!({"image": path.display().to_string(), "error": e.naming(super::flag)})
            }
        };
        writeln!(sink, "{line}")
            .and_then(|_| sink.flush())
            .map_err(|e| Error::input(format!("writing the results: {e}")))?;
        bar.inc(1);
        Ok(())
    });
    bar.finish_and_clear();
    result.map(|_| errors)
}
