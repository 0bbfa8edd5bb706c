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
        let width = self.text[span.start.min(self.text.len())..span.end.min(self.text.len())]
            .lines()
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        let (excerpt, caret_col, width) = redact_line_of(&self.text, line, col - 1, width);
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

/// Keys whose literal values never appear in an error's source excerpt, whatever their length or quoting.
pub(super) const SECRET_KEYS: [&str; 8] = [
    "client_secret",
    "key", // [shared_cache]'s fleet key
    "url", // [shared_cache]'s Redis URL, which may hold a password
    "client_id",
    "private_key",
    "client_key",
    "subject_token",
    "actor_token",
];

/// Line `line` (1-based) of `text` with the string value of every [`SECRET_KEYS`] literal replaced by `[redacted]`
/// whole (to the end of the line when its closing quote is not on it), and the caret (0-based column and width, in
/// characters) moved to match. A line inside a multi-line string that a secret key opened is redacted up to the
/// string's end.
pub(super) fn redact_line_of(
    text: &str,
    line: usize,
    col: usize,
    width: usize,
) -> (String, usize, usize) {
    let mut inside = None;
    // Only a file with a multi-line string can carry one into a later line.
    if text.contains(r#"""""#) || text.contains("'''") {
        for l in text.lines().take(line.saturating_sub(1)) {
            inside = redact(l, 0, 0, inside).3;
        }
    }
    let this = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let (out, col, width, _) = redact(this, col, width, inside);
    (out, col, width)
}

/// One line of [`redact_line_of`] from a state: `inside` is the closing delimiter of a secret multi-line string the line starts
/// in. Returns the one the line ends in.
fn redact(
    line: &str,
    mut col: usize,
    mut width: usize,
    mut inside: Option<&'static str>,
) -> (String, usize, usize, Option<&'static str>) {
    const MARK: &str = "[redacted]";
    let chars: Vec<char> = line.chars().collect();
    let at = |j: usize, s: &str| {
        s.chars()
            .enumerate()
            .all(|(k, c)| chars.get(j + k) == Some(&c))
    };
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut shift: isize = 0;
    loop {
        // The value to redact starts at `from` and ends at its closing delimiter, if that is on this line.
        let (from, delim) = match inside.take() {
            Some(delim) => (i, delim),
            None => {
                let Some((open, delim)) = next_secret_value(&chars, &mut i, &mut out) else {
                    break;
                };
                out.extend(&chars[i..open + delim.len()]);
                (open + delim.len(), delim)
            }
        };
        let mut to = from;
        while to < chars.len() && !at(to, delim) {
            to += if delim == "\"" && chars[to] == '\\' {
                2
            } else {
                1
            };
        }
        let to = to.min(chars.len());
        if to == chars.len() && delim.len() == 3 {
            inside = Some(delim);
        }
        out.push_str(MARK);
        let delta = MARK.len() as isize - (to - from) as isize;
        let caret = (col as isize - shift) as usize; // the caret, in original columns
        if caret >= from && caret < to.max(from + 1) {
            col = (from as isize + shift) as usize;
            width = MARK.len();
        } else if caret >= to {
            col = (col as isize + delta) as usize;
        } else if caret + width > from {
            width = from - caret + MARK.len();
        }
        shift += delta;
        i = to;
        if i < chars.len() {
            let end = (i + delim.len()).min(chars.len());
            out.extend(&chars[i..end]);
            i = end;
        }
        if inside.is_some() {
            break;
        }
    }
    (out, col, width, inside)
}

/// Finds the next secret key (a whole word) followed by `=` and a string: copies what comes before it to `out`,
/// leaves `i` at the key, and returns where the string opens and its delimiter.
fn next_secret_value(
    chars: &[char],
    i: &mut usize,
    out: &mut String,
) -> Option<(usize, &'static str)> {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    while *i < chars.len() {
        let boundary = *i == 0 || !word(chars[*i - 1]);
        let key = SECRET_KEYS.iter().find(|k| {
            boundary
                && k.chars()
                    .enumerate()
                    .all(|(n, c)| chars.get(*i + n) == Some(&c))
                && !chars.get(*i + k.len()).is_some_and(|&c| word(c))
        });
        let Some(key) = key else {
            out.push(chars[*i]);
            *i += 1;
            continue;
        };
        // key, optional closing quote of a quoted key, spaces, `=`, spaces, an opening quote.
        let mut j = *i + key.len();
        while j < chars.len() && matches!(chars[j], '"' | '\'' | ' ' | '\t') {
            j += 1;
        }
        if chars.get(j) == Some(&'=') {
            j += 1;
            while j < chars.len() && matches!(chars[j], ' ' | '\t') {
                j += 1;
            }
            let triple = |q: char| (0..3).all(|k| chars.get(j + k) == Some(&q));
            let delim = match chars.get(j) {
                Some('"') if triple('"') => Some(r#"""""#),
                Some('\'') if triple('\'') => Some("'''"),
                Some('"') => Some("\""),
                Some('\'') => Some("'"),
                _ => None,
            };
            if let Some(delim) = delim {
                return Some((j, delim));
            }
        }
        out.extend(&chars[*i..j]);
        *i = j;
    }
    None
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
