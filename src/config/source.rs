//! Where a problem is: the text of one YAML file ([`Source`]) and the located
//! problems found in it ([`Diagnostic`], [`Diagnostics`]), printed as
//! `file:line:col: message`.
//!
//! This module only locates and formats; it never decides whether a value is valid.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a config or rules file, printed as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, and where useful, what to do about it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// A list of diagnostics, the error type of every loader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Source text of one YAML file, kept to turn a value back into `line:col`.
pub struct Source {
    /// The file the text was read from.
    pub file: PathBuf,
    /// The whole text of the file.
    pub text: String,
}

impl Source {
    /// Reads `file`; a read error is a diagnostic at `file:1:1`.
    pub fn read(file: &Path) -> Result<Source, Diagnostics> {
        match std::fs::read_to_string(file) {
            Ok(text) => Ok(Source {
                file: file.to_path_buf(),
                text,
            }),
            Err(e) => Err(Diagnostics(vec![Diagnostic {
                file: file.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read: {e}"),
            }])),
        }
    }

    /// A diagnostic at the first place `needle` appears after `after` (both searched
    /// outside comments), or at 1:1 when it cannot be found.
    pub fn diag_at(&self, after: Option<&str>, needle: &str, message: String) -> Diagnostic {
        let (line, col) = self.locate(after, needle).unwrap_or((1, 1));
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
        }
    }

    /// A diagnostic at the `n`-th (0-based) place `needle` appears after `after`.
    pub fn diag_nth(&self, after: &str, needle: &str, n: usize, message: String) -> Diagnostic {
        let mut at = self.find_from(0, after);
        for _ in 0..=n {
            at = at.and_then(|a| self.find_from(a + 1, needle));
        }
        let (line, col) = at.map(|a| self.line_col(a)).unwrap_or((1, 1));
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
        }
    }

    fn line_col(&self, at: usize) -> (usize, usize) {
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let col = at - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        (line, col)
    }

    fn locate(&self, after: Option<&str>, needle: &str) -> Option<(usize, usize)> {
        let mut start = 0;
        if let Some(anchor) = after {
            start = self.find_from(0, anchor)?;
        }
        let at = self.find_from(start, needle).or_else(|| {
            if after.is_some() {
                Some(start)
            } else {
                None
            }
        })?;
        Some(self.line_col(at))
    }

    fn find_from(&self, from: usize, needle: &str) -> Option<usize> {
        if needle.is_empty() {
            return None;
        }
        let mut offset = from;
        while let Some(rel) = self.text.get(offset..)?.find(needle) {
            let at = offset + rel;
            let line_start = self.text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
            if !self.text[line_start..at].contains('#') {
                return Some(at);
            }
            offset = at + needle.len();
        }
        None
    }

    /// Converts a serde_yaml error into a located diagnostic.
    pub fn yaml_error(&self, e: &serde_yaml::Error) -> Diagnostic {
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let mut message = e.to_string();
        // serde_yaml appends " at line X column Y"; the location is already in front.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
        }
    }
}
