//! Whether json/jsonb text is one well-formed JSON value, so that it can be
//! embedded in the event as it is, and that value's text on one line.
//!
//! Postgres only sends valid JSON for these types, but a corrupted stream
//! (found by fuzzing, `fuzz_regressions.rs`) must never put invalid JSON into
//! an event. This answers exactly what
//! `serde_json::from_str::<serde::de::IgnoredAny>` answers (the check it
//! replaces; the tests compare the two), without serde's machinery: it ran
//! for about a tenth of the decode + apply + encode time.
//!
//! The grammar is RFC 8259's, as serde_json 1 reads it: whitespace is space,
//! tab, line feed and carriage return; numbers are
//! `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, any length; strings
//! reject raw control characters (below 0x20) and allow the escapes
//! `\" \\ \/ \b \f \n \r \t \uXXXX` (any four hex digits, lone surrogates
//! too); nesting has no depth limit, and takes no stack either.

use crate::model::escape_flags;

/// Well-formed JSON `text` with its line breaks and tabs made spaces, so
/// that an event stays one line (a `json` column keeps its input's layout,
/// `'{\n "a": 1\n}'`). In well-formed JSON these bytes can only be
/// whitespace between tokens (inside strings they must be escaped), where a
/// space means the same: the value is unchanged.
pub(crate) fn one_line(text: &str) -> String {
    if text.bytes().any(|b| matches!(b, b'\n' | b'\r' | b'\t')) {
        text.replace(['\n', '\r', '\t'], " ")
    } else {
        text.to_owned()
    }
}

/// Whether `text` is one JSON value, with nothing but whitespace around it.
pub(crate) fn is_json(text: &str) -> bool {
    let b = text.as_bytes();
    let mut pos = 0;
    let mut frames = Frames::default();
    'value: loop {
        // A value is expected at `pos`.
        skip_whitespace(b, &mut pos);
        let ok = match b.get(pos) {
            Some(b'{') => {
                pos += 1;
                skip_whitespace(b, &mut pos);
                if b.get(pos) == Some(&b'}') {
                    pos += 1;
                    true
                } else {
                    frames.push(true);
                    if !object_key(b, &mut pos) {
                        return false;
                    }
                    continue 'value;
                }
            }
            Some(b'[') => {
                pos += 1;
                skip_whitespace(b, &mut pos);
                if b.get(pos) == Some(&b']') {
                    pos += 1;
                    true
                } else {
                    frames.push(false);
                    continue 'value;
                }
            }
            Some(b'"') => {
                pos += 1;
                string(b, &mut pos)
            }
            Some(b'-' | b'0'..=b'9') => number(b, &mut pos),
            Some(b't') => literal(b, &mut pos, b"true"),
            Some(b'f') => literal(b, &mut pos, b"false"),
            Some(b'n') => literal(b, &mut pos, b"null"),
            _ => false,
        };
        if !ok {
            return false;
        }
        // After a value: a comma, the end of its container, or the end.
        loop {
            skip_whitespace(b, &mut pos);
            let Some(object) = frames.top() else {
                return pos == b.len();
            };
            match b.get(pos) {
                Some(b',') => {
                    pos += 1;
                    if object && !object_key(b, &mut pos) {
                        return false;
                    }
                    continue 'value;
                }
                Some(b'}') if object => {}
                Some(b']') if !object => {}
                _ => return false,
            }
            pos += 1;
            frames.pop();
        }
    }
}

/// The open arrays and objects, innermost last: one bit each (1 for an
/// object), 64 in a word before the stack spills to the heap.
#[derive(Default)]
struct Frames {
    bits: u64,
    depth: usize,
    spilled: Vec<u64>,
}

impl Frames {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth.is_multiple_of(64) {
            self.spilled.push(self.bits);
            self.bits = 0;
        }
        self.bits = (self.bits << 1) | u64::from(object);
        self.depth += 1;
    }

    fn top(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.bits & 1 == 1)
    }

    fn pop(&mut self) {
        self.depth -= 1;
        self.bits >>= 1;
        if self.depth > 0 && self.depth.is_multiple_of(64) {
            self.bits = self.spilled.pop().unwrap_or_default();
        }
    }
}

