//! Diagnostics: the loaded files, and errors that point into them (file, line, column, the line with
//! secret literals redacted, a caret, a hint).

use super::*;

/// A loaded text file, kept to point at positions in it.
#[derive(Debug)]
pub(crate) struct SourceFile {
    /// The path as shown to the user (built-ins show as `<built-in>/name.toml`).
    pub name: String,
    /// The file's contents.
    pub text: String,
    /// Byte offsets of the line starts, built on the first question (a position is asked for only to show one).
    pub line_starts: std::sync::OnceLock<Vec<usize>>,
}

impl SourceFile {
    /// A file of `text`, shown as `name`.
    pub(super) fn new(name: String, text: String) -> Self {
        SourceFile {
            name,
            text,
            line_starts: std::sync::OnceLock::new(),
        }
    }

    /// 1-based line and column of byte offset `at`: a binary search of the line starts, so a config of 10,000
    /// profiles does not scan itself once per position.
    pub(super) fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let line = starts.partition_point(|&s| s <= at);
        let line_start = starts[line - 1];
        let col = self
            .text
            .get(line_start..at)
            .map_or(0, |s| s.chars().count());
        (line, col + 1)
    }

    /// An error pointing at `span` in this file: its [`Diagnostic`] carries the line (with the values of
    /// [`SECRET_KEYS`] literals replaced by `[redacted]`) and the hint.
    pub fn error(
        &self,
        span: Range<usize>,
        message: impl fmt::Display,
        hint: Option<String>,
    ) -> Error {
        let (line, col) = self.line_col(span.start);
        let text = self.text.lines().nth(line - 1).unwrap_or("");
        let width = self.text[span.start.min(self.text.len())..span.end.min(self.text.len())]
            .lines()
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        let (excerpt, caret_col, width) = redact_line(text, col - 1, width);
        let byte = |chars: usize| {
            excerpt
                .char_indices()
                .nth(chars)
                .map_or(excerpt.len(), |(i, _)| i)
        };
        let start = byte(caret_col);
        let end = byte(caret_col + width).max(start);
        Error::config(message.to_string()).with_diagnostic(Diagnostic {
            file: self.name.clone(),
            line,
            column: col,
            span: start..end,
            excerpt,
            hint,
        })
    }
}

/// Keys whose literal values never appear in an error's source excerpt.
pub(super) const SECRET_KEYS: [&str; 7] = [
    "client_secret",
    "key", // [shared_cache]'s fleet key
    "client_id",
    "private_key",
    "client_key",
    "subject_token",
    "actor_token",
];

/// `line` with the string value of every [`SECRET_KEYS`] literal replaced by `[redacted]` (to the end of the line
/// when its closing quote is missing), and the caret (0-based column and width, in characters) moved to match.
pub(super) fn redact_line(line: &str, mut col: usize, mut width: usize) -> (String, usize, usize) {
    const MARK: &str = "[redacted]";
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut shift: isize = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().collect();
        let Some(key) = SECRET_KEYS.iter().find(|k| rest.starts_with(*k)) else {
            out.push(chars[i]);
            i += 1;
            continue;
        };
        // key, optional closing quote of a quoted key, spaces, `=`, spaces, an opening quote.
        let mut j = i + key.len();
        let skip = |j: &mut usize, what: &dyn Fn(char) -> bool| {
            while *j < chars.len() && what(chars[*j]) {
                *j += 1;
            }
        };
        skip(&mut j, &|c| c == '"' || c == '\'' || c == ' ' || c == '\t');
        let value_start = if chars.get(j) == Some(&'=') {
            j += 1;
            skip(&mut j, &|c| c == ' ' || c == '\t');
            matches!(chars.get(j), Some('"' | '\'')).then_some(j)
        } else {
            None
        };
        let Some(open) = value_start else {
            out.extend(&chars[i..j]);
            i = j;
            continue;
        };
        let quote = chars[open];
        let mut close = open + 1;
        while close < chars.len() && chars[close] != quote {
            close += if quote == '"' && chars[close] == '\\' {
                2
            } else {
                1
            };
        }
        let close = close.min(chars.len());
        out.extend(&chars[i..=open]);
        out.push_str(MARK);
        let (from, to) = (open + 1, close);
        let delta = MARK.len() as isize - (to - from) as isize;
        let at = (col as isize - shift) as usize; // the caret, in original columns
        if at >= from && at < to.max(from + 1) {
            col = (from as isize + shift) as usize;
            width = MARK.len();
        } else if at >= to {
            col = (col as isize + delta) as usize;
        } else if at + width > from {
            width = from - at + MARK.len();
        }
        shift += delta;
        if close < chars.len() {
            out.push(quote);
        }
        i = close + 1;
    }
    (out, col, width)
}

/// Where a value was written: a file and a span, or the command line.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(super) file: Option<Arc<SourceFile>>,
    pub(super) span: Range<usize>,
}

impl Origin {
    /// A value given on the command line or by an embedder.
    pub fn command_line() -> Self {
        Origin {
            file: None,
            span: 0..0,
        }
    }

    /// An error about the value written here.
    pub fn error(&self, message: impl fmt::Display, hint: Option<String>) -> Error {
        match &self.file {
            Some(f) => f.error(self.span.clone(), message, hint),
            None => {
                let mut m = format!("command line: {message}");
                if let Some(h) = hint {
                    m.push_str(&format!(" (hint: {h})"));
                }
                Error::config(m)
            }
        }
    }

    /// `file:line:col`, or `command line`.
    pub fn position(&self) -> String {
        match &self.file {
            Some(f) => {
                let (l, c) = f.line_col(self.span.start);
                format!("{}:{l}:{c}", f.name)
            }
            None => "command line".into(),
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub origin: Origin,
}

impl<T> Located<T> {
    /// A field value given on the command line, as a [`Fields`] entry.
    pub(super) fn from_command_line(value: T) -> Option<Box<Self>> {
        Some(Box::new(Located {
            value,
            origin: Origin::command_line(),
        }))
    }
}
