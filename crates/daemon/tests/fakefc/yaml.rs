//! Just enough YAML for Firecracker's Swagger file: block mappings and
//! sequences (also a sequence at its key's indent), plain, quoted and
//! multi-line scalars, flow sequences of scalars, comment lines. Parsed
//! into `serde_json::Value` (numeric keys become strings, as in JSON).

use serde_json::{Map, Value};

struct Line {
    indent: usize,
    text: String,
}

pub fn parse(text: &str) -> Result<Value, String> {
    let lines: Vec<Line> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| Line {
            indent: l.len() - l.trim_start().len(),
            text: l.trim().to_string(),
        })
        .collect();
    let mut p = Parser { lines, i: 0 };
    p.block(0)
}

struct Parser {
    lines: Vec<Line>,
    i: usize,
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: rest` or `key:` when the line is a mapping entry.
fn split_key(text: &str) -> Option<(String, String)> {
    let (key, rest) = if let Some(k) = text.strip_suffix(':') {
        (k, "")
    } else {
        let at = text.find(": ")?;
        (&text[..at], &text[at + 2..])
    };
    let key = key.trim();
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_$/{}.-".contains(c));
    let quoted = key.len() >= 2 && key.starts_with('"') && key.ends_with('"');
    (plain || quoted).then(|| (key.trim_matches('"').to_string(), rest.trim().to_string()))
}

impl Parser {
    fn peek(&self) -> Option<&Line> {
        self.lines.get(self.i)
    }

    fn block(&mut self, indent: usize) -> Result<Value, String> {
        match self.peek() {
            Some(l) if is_item(&l.text) => self.seq(l.indent),
            Some(l) => self.map(l.indent.max(indent)),
            None => Ok(Value::Null),
        }
    }

    fn map(&mut self, indent: usize) -> Result<Value, String> {
        let mut m = Map::new();
        while let Some(l) = self.peek() {
            if l.indent != indent || is_item(&l.text) {
                break;
            }
            let (key, rest) =
                split_key(&l.text).ok_or_else(|| format!("line {:?}: expected `key:`", l.text))?;
            self.i += 1;
            let value = if rest.is_empty() {
                match self.peek() {
                    Some(n) if n.indent == indent && is_item(&n.text) => self.seq(indent)?,
                    Some(n) if n.indent > indent => {
                        if is_item(&n.text) || split_key(&n.text).is_some() {
                            self.block(n.indent)?
                        } else {
                            scalar(&self.continued(String::new(), indent))
                        }
                    }
                    _ => Value::Null,
                }
            } else {
                scalar(&self.continued(rest, indent))
            };
            m.insert(key, value);
        }
        Ok(Value::Object(m))
    }

    /// A scalar that goes on over the lines deeper than `indent`.
    fn continued(&mut self, mut first: String, indent: usize) -> String {
        while let Some(n) = self.peek() {
            if n.indent <= indent {
                break;
            }
            if !first.is_empty() {
                first.push(' ');
            }
            first.push_str(&n.text);
            self.i += 1;
        }
        first
    }

    fn seq(&mut self, indent: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        while let Some(l) = self.peek() {
            if l.indent != indent || !is_item(&l.text) {
                break;
            }
            let rest = l.text[1..].trim().to_string();
            if split_key(&rest).is_some() {
                // `- key: value`: a mapping whose first entry sits after the dash.
                self.lines[self.i] = Line {
                    indent: indent + 2,
                    text: rest,
                };
                items.push(self.map(indent + 2)?);
            } else {
                self.i += 1;
                items.push(scalar(&self.continued(rest, indent)));
            }
        }
        Ok(Value::Array(items))
    }
}

fn scalar(s: &str) -> Value {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Value::String(inner.replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Value::String(inner.replace("''", "'"));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Value::Array(
            inner
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(scalar)
                .collect(),
        );
    }
    if s == "{}" {
        return Value::Object(Map::new());
    }
    match s {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" | "~" | "" => return Value::Null,
        _ => {}
    }
    if let Ok(n) = s.parse::<i64>() {
        return Value::from(n);
    }
    Value::String(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_the_swagger_file_uses() {
        let doc = parse(
            "a:\n  b: \"x: y\"\n  c:\n  - name: n\n    in: body\n  - 7\n  d:\n    two lines\n    of text\n  e: [One, Two]\n  200:\n    ok: true\n",
        )
        .unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"a": {"b": "x: y", "c": [{"name": "n", "in": "body"}, 7],
                "d": "two lines of text", "e": ["One", "Two"], "200": {"ok": true}}})
        );
    }
}
