//! Many images through one model: inputs expanded from folders, globs and files, and each
//! image decoded and preprocessed on a second thread while the GPU works on the one before.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::{Error, Result, Setting};

/// File extensions a folder or glob contributes (any file named explicitly is tried).
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// `*` (any run) and `?` (one character) against a file name.
fn glob_match(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some('?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Sorted image files of `dir` whose names match `pattern` (all images without one).
fn list(dir: &Path, pattern: Option<&str>) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::File {
        path: dir.display().to_string(),
        msg: format!("cannot list: {e}"),
    })?;
    let pattern: Option<Vec<char>> = pattern.map(|p| p.chars().collect());
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| match &pattern {
            Some(pat) => {
                let name: Vec<char> = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .chars()
                    .collect();
                glob_match(pat, &name)
            }
            None => is_image_name(p),
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Expands each spec in order: a folder gives its image files (sorted), a name with `*` or
/// `?` the matching files of its folder (sorted), anything else itself (a missing or bad
/// file becomes an error line later, not a failure of the batch).
pub fn expand_inputs(specs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for spec in specs {
        let name = spec.file_name().map(|n| n.to_string_lossy().into_owned());
        if spec.is_dir() {
            out.extend(list(spec, None)?);
        } else if let Some(pat) = name.filter(|n| n.contains(['*', '?'])) {
            let dir = spec
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let found = list(dir, Some(&pat))?;
            if found.is_empty() {
                return Err(Error::input(format!("{}: no file matches", spec.display())));
            }
            out.extend(found);
        } else {
            out.push(spec.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::setting(Setting::Images, "", ": no image files found"));
    }
    Ok(out)
}

/// Runs `consume` on each path's `prepare`d value in order, preparing the next path on a
/// second thread meanwhile (at most two ahead, so memory stays bounded). An error from
/// `consume` stops the batch; an error from `prepare` is handed to `consume`.
pub fn overlapped<T: Send>(
    paths: &[PathBuf],
    prepare: impl Fn(&Path) -> Result<T> + Sync,
    mut consume: impl FnMut(usize, &Path, Result<T>) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(1);
        let prepare = &prepare;
        scope.spawn(move || {
            for p in paths {
                // The consumer has stopped: nothing more to prepare.
                if tx.send(prepare(p)).is_err() {
                    break;
                }
            }
        });
        for (k, item) in rx.iter().enumerate() {
            consume(k, &paths[k], item)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        let m = |p: &str, n: &str| {
            glob_match(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*.png", "a.png") && m("img_??.jpg", "img_01.jpg") && m("*", ""));
        assert!(!m("*.png", "a.jpg") && !m("img_?.jpg", "img_01.jpg"));
    }

    #[test]
    fn overlapped_keeps_order_and_hands_errors_over() {
        let paths: Vec<PathBuf> = ["a", "bad", "c"].iter().map(PathBuf::from).collect();
        let mut seen = Vec::new();
        overlapped(
            &paths,
            |p| {
                if p == Path::new("bad") {
                    Err(Error::input("bad"))
                } else {
                    Ok(p.display().to_string())
                }
            },
            |k, _, r| {
                seen.push((k, r.map_err(|e| e.to_string())));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            [
                (0, Ok("a".into())),
                (1, Err("bad".into())),
                (2, Ok("c".into()))
            ]
        );
    }
}
