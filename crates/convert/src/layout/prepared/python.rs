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

/// `mlp / width` as a float ratio, where it gives back `mlp` exactly as timm and open_clip compute the MLP
/// width from it (`int(width * ratio)`); `None` where no float does.
pub fn exact_ratio(mlp: usize, width: usize) -> Option<f64> {
    let ratio = mlp as f64 / width as f64;
    ((width as f64 * ratio) as usize == mlp).then_some(ratio)
}

/// The image tower's `mlp / hidden` as the float ratio timm and open_clip take ([`exact_ratio`]), refused
/// where none gives the width back.
pub fn mlp_ratio(prep: &Prepared<'_>) -> Result<f64> {
    let a = prep.arch();
    exact_ratio(a.mlp, a.hidden).ok_or_else(|| {
        prep.refuse(
            Part::MlpWidth {
                mlp: a.mlp,
                hidden: a.hidden,
            },
            "the layout derives the MLP width from a float ratio that cannot express it",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::layout::prepared::tests::model;
    use crate::options::{Layout, Options};

    /// Edge cases beyond the common ones `layout::tests` checks: the empty string, the quote choice when both
    /// or only double quotes appear, and the controls Python's `repr` escapes outside ASCII.
    #[test]
    fn python_strings_escape_what_repr_escapes() {
        assert_eq!(py_str(""), "''");
        assert_eq!(
            py_str("say \"hi\""),
            "'say \"hi\"'",
            "double quotes only: single-quoted, as is"
        );
        assert_eq!(
            py_str("'\""),
            "'\\'\"'",
            "both: single-quoted, the single escaped"
        );
        assert_eq!(py_str("del\u{7f}"), "'del\\x7f'");
        assert_eq!(py_str("nel\u{85}"), "'nel\\x85'");
        assert_eq!(py_str("a\u{2028}b\u{2029}"), "'a\\u2028b\\u2029'");
        assert_eq!(py_str("\u{0}"), "'\\x00'");
        // Printable non-ASCII stays as it is, whatever its width in UTF-8.
        assert_eq!(py_str("日本 é"), "'日本 é'");
        // Whatever it holds, the literal is one line.
        assert_eq!(py_str("a\nb\rc\u{2028}").lines().count(), 1);
    }

    /// A Python float literal, never an int one, that reads back as the same value.
    #[test]
    fn python_floats_are_float_literals_of_the_same_value() {
        assert_eq!(py_float(2.0), "2.0");
        assert_eq!(py_float(-3.0), "-3.0");
        assert_eq!(py_float(0.5), "0.5");
        for x in [1e-6, 1e-12, 4.0, 3.75, 1e20, 0.0, 5.0 / 3.0] {
            let s = py_float(x);
            assert!(s.contains('.') || s.contains('e'), "{s}");
            assert_eq!(s.parse::<f64>().ok(), Some(x), "{s}");
        }
    }

    #[test]
    fn the_mlp_ratio_gives_back_the_width_or_is_refused() {
        let m = model("vit-token");
        let o = Options::new(Layout::OpenClip);
        let p = crate::layout::Prepared::new(&m, &o).expect("prepared");
        assert_eq!(mlp_ratio(&p).ok(), Some(2.0), "mlp 128 over hidden 64");
        assert_eq!(
            exact_ratio(4304, 1152),
            Some(4304.0 / 1152.0),
            "So400m's MLP"
        );
        assert_eq!(exact_ratio(61, 7), None);
        // int(7 * (61 / 7)) is 60 in floating point: no ratio gives 61 back.
        let mut m = model("vit-token");
        (m.image.arch.hidden, m.image.arch.mlp) = (7, 61);
        let p = crate::layout::Prepared::new(&m, &o).expect("prepared");
        match mlp_ratio(&p) {
            Err(Error::Refused {
                layout: "open_clip",
                what: Part::MlpWidth { mlp: 61, hidden: 7 },
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
