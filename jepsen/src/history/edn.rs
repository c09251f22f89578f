//! A small EDN reader for the subset Jepsen histories use.
//!
//! It reads nil, booleans, numbers, strings, characters, keywords, symbols, lists, vectors, maps and sets, skips
//! comments (`;`) and discarded forms (`#_`), and reads a tagged element (`#jepsen.history.Op{...}`, `#inst "..."`)
//! as its value with the tag dropped. It never panics: bad input is an [`EdnError`] with a line number, and nesting
//! deeper than [`MAX_DEPTH`] is refused rather than overflowing the stack.

use crate::history::value::Value;

/// How deeply collections may nest.
pub(crate) const MAX_DEPTH: usize = 200;

/// Why an EDN text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub(crate) struct EdnError {
    /// The 1-based line where the problem was found.
    pub(crate) line: usize,
    /// What was wrong.
    pub(crate) message: String,
}

/// Reads the top-level forms of a history: either one vector (or list) holding every form, or a sequence of forms.
/// Each form comes with the line it starts on.
pub(crate) fn read_history_forms(text: &str) -> Result<Vec<(usize, Value)>, EdnError> {
    let mut r = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    r.skip_ws(0)?;
    let mut forms = Vec::new();
    if let Some(open @ (b'[' | b'(')) = r.peek() {
        let close = if open == b'[' { b']' } else { b')' };
        r.pos += 1;
        loop {
            r.skip_ws(0)?;
            match r.peek() {
                None => {
                    return Err(r.err(format!(
                        "the history is not closed: `{}` is missing",
                        char::from(close)
                    )));
                }
                Some(b) if b == close => {
                    r.pos += 1;
                    break;
                }
                Some(_) => {
                    let line = r.line;
                    if let Some(v) = r.form(1)? {
                        forms.push((line, v));
                    }
                }
            }
        }
        r.skip_ws(0)?;
        if r.peek().is_some() {
            return Err(r.err("unexpected text after the history's closing bracket"));
        }
    } else {
        while r.peek().is_some() {
            let line = r.line;
            if let Some(v) = r.form(0)? {
                forms.push((line, v));
            }
            r.skip_ws(0)?;
        }
    }
    Ok(forms)
}

/// Reads exactly one form (used by tests and small helpers).
#[cfg(test)]
pub(crate) fn read_one(text: &str) -> Result<Value, EdnError> {
    let mut r = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    r.skip_ws(0)?;
    let v = r.form(0)?.ok_or_else(|| r.err("no form"))?;
    r.skip_ws(0)?;
    if r.peek().is_some() {
        return Err(r.err("unexpected text after the form"));
    }
    Ok(v)
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: usize,
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b',' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'"' | b';')
}