#[inline(always)]
fn skip_whitespace(b: &[u8], pos: &mut usize) {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(*pos) {
        *pos += 1;
    }
}

/// An object key and its colon, whitespace before each.
#[inline(always)]
fn object_key(b: &[u8], pos: &mut usize) -> bool {
    skip_whitespace(b, pos);
    if b.get(*pos) != Some(&b'"') {
        return false;
    }
    *pos += 1;
    if !string(b, pos) {
        return false;
    }
    skip_whitespace(b, pos);
    if b.get(*pos) != Some(&b':') {
        return false;
    }
    *pos += 1;
    true
}

/// The rest of a string after its opening quote.
#[inline(always)]
fn string(b: &[u8], pos: &mut usize) -> bool {
    loop {
        // Eight bytes at a time while there are eight (the rest of the
        // whole text, so short strings too), then one at a time.
        while let Some(word) = b.get(*pos..*pos + 8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            let flags = escape_flags(u64::from_le_bytes(bytes));
            if flags != 0 {
                *pos += (flags.trailing_zeros() / 8) as usize;
                break;
            }
            *pos += 8;
        }
        while b
            .get(*pos)
            .is_some_and(|&c| c >= 0x20 && c != b'"' && c != b'\\')
        {
            *pos += 1;
        }
        match b.get(*pos) {
            Some(b'"') => {
                *pos += 1;
                return true;
            }
            Some(b'\\') => {
                let ok = match b.get(*pos + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                        *pos += 2;
                        true
                    }
                    Some(b'u') => {
                        let hex = b.get(*pos + 2..*pos + 6);
                        *pos += 6;
                        hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
                    }
                    _ => false,
                };
                if !ok {
                    return false;
                }
            }
            // A raw control character, or the text ended inside the string.
            _ => return false,
        }
    }
}

#[inline(always)]
fn digits(b: &[u8], pos: &mut usize) -> usize {
    let start = *pos;
    while b.get(*pos).is_some_and(u8::is_ascii_digit) {
        *pos += 1;
    }
    *pos - start
}

#[inline(always)]
fn number(b: &[u8], pos: &mut usize) -> bool {
    if b[*pos] == b'-' {
        *pos += 1;
    }
    match b.get(*pos) {
        // Only one leading zero.
        Some(b'0') => {
            *pos += 1;
            if b.get(*pos).is_some_and(u8::is_ascii_digit) {
                return false;
            }
        }
        Some(b'1'..=b'9') => {
            digits(b, pos);
        }
        _ => return false,
    }
    if b.get(*pos) == Some(&b'.') {
        *pos += 1;
        if digits(b, pos) == 0 {
            return false;
        }
    }
    if let Some(b'e' | b'E') = b.get(*pos) {
        *pos += 1;
        if let Some(b'+' | b'-') = b.get(*pos) {
            *pos += 1;
        }
        if digits(b, pos) == 0 {
            return false;
        }
    }
    true
}

