//! What a newcomer meets on a first run (issue 15): a quiet stderr on a headless machine,
//! one-line usage errors, messages that name the right flag.

use std::process::Command;

fn fvl(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"));
    cmd.args(args);
    cmd
}

fn stderr_of(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn headless_vulkan_prints_no_runtime_dir_error() {
    // Without XDG_RUNTIME_DIR the Vulkan stack's Wayland probe used to print
    // "error: XDG_RUNTIME_DIR is invalid or not set" twice per command.
    let (code, out, err) = stderr_of(fvl(&["devices"]).env_remove("XDG_RUNTIME_DIR"));
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    assert!(!err.contains("error"), "stderr: {err}");
}
