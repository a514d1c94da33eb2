//! Shared by the commands and by `vitconv-verify`, and importing none of them: how errors and text from files
//! are put on one safe line.

/// The error and its causes on one line, so the file and tensor names show; a cause whose text the message
/// already quotes (library errors often embed their source) is not repeated.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    terminal_safe(&line).into_owned()
}

/// Makes text from a file (tensor and member names, metadata, paths) safe to print: control
/// characters, which could move the cursor, rewrite the line (`\r`) or start ANSI and OSC
/// escape sequences, are shown escaped, a newline as `\n`, and so are the invisible bidi
/// controls that reorder how a line reads. Everything else passes unchanged.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(terminal_safe("plain/name.weight"), "plain/name.weight");
        assert_eq!(
            terminal_safe("a\u{1b}[31mred\u{1b}]0;title\u{7}\rb\nc"),
            "a\\u{1b}[31mred\\u{1b}]0;title\\u{7}\\rb\\nc"
        );
        // C1 controls (a one-byte CSI) and bidi overrides too; other Unicode passes.
        assert_eq!(terminal_safe("x\u{9b}y\u{202e}z"), "x\\u{9b}y\\u{202e}z");
        assert_eq!(terminal_safe("poids_é_ü"), "poids_é_ü");
    }
}
