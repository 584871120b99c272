//! The interactive chats' terminal side (`infer` without `--prompt`, `generate --chat`
//! without `--prompt`): questions read a line at a time from stdin, notes on stderr. What a
//! chat does with a full context is the library's (`Chat::ask`); this only says so.

use std::io::{BufRead, Read, Write};

use fvl_wgpu::model::generate::Stop;
use fvl_wgpu::pipeline::Reply;
use fvl_wgpu::{Error, Result};

/// Longest question line read; the rest of a longer line is skipped (never held in memory).
const MAX_LINE_BYTES: u64 = 1 << 20;

/// Reads questions from stdin until it ends (or an empty line) and has `ask` answer each,
/// streaming the text to stdout through the printer it gets. A question the chat refuses gets
/// one line on stderr and the chat goes on; `kept` names what the chat never drops when its
/// context fills (the system message, the image).
pub fn converse(
    kept: &str,
    mut ask: impl FnMut(&str, &mut dyn FnMut(&str) -> bool) -> Result<Reply>,
) -> Result<()> {
    let print = &mut |piece: &str| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    };
    let mut input = std::io::stdin().lock();
    while let Some(question) = read_question(&mut input)? {
        match ask(&question, print) {
            Ok(reply) => {
                println!();
                report_turn(reply.dropped_turns, reply.stopped, kept);
            }
            Err(Error::Input(msg)) => eprintln!("{msg}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Prompts on stderr and reads the next question from `input`: `None` at the end of the input
/// or on an empty line. A line that is not UTF-8 text, or longer than 1 MiB, gets one line on
/// stderr and the next line is read.
fn read_question<R: BufRead>(input: &mut R) -> Result<Option<String>> {
    loop {
        eprint!("> ");
        std::io::stderr().flush().ok();
        let mut line = Vec::new();
        let read = <&mut R as Read>::take(&mut *input, MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::input(format!("reading stdin: {e}")))?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') && read as u64 > MAX_LINE_BYTES {
            skip_line(input)?;
            eprintln!(
                "that line is longer than {} MiB; skipped",
                MAX_LINE_BYTES >> 20
            );
            continue;
        }
        match String::from_utf8(line) {
            Ok(text) if text.trim().is_empty() => return Ok(None),
            Ok(text) => return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => eprintln!(
                "that line is not UTF-8 text (byte {} is invalid); skipped",
                e.utf8_error().valid_up_to()
            ),
        }
    }
}

/// Reads `input` up to and including the next newline without keeping it.
fn skip_line(input: &mut impl BufRead) -> Result<()> {
    loop {
        let buf = input
            .fill_buf()
            .map_err(|e| Error::input(format!("reading stdin: {e}")))?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    }
}

/// Says on stderr what the chat did with its context for the answer just printed.
/// `kept` names what a chat never drops (the system message, the image).
fn report_turn(dropped_turns: usize, stopped: Stop, kept: &str) {
    if dropped_turns > 0 {
        eprintln!(
            "(the context was full: dropped the oldest {dropped_turns} turn{} before this answer, keeping {kept}, and re-read the rest)",
            if dropped_turns == 1 { "" } else { "s" },
        );
    }
    if stopped == Stop::Context {
        eprintln!("(the answer reached the end of the context; the next question drops the oldest turns)");
    }
}
