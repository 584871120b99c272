//! `fvl-wgpu`: the command-line front end. Errors print one line and exit non-zero.
//!
//! Owns: the process (exit codes, the headless `XDG_RUNTIME_DIR` fix before wgpu starts).
//! Must not touch: anything past parsing and printing; `cli` dispatches to the library.

mod cli;

fn main() {
    quiet_headless_vulkan();
    if let Err(e) = cli::run() {
        eprintln!("error: {}", e.naming(cli::flag));
        std::process::exit(1);
    }
}

/// Restores the default action of SIGPIPE (Rust ignores it, so that a write into a closed
/// pipe is an error): the process then ends quietly when its reader goes away, as `cat` and
/// every Unix filter do, instead of panicking in `print!` with a backtrace.
fn quiet_closed_pipe() {
    #[cfg(unix)]
    {
        // SIGPIPE is 13 and SIG_DFL is 0 on Linux, macOS and the BSDs.
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        // Safe: it changes only how the process reacts to SIGPIPE; no handler code runs.
        unsafe {
            signal(13, 0);
        }
    }
}

/// On a headless Linux machine `XDG_RUNTIME_DIR` is often unset, and the Vulkan stack's
/// Wayland probe then prints "error: XDG_RUNTIME_DIR is invalid or not set" once per instance:
/// noise the user reads as ours. Point it at a private folder of this user (mode 0700) before
/// any thread or GPU instance exists; nothing is written there.
fn quiet_headless_vulkan() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| !d.is_empty()) {
            return;
        }
        let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("fvl-wgpu-runtime-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        // Only a real folder we own that nobody else can enter (not a planted link).
        let ok = std::fs::symlink_metadata(&dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
        if ok {
            // Safe here: main has not started any other thread yet.
            std::env::set_var("XDG_RUNTIME_DIR", dir);
        }
    }
}