impl<'a> Reader<'a> {
    fn err(&self, message: impl Into<String>) -> EdnError {
        EdnError {
            line: self.line,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    /// Skips whitespace, commas, comments and `#_` discarded forms.
    fn skip_ws(&mut self, depth: usize) -> Result<(), EdnError> {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b',' => self.pos += 1,
                b if b.is_ascii_whitespace() => self.pos += 1,
                b';' => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                b'#' if self.peek_at(1) == Some(b'_') => {
                    self.pos += 2;
                    // The discarded form is read and dropped; nested discards count towards the depth limit.
                    self.form(depth + 1)?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Reads one form. `Ok(None)` only when the form was a discard at the very end of a collection or the input.
    fn form(&mut self, depth: usize) -> Result<Option<Value>, EdnError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("collections nest deeper than {MAX_DEPTH} levels")));
        }
        self.skip_ws(depth)?;
        let Some(b) = self.peek() else {
            return Err(self.err("unexpected end of input"));
        };
        let v = match b {
            b'(' | b'[' => {
                let close = if b == b'(' { b')' } else { b']' };
                self.pos += 1;
                Value::List(self.items(close, depth)?)
            }
            b'{' => {
                self.pos += 1;
                let items = self.items(b'}', depth)?;
                if items.len() % 2 != 0 {
                    return Err(self.err("a map has an odd number of forms"));
                }
                let mut entries = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                Value::map(entries)
            }
            b'#' => match self.peek_at(1) {
                Some(b'{') => {
                    self.pos += 2;
                    Value::set(self.items(b'}', depth)?)
                }
                Some(b'#') => {
                    self.pos += 2;
                    let tok = self.token();
                    match tok {
                        "Inf" | "-Inf" | "NaN" => Value::Number(format!("##{tok}")),
                        _ => return Err(self.err(format!("unknown symbolic value ##{tok}"))),
                    }
                }
                Some(c) if c.is_ascii_alphabetic() => {
                    // A tagged element: drop the tag, keep the value.
                    self.pos += 1;
                    let _tag = self.token();
                    match self.form(depth + 1)? {
                        Some(v) => v,
                        None => return Err(self.err("a tag is not followed by a value")),
                    }
                }
                _ => return Err(self.err("unsupported dispatch after `#`")),
            },
            b'"' => self.string()?,
            b'\\' => self.character()?,
            b')' | b']' | b'}' => return Err(self.err(format!("unexpected `{}`", char::from(b)))),
            b':' => {
                self.pos += 1;
                let tok = self.token();
                if tok.is_empty() {
                    return Err(self.err("an empty keyword"));
                }
                Value::Keyword(tok.to_owned())
            }
            _ => {
                let start_is_number = b.is_ascii_digit()
                    || (matches!(b, b'+' | b'-') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()));
                let tok = self.token();
                if tok.is_empty() {
                    return Err(self.err(format!("unexpected character `{}`", char::from(b))));
                }
                if start_is_number {
                    number(tok).ok_or_else(|| self.err(format!("not a number: `{tok}`")))?
                } else {
                    match tok {
                        "nil" => Value::Nil,
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        _ => Value::Symbol(tok.to_owned()),
                    }
                }
            }
        };
        Ok(Some(v))
    }

    fn items(&mut self, close: u8, depth: usize) -> Result<Vec<Value>, EdnError> {
        let start_line = self.line;
        let mut items = Vec::new();
        loop {
            self.skip_ws(depth + 1)?;
            match self.peek() {
                None => {
                    return Err(EdnError {
                        line: start_line,
                        message: format!("`{}` is never closed", char::from(close)),
                    });
                }
                Some(b) if b == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(b @ (b')' | b']' | b'}')) => {
                    return Err(self.err(format!(
                        "expected `{}`, found `{}`",
                        char::from(close),
                        char::from(b)
                    )));
                }
                Some(_) => {
                    if let Some(v) = self.form(depth + 1)? {
                        items.push(v);
                    }
                }
            }
        }
    }

    /// Reads a symbol-like token up to the next delimiter. Delimiters are ASCII, so the slice is valid UTF-8.
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if is_delimiter(b) {
                break;
            }
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or("")
    }

    fn string(&mut self) -> Result<Value, EdnError> {
        let start_line = self.line;
        self.pos += 1; // the opening quote
        let mut out = String::new();
        let mut run_start = self.pos;
        loop {
            let Some(b) = self.peek() else {
                return Err(EdnError {
                    line: start_line,
                    message: "a string is never closed".into(),
                });
            };
            match b {
                b'"' => {
                    out.push_str(self.text.get(run_start..self.pos).unwrap_or(""));
                    self.pos += 1;
                    return Ok(Value::Str(out));
                }
                b'\\' => {
                    out.push_str(self.text.get(run_start..self.pos).unwrap_or(""));
                    self.pos += 1;
                    let esc = self
                        .peek()
                        .ok_or_else(|| self.err("a string ends inside an escape"))?;
                    self.pos += 1;
                    match esc {
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'u' => {
                            let hex = self.text.get(self.pos..self.pos + 4).unwrap_or("");
                            let c = u32::from_str_radix(hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.err("a bad \\u escape in a string"))?;
                            self.pos += 4;
                            out.push(c);
                        }
                        other => {
                            return Err(self.err(format!("unknown string escape `\\{}`", char::from(other))));
                        }
                    }
                    run_start = self.pos;
                }
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                _ => self.pos += 1,
            }
        }
    }

    fn character(&mut self) -> Result<Value, EdnError> {
        self.pos += 1; // the backslash
        // A character is at least one char, even a delimiter (`\(`); then the rest of a named character.
        let rest = self.text.get(self.pos..).unwrap_or("");
        let Some(first) = rest.chars().next() else {
            return Err(self.err("input ends after `\\`"));
        };
        self.pos += first.len_utf8();
        let start = self.pos - first.len_utf8();
        while let Some(b) = self.peek() {
            if is_delimiter(b) {
                break;
            }
            self.pos += 1;
        }
        let tok = self.text.get(start..self.pos).unwrap_or("");
        let c = match tok {
            "newline" => '\n',
            "space" => ' ',
            "tab" => '\t',
            "return" => '\r',
            "formfeed" => '\u{c}',
            "backspace" => '\u{8}',
            _ if tok.chars().count() == 1 => first,
            _ if tok.len() == 5 && tok.starts_with('u') => {
                u32::from_str_radix(tok.get(1..).unwrap_or(""), 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| self.err(format!("a bad character `\\{tok}`")))?
            }
            _ => return Err(self.err(format!("a bad character `\\{tok}`"))),
        };
        Ok(Value::Str(c.to_string()))
    }
}

