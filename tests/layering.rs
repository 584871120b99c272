//! The layering rule CI keeps: only `src/gpu/` (and the kernels' Rust side in `src/ops/`)
//! may name the graphics API. Models, pipelines, tokenizers and checkpoint code record graphs
//! and read files; they never touch buffers, queues or submissions. The check is as plain as
//! `grep -rn wgpu src/model src/pipeline src/text src/weights`: not even the program's name
//! appears there (messages say `{PROGRAM}` or name the command).

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn only_gpu_and_ops_name_the_graphics_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in ["model", "pipeline", "text", "weights"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(!files.is_empty(), "no sources found under {}", root.display());
    let mut offenders = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("wgpu") {
                offenders.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only src/gpu and src/ops may name wgpu:\n{}",
        offenders.join("\n")
    );
}

/// The README's "How it is built" map names every folder under `src/` and every file directly
/// in it (a module added without a line in the map fails here), and each of those modules'
/// top comment says what it owns and what it must not touch.
#[test]
fn readme_map_and_module_comments_cover_the_tree() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(manifest.join("README.md")).unwrap();
    let start = readme.find("## How it is built").expect("README has its map");
    let map = &readme[start..];
    let map = &map[..map[3..].find("\n## ").map_or(map.len(), |i| i + 3)];
    let mut missing = Vec::new();
    let mut uncommented = Vec::new();
    for e in std::fs::read_dir(manifest.join("src")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (shown, top) = if e.path().join("mod.rs").exists() {
            (format!("src/{name}/"), e.path().join("mod.rs"))
        } else if e.path().is_dir() {
            // A module's own folder beside `src/NAME.rs` (image/jpeg.rs): each file is named.
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                let shown = format!("{name}/{}", f.file_name().to_string_lossy());
                if !map.contains(&shown) {
                    missing.push(shown);
                }
            }
            continue;
        } else if name == "lib.rs" {
            continue; // the crate root is the map's own summary
        } else {
            (format!("src/{name}"), e.path())
        };
        if !map.contains(&shown) {
            missing.push(shown.clone());
        }
        let text = std::fs::read_to_string(&top).unwrap_or_default();
        let head: Vec<&str> = text
            .lines()
            .map_while(|l| l.strip_prefix("//!"))
            .flat_map(str::split_whitespace)
            .collect();
        let head = head.join(" ");
        if !(head.contains("Owns:") && head.contains("Must not touch:")) {
            uncommented.push(top.display().to_string());
        }
    }
    assert!(missing.is_empty(), "README's map lacks {missing:?}");
    assert!(
        uncommented.is_empty(),
        "no 'Owns: … Must not touch: …' in the top comment of {uncommented:?}"
    );
}
