//! Python literals for the lines and kwargs a plan prints: strings as `repr` writes them, floats as Python
//! source, and the MLP ratio timm and open_clip take in place of a width.

use super::Prepared;
use crate::error::{Part, Result};

/// Writes a string as a Python literal the way Python's `repr` does: single quotes unless the text holds a
/// single quote and no double quote, backslashes and the chosen quote escaped, `\n`, `\r`, `\t` and other
/// control characters as escapes, printable non-ASCII letters as they are. A path pasted into printed Python
/// through this stays one literal whatever it holds.
pub fn py_str(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len().saturating_add(2));
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls and the line and paragraph separators: Python's repr escapes the non-printable.
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Formats a float for Python source (`1e-06`, `2.0`).
pub fn py_float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// `mlp / hidden` as the float ratio timm and open_clip take, checked to give back `mlp` exactly
/// (both compute `int(hidden * ratio)`).
pub fn mlp_ratio(prep: &Prepared<'_>) -> Result<f64> {
    let a = prep.arch();
    let ratio = a.mlp as f64 / a.hidden as f64;
    if (a.hidden as f64 * ratio) as usize != a.mlp {
        return Err(prep.refuse(
            Part::MlpWidth {
                mlp: a.mlp,
                hidden: a.hidden,
            },
            "the layout derives the MLP width from a float ratio that cannot express it",
        ));
    }
    Ok(ratio)
}
