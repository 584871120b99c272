//! Writing outputs without losing anyone's data.
//!
//! Every file the engine writes goes through [`write_file`]: the bytes go to a new temporary
//! file in the target's folder, which is renamed over the target only once complete, so an
//! interrupted run never leaves half a file and a reader of the old file (an mmap) keeps its
//! bytes. Targets are checked first: only a new name or an existing regular file is replaced
//! (never a device node, FIFO, socket or symlink), never a file the command reads, and never
//! a file inside an input folder. Files get the usual permissions (`0666` less the umask).
//!
//! Owns: every write to the user's disk and the checks before it. Must not touch: what is
//! written (callers serialise; `weights` formats tensors) or the GPU.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result, Setting};

fn err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// `path` made absolute with every symlink resolved, also when its last components do not
/// exist yet: the longest existing prefix is canonicalized and the rest appended (a path
/// that does not exist holds no symlinks, so `..` there is resolved by name).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| err(path, e))?
            .join(path)
    };
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    loop {
        match base.canonicalize() {
            Ok(mut real) => {
                for c in rest.iter().rev() {
                    match c {
                        Component::ParentDir => {
                            real.pop();
                        }
                        Component::Normal(n) => real.push(n),
                        _ => {}
                    }
                }
                return Ok(real);
            }
            Err(_) => {
                let (Some(parent), Some(last)) = (base.parent(), base.components().next_back())
                else {
                    return Err(err(path, "no existing folder on this path"));
                };
                rest.push(last);
                base = parent;
            }
        }
    }
}

/// Refuses an output folder that is, or lies inside, the input folder `input`
/// (after resolving `.`, `..` and symlinks): writing there would replace the files being read.
pub fn check_out_dir(out: &Path, input: &Path) -> Result<()> {
    let (o, i) = (resolve(out)?, resolve(input)?);
    if o.starts_with(&i) {
        return Err(Error::setting(
            Setting::OutputFolder,
            format!("{}: ", out.display()),
            format!(
                " is {} the input folder {}; choose a folder outside it",
                if o == i { "the same folder as" } else { "inside" },
                input.display()
            ),
        ));
    }
    Ok(())
}

/// Checks that `target` may be written: it is a new name or an existing regular file (not a
/// symlink, device, FIFO or socket), and it is none of the `inputs` files nor inside any of
/// the `inputs` folders.
pub fn check_target(target: &Path, inputs: &[&Path]) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(err(
                target,
                "is a symbolic link; give the real file or a new name",
            ))
        }
        Ok(m) if !m.is_file() => {
            return Err(err(
                target,
                "exists and is not a regular file (a folder, device, FIFO or socket); give a new file name",
            ))
        }
        _ => {}
    }
    let real = resolve(target)?;
    for input in inputs {
        let Ok(inp) = resolve(input) else { continue };
        if real == inp {
            return Err(err(target, "is an input of this command; it would be overwritten"));
        }
        if inp.is_dir() && real.starts_with(&inp) {
            return Err(err(
                target,
                format!("lies inside the input folder {}", input.display()),
            ));
        }
    }
    Ok(())
}

/// Writes `target` through a temporary file in its folder, renamed into place when `write`
/// has succeeded; on any failure the temporary file is removed and `target` is untouched.
/// Returns the bytes written. See [`check_target`] for what is refused.
pub fn write_file(
    target: &Path,
    inputs: &[&Path],
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<u64> {
    check_target(target, inputs)?;
    let (dir, name) = folder_and_name(target)?;
    let (tmp, file) = create_temp(dir, name)?;
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = file.metadata()?.len();
        std::fs::rename(&tmp, target)?;
        Ok(len)
    })();
    result.map_err(|e: std::io::Error| {
        std::fs::remove_file(&tmp).ok();
        err(target, e)
    })
}

/// [`check_target`], and that a file can be created in the target's folder now (it exists
/// and is writable): for an output written after a long run, so a bad path fails first.
pub fn check_writable(target: &Path, inputs: &[&Path]) -> Result<()> {
    check_target(target, inputs)?;
    let (dir, name) = folder_and_name(target)?;
    let (tmp, _file) = create_temp(dir, name)?;
    std::fs::remove_file(&tmp).map_err(|e| err(&tmp, e))
}

/// The folder a file is written in (`.` for a bare name) and its file name.
fn folder_and_name(target: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    let name = target
        .file_name()
        .ok_or_else(|| err(target, "is not a file name"))?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// A new file `.NAME.PID.N.tmp` next to the target, created exclusively (never following or
/// replacing anything that is there) with the default permissions.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> Result<(PathBuf, File)> {
    let mut last = None;
    for n in 0..100 {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(err(dir, format!("cannot create a file here: {e}"))),
        }
    }
    Err(err(dir, format!("cannot create a temporary file: {}", last.expect("tried"))))
}

/// Copies the regular file `src` to `target` through [`write_file`].
pub fn copy_file(src: &Path, target: &Path, inputs: &[&Path]) -> Result<u64> {
    let mut from = File::open(src).map_err(|e| err(src, e))?;
    write_file(target, inputs, |w| std::io::copy(&mut from, w).map(|_| ()))
}