#[inline(always)]
fn literal(b: &[u8], pos: &mut usize, word: &[u8]) -> bool {
    if b.get(*pos..*pos + word.len()) == Some(word) {
        *pos += word.len();
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_says(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    #[track_caller]
    fn same(text: &str) {
        assert_eq!(is_json(text), serde_says(text), "{text:?}");
    }

    #[test]
    fn one_line_keeps_the_value_and_drops_the_line_breaks() {
        // A json column's text as pgoutput sends it for
        // '{\n "pretty": 1,\r\n\t"s": "a\\nb"\n}'::json.
        let text = "{\n \"pretty\": 1,\r\n\t\"s\": \"a\\nb\"\n}";
        assert!(is_json(text));
        let line = one_line(text);
        assert!(!line.contains(['\n', '\r', '\t']), "{line:?}");
        let parsed = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(parsed(&line), parsed(text));
        assert_eq!(parsed(&line)["s"], "a\nb");
    }

    #[test]
    fn agrees_with_serde_json_on_edge_cases() {
        let cases = [
            "",
            " ",
            "null",
            " null ",
            "nul",
            "nulll",
            "true",
            "tru",
            "false",
            "falsee",
            "0",
            "-0",
            "-",
            "01",
            "-01",
            "1.",
            "1.5",
            ".5",
            "1e",
            "1e+",
            "1e5",
            "1E-5",
            "1.5e3",
            "0e0",
            "00",
            "1x",
            "123456789012345678901234567890",
            "1.0e",
            "-a",
            "+1",
            "\"\"",
            "\"abc\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"\\u00g9\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\x\"",
            "\"\\/\"",
            "\"a\nb\"",
            "\"a\tb\"",
            "\"\u{7f}\"",
            "\"ünï ✓\"",
            "\"abc",
            "\"abc\\",
            "\"abc\\\"",
            "[]",
            "[ ]",
            "[1]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,2",
            "[[[]]]",
            "[[]",
            "[]]",
            "{}",
            "{ }",
            "{\"a\":1}",
            "{\"a\" : 1 , \"b\" : [true, null]}",
            "{\"a\":1,}",
            "{,\"a\":1}",
            "{\"a\"}",
            "{\"a\":}",
            "{a:1}",
            "{1:1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":1]",
            "[1}",
            "{\"step\": \"build\"&",
            "{\"step\": \"build\"}",
            "\t\n\r [1] \r\n\t",
            "\u{c}1",
            "1\u{c}",
            "[1]x",
            "{} {}",
            "\"a\" \"b\"",
            "[\"a\",{\"b\":[1,{}]}]",
        ];
        for text in cases {
            same(text);
        }
    }

    #[test]
    fn nesting_has_no_depth_limit() {
        for depth in [1, 63, 64, 65, 127, 128, 129, 200, 10_000] {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            same(&arrays);
            let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            same(&objects);
            let mixed: String = (0..depth)
                .map(|i| if i % 3 == 0 { "{\"k\":" } else { "[" })
                .collect();
            let closing: String = (0..depth)
                .rev()
                .map(|i| if i % 3 == 0 { "}" } else { "]" })
                .collect();
            same(&format!("{mixed}0{closing}"));
            // One bracket wrong at each depth around the spill points.
            let mut wrong = closing.clone().into_bytes();
            let at = wrong.len() / 2;
            wrong[at] = if wrong[at] == b'}' { b']' } else { b'}' };
            same(&format!("{mixed}0{}", String::from_utf8(wrong).unwrap()));
            same(&format!("{mixed}0{}", &closing[1..]));
        }
    }

    /// Random texts made of JSON's own pieces (so that most are nearly
    /// valid), and random mutations of valid texts.
    #[test]
    fn agrees_with_serde_json_on_random_texts() {
        const PIECES: &[&str] = &[
            "{", "}", "[", "]", ",", ":", " ", "\n", "\"", "\"k\"", "\"v w\"", "\\", "\\\"",
            "\\u00", "\\u0041", "0", "1", "-", ".", "e", "E", "+", "12", "true", "false", "null",
            "nul", "é", "\u{1}", "\t", "x", "\"\\n\"", "3.25", "-0.5e-7",
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = [
            r#"{"step": "build", "worker": "w-1", "attempt": 2, "log_url": "https://ci.example.com/logs/1"}"#,
            r#"[1, -2.5e10, "a\"b\\c\u00e9", [], {}, [null, true, false], {"x": {"y": [0]}}]"#,
            r#"{"a":{"b":{"c":[1,2,{"d":"e"}]}},"f":"\n\t\/"}"#,
        ];
        let mut agreeing_valid = 0;
        for _ in 0..200_000 {
            let n = (next() % 12) as usize;
            let text: String = (0..n)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            same(&text);
            agreeing_valid += usize::from(serde_says(&text));
        }
        for _ in 0..100_000 {
            let mut text = valid[(next() % 3) as usize].as_bytes().to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % text.len() as u64) as usize;
                match next() % 3 {
                    0 => {
                        text.remove(at);
                    }
                    1 => text.insert(at, b"{}[],:\"\\ 0-.eE+tfnu\x01"[(next() % 20) as usize]),
                    _ => text[at] = b"{}[],:\"\\ 0-.eE+tfnu\x01"[(next() % 20) as usize],
                }
            }
            if let Ok(text) = String::from_utf8(text) {
                same(&text);
            }
        }
        // The generator reaches valid texts too, not only errors.
        assert!(agreeing_valid > 1_000, "{agreeing_valid}");
    }
}
