//! `fvl-wgpu`: the command-line front end. Errors print one line and exit non-zero.

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
