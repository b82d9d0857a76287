//! The one piece of YAML writing the seed needs: a double-quoted scalar
//! (YAML 1.1 and 1.2 read it the same way, so PyYAML in the guest sees
//! exactly the string, whatever it looks like: `yes`, `0x1`, `:`, `#`).

pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn escapes_what_double_quotes_need() {
        assert_eq!(quote("yes"), "\"yes\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("a\nb\u{1}"), "\"a\\nb\\x01\"");
        assert_eq!(quote("héllo # x: y"), "\"héllo # x: y\"");
    }
}
