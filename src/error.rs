//! One error type for the whole engine: every failure a user can cause or meet
//! (bad files, bad shapes, a missing adapter, a lost device) ends up here with a
//! message that names the thing at fault.
//!
//! Owns: the error kinds and their one-line wording. Must not touch: CLI flag names (an
//! [`Error::Setting`] names the library's setting; a front end swaps in its own word through
//! [`Error::naming`]), the graphics API's error types beyond wrapping them.

use std::fmt;

/// Engine error. The `Display` text is the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable GPU adapter; the message says what to install or which names exist.
    #[error("{0}")]
    NoAdapter(String),
    /// The adapter lacks a limit or feature the requested work needs.
    #[error("adapter too limited: {0}")]
    AdapterLimits(String),
    /// The device was lost (driver reset, removal) or reported an error.
    #[error("GPU device error: {0}")]
    Device(String),
    /// A GPU allocation failed.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// Shapes, dtypes or arguments that do not fit an operation.
    #[error("{0}")]
    Shape(String),
    /// A file could not be read or has the wrong content.
    #[error("{path}: {msg}")]
    File {
        /// The file's path as given.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Invalid user input (arguments, prompts, options).
    #[error("{0}")]
    Input(String),
    /// The model's numbers overflowed at run time (NaN or Inf where an answer was due).
    #[error("{0}")]
    NonFinite(String),
    /// A hub id, the Hugging Face cache or a download: what failed and how to fix it.
    #[error("{0}")]
    Hub(String),
    /// A value the caller chose for one of the library's settings cannot work. The message
    /// is `lead`, the setting as [`Setting::name`] says, then `rest`, so a front end can put
    /// its own word for it there ([`Error::naming`]; the CLI names its flag) without looking
    /// for the name in text that may hold the user's paths.
    #[error("{lead}{}{rest}", setting.name())]
    Setting {
        /// The setting at fault.
        setting: Setting,
        /// What the message says before naming the setting (often a file's path).
        lead: String,
        /// What it says after.
        rest: String,
    },
}

/// A setting of the library's API that an [`Error::Setting`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Setting {
    /// Beams of a Florence-2 beam search (`TaskOptions::num_beams`).
    NumBeams,
    /// Most tokens to generate (`TaskOptions::max_new_tokens`).
    MaxNewTokens,
    /// The text input of a Florence-2 task (`Task::new`'s `text`).
    TaskText,
    /// The weight storage a model is loaded as (the `DType` given to a load).
    WeightStorage,
    /// The folder with Florence-2's `tokenizer.json` for Florence-VL's encoder prompts.
    TowerTokenizer,
    /// The adapter to open (`GpuOptions::adapter`).
    Adapter,
    /// The folder a command writes into (`weights::write_quantized`'s `out`).
    OutputFolder,
    /// The images of a batch (`pipeline::batch::expand_inputs`).
    Images,
    /// The folders whose images a server may read (`ServeOptions::allow_paths`).
    AllowedFolders,
}

impl Setting {
    /// How the library's messages name the setting, in plain words.
    pub fn name(self) -> &'static str {
        match self {
            Setting::NumBeams => "num_beams",
            Setting::MaxNewTokens => "max_new_tokens",
            Setting::TaskText => "the task text",
            Setting::WeightStorage => "weight storage",
            Setting::TowerTokenizer => "the Florence-2 tokenizer folder",
            Setting::Adapter => "adapter",
            Setting::OutputFolder => "the output folder",
            Setting::Images => "the image list",
            Setting::AllowedFolders => "allowed folder",
        }
    }
}

impl Error {
    /// A shape/argument error built from anything printable.
    pub fn shape(msg: impl fmt::Display) -> Self {
        Error::Shape(msg.to_string())
    }
    /// An input error built from anything printable.
    pub fn input(msg: impl fmt::Display) -> Self {
        Error::Input(msg.to_string())
    }
    /// Generation step `step` (1 = the first generated token) met NaN or Inf logits.
    pub fn non_finite(step: usize) -> Self {
        Error::NonFinite(format!(
            "step {step}: the model produced non-finite logits (NaN/Inf); the weights or inputs overflow"
        ))
    }
    /// A bad value for `setting`: the message is `lead`, the setting's name, then `rest`.
    pub fn setting(setting: Setting, lead: impl fmt::Display, rest: impl fmt::Display) -> Self {
        Error::Setting {
            setting,
            lead: lead.to_string(),
            rest: rest.to_string(),
        }
    }
    /// The message with the setting of an [`Error::Setting`] named as `word` says (a CLI's
    /// flag), where `word` has one; any other error as [`Display`](fmt::Display) shows it.
    pub fn naming(&self, word: impl Fn(Setting) -> Option<&'static str>) -> String {
        match self {
            Error::Setting {
                setting,
                lead,
                rest,
            } => format!("{lead}{}{rest}", word(*setting).unwrap_or(setting.name())),
            other => other.to_string(),
        }
    }
    /// A problem with the file at `path`.
    pub fn file(path: impl AsRef<std::path::Path>, msg: impl fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().display().to_string(),
            msg: msg.to_string(),
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A front end's word replaces the setting's name and nothing else, even where the user's
    /// own text (a folder called "the output folder") holds that name first.
    #[test]
    fn naming_replaces_only_the_setting() {
        let e = Error::setting(
            Setting::OutputFolder,
            "/tmp/the output folder/x: ",
            " is inside the input folder /tmp",
        );
        let flag = |s| (s == Setting::OutputFolder).then_some("--out");
        assert_eq!(
            e.to_string(),
            "/tmp/the output folder/x: the output folder is inside the input folder /tmp"
        );
        assert_eq!(
            e.naming(flag),
            "/tmp/the output folder/x: --out is inside the input folder /tmp"
        );
        assert_eq!(e.naming(|_| None), e.to_string());
    }
}