/// Reads a number token: an `i64` when it fits, else kept as written if it looks like an EDN number.
fn number(tok: &str) -> Option<Value> {
    if let Ok(i) = tok.parse::<i64>() {
        return Some(Value::Int(i));
    }
    let body = tok.strip_prefix(['+', '-']).unwrap_or(tok);
    let body = body.strip_suffix(['N', 'M']).unwrap_or(body);
    let plausible = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-' | b'/'));
    let parses = body.parse::<f64>().is_ok()
        || body.split_once('/').is_some_and(|(n, d)| {
            !n.is_empty()
                && !d.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && d.bytes().all(|b| b.is_ascii_digit())
        });
    (plausible && parses).then(|| Value::Number(tok.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(s: &str) -> Value {
        Value::Keyword(s.into())
    }

    #[test]
    fn reads_a_jepsen_op() {
        let v = read_one("{:process 3, :type :ok, :f :cas, :value [1 2], :time 1234}").unwrap();
        assert_eq!(v.get("type"), Some(&kw("ok")));
        assert_eq!(
            v.get("value"),
            Some(&Value::List(vec![Value::Int(1), Value::Int(2)]))
        );
        assert_eq!(v.get("time"), Some(&Value::Int(1234)));
    }

    #[test]
    fn reads_scalars() {
        assert_eq!(read_one("nil").unwrap(), Value::Nil);
        assert_eq!(read_one("-12").unwrap(), Value::Int(-12));
        assert_eq!(read_one("12N").unwrap(), Value::Number("12N".into()));
        assert_eq!(read_one("1.5e3").unwrap(), Value::Number("1.5e3".into()));
        assert_eq!(read_one("1/3").unwrap(), Value::Number("1/3".into()));
        assert_eq!(
            read_one("99999999999999999999").unwrap(),
            Value::Number("99999999999999999999".into())
        );
        assert_eq!(read_one(r#""a\"b\u0041""#).unwrap(), Value::Str("a\"bA".into()));
        assert_eq!(read_one(r"\newline").unwrap(), Value::Str("\n".into()));
        assert_eq!(read_one(r"\(").unwrap(), Value::Str("(".into()));
        assert_eq!(read_one("foo/bar").unwrap(), Value::Symbol("foo/bar".into()));
        assert_eq!(read_one("##Inf").unwrap(), Value::Number("##Inf".into()));
    }

    #[test]
    fn reads_collections_tags_comments_and_discards() {
        let v =
            read_one("#jepsen.history.Op{:a #{3 1 1} ; comment\n :b (1 #_ 2 3) :c #inst \"2020\"}").unwrap();
        assert_eq!(v.get("a"), Some(&Value::Set(vec![Value::Int(1), Value::Int(3)])));
        assert_eq!(v.get("b"), Some(&Value::List(vec![Value::Int(1), Value::Int(3)])));
        assert_eq!(v.get("c"), Some(&Value::Str("2020".into())));
    }

    #[test]
    fn history_forms_either_shape() {
        let a = read_history_forms("[{:a 1}\n {:a 2}]").unwrap();
        let b = read_history_forms("{:a 1}\n{:a 2}\n").unwrap();
        let c = read_history_forms("; a list, as some Knossos fixtures are\n({:a 1}\n {:a 2})").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            c.iter().map(|f| &f.1).collect::<Vec<_>>(),
            a.iter().map(|f| &f.1).collect::<Vec<_>>()
        );
        assert_eq!(a[1].0, 2);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let bad = [
            "",
            "[",
            "{:a}",
            "(1 2]",
            "\"abc",
            "#",
            "#{",
            "##Foo",
            "\\",
            ":",
            "1x",
            "#_",
            "{:a 1} ]",
            "[1] 2",
            "\"\\u12\"",
            "\\uZZZZ",
            "#tag",
            ")",
            "\"\\q\"",
            "#<obj>",
        ];
        for text in bad {
            let one = read_one(text);
            let many = read_history_forms(text);
            assert!(one.is_err() || many.is_err(), "accepted bad input {text:?}");
        }
        let deep = "[".repeat(10_000);
        assert!(read_one(&deep).is_err());
        let deep_discard = "#_".repeat(10_000);
        assert!(read_one(&deep_discard).is_err());
    }

    #[test]
    fn never_panics_on_random_fragments() {
        // A seeded stream of EDN-ish fragments glued at random; the reader may accept or refuse, never panic.
        let fragments = [
            "[",
            "]",
            "{",
            "}",
            "(",
            ")",
            "#{",
            "#_",
            "##",
            "#inst",
            "#",
            ":type",
            ":ok",
            " ",
            "\n",
            ",",
            ";c\n",
            "\"s",
            "\"",
            "\\",
            "\\u00e9",
            "\\newline",
            "12",
            "-3",
            "1.5e",
            "7N",
            "1/",
            "nil",
            "é",
            "\u{0}",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..next() % 24 {
                text.push_str(fragments[(next() % fragments.len() as u64) as usize]);
            }
            let _ = read_history_forms(&text);
            let _ = read_one(&text);
        }
    }

    #[test]
    fn never_panics_on_mangled_histories() {
        // Every prefix and every one-byte corruption of a real-looking history must be handled without a panic.
        let good = "[{:process 0, :type :invoke, :f :cas, :value [1 \"é\\n\"]}\n {:process :nemesis, :type :info, \
                    :f :start, :value #{\\a 1.5}} ; x\n #_ {:skip 1}]";
        for end in 0..=good.len() {
            if let Some(prefix) = good.get(..end) {
                let _ = read_history_forms(prefix);
            }
        }
        let specials = [
            "[", "]", "{", "}", "(", ")", "#", "\\", "\"", ";", ":", "_", "N", "/", " ",
        ];
        for i in 0..good.len() {
            for s in specials {
                if let (Some(a), Some(b)) = (good.get(..i), good.get(i + 1..)) {
                    let _ = read_history_forms(&format!("{a}{s}{b}"));
                }
            }
        }
    }
}
