//! The error type of the Dockerfile front end.

/// A Dockerfile or `.dockerignore` problem, with the 1-based line it was found on when known.
///
/// Displays as `Dockerfile:12: unknown instruction: FOOBAR` (or `.dockerignore:3: ...`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct Error {
    file: &'static str,
    line: Option<usize>,
    message: String,
}

impl Error {
    /// An error about the Dockerfile at `line` (1-based).
    pub(crate) fn at(line: usize, message: impl Into<String>) -> Self {
        Error {
            file: "Dockerfile",
            line: Some(line),
            message: message.into(),
        }
    }

    /// An error about the Dockerfile as a whole (no line applies).
    pub(crate) fn general(message: impl Into<String>) -> Self {
        Error {
            file: "Dockerfile",
            line: None,
            message: message.into(),
        }
    }

    /// An error about line `line` of a `.dockerignore` file.
    pub(crate) fn ignore_file(line: usize, message: impl Into<String>) -> Self {
        Error {
            file: ".dockerignore",
            line: Some(line),
            message: message.into(),
        }
    }

    /// Attaches `line` unless the error already names one.
    pub(crate) fn or_line(mut self, line: usize) -> Self {
        if self.line.is_none() {
            self.line = Some(line);
        }
        self
    }

    /// The 1-based line the problem was found on, if it concerns one line.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The problem, without the file and line prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Which file the error is about: `Dockerfile` or `.dockerignore`.
    pub fn file(&self) -> &str {
        self.file
    }
}

/// `text` cut to its first 200 characters and an ellipsis with the number of bytes left out,
/// so that a message about a huge word stays readable.
pub(crate) fn shorten(text: &str) -> String {
    const KEEP: usize = 200;
    match text.char_indices().nth(KEEP) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

impl Error {
    fn render(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{}: {}", self.file, line, self.message),
            None => format!("{}: {}", self.file, self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_and_line() {
        assert_eq!(
            Error::at(12, "unknown instruction: FOOBAR").to_string(),
            "Dockerfile:12: unknown instruction: FOOBAR"
        );
        assert_eq!(
            Error::general("no stages").to_string(),
            "Dockerfile: no stages"
        );
        assert_eq!(
            Error::ignore_file(3, "bad").to_string(),
            ".dockerignore:3: bad"
        );
        assert_eq!(Error::general("x").or_line(4).line(), Some(4));
        assert_eq!(Error::at(2, "x").or_line(4).line(), Some(2));
    }

    #[test]
    fn shorten_keeps_short_text_and_cuts_long_text() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(300);
        assert_eq!(
            shorten(&long),
            format!("{}… (200 more bytes)", "é".repeat(200))
        );
    }
}
