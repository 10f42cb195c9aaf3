//! Chat templates: the model's `tokenizer.chat_template` (Jinja) rendered with minijinja,
//! configured like Hugging Face transformers' `apply_chat_template` (trim_blocks,
//! lstrip_blocks, loop controls, Python string methods, `raise_exception`,
//! `strftime_now`, and a `tojson` that writes what Python's `json.dumps` writes).

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

use crate::gguf::Metadata;
use crate::{Error, Result};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_string(), content: content.to_string() }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template stored in a model's metadata, with its BOS/EOS token texts.
    pub fn from_gguf(md: &Metadata) -> Result<ChatTemplate> {
        let src = md
            .get_str("tokenizer.chat_template")
            .ok_or_else(|| Error::model("this model has no chat template (tokenizer.chat_template); use a plain prompt"))?;
        let text_of = |key: &str| -> String {
            md.get_u64(key)
                .and_then(|id| md.get("tokenizer.ggml.tokens")?.as_array()?.get(id as usize)?.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        ChatTemplate::new(src, &text_of("tokenizer.ggml.bos_token_id"), &text_of("tokenizer.ggml.eos_token_id"))
    }

    /// Compiles `source`; `bos`/`eos` are the texts templates see as `bos_token`/`eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_syntax(SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().expect("default delimiters"));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::model(format!("chat template does not compile: {e}")))?;
        Ok(ChatTemplate { env, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// Renders `messages`, ending with the assistant's turn opened if `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let v = serde_json::to_value(messages).expect("messages serialize");
        self.render_json(&v, add_generation_prompt, None)
    }

    /// [`ChatTemplate::render`] with where each message's text lies in the result (see
    /// [`ChatTemplate::render_json_spans`]).
    pub fn render_spans(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<(String, Vec<std::ops::Range<usize>>)> {
        let v = serde_json::to_value(messages).expect("messages serialize");
        self.render_json_spans(&v, add_generation_prompt, None)
    }

    /// [`ChatTemplate::render_json`], and the byte ranges of the result that hold the
    /// messages' own text (each string `content`), so that text a user wrote is tokenized
    /// as text even where it spells a special token (`<|im_end|>`, `</s>`): only the
    /// template's own markup becomes control tokens.
    ///
    /// Found by rendering once more with each content replaced by a marker and putting the
    /// contents back in the markers' places; where that does not give the plain rendering
    /// back (a template that edits the text it is given), no ranges are returned and the
    /// caller tokenizes as before.
    pub fn render_json_spans(&self, messages: &serde_json::Value, add_generation_prompt: bool, tools: Option<&serde_json::Value>) -> Result<(String, Vec<std::ops::Range<usize>>)> {
        let text = self.render_json(messages, add_generation_prompt, tools)?;
        let mut marked = messages.clone();
        let mut contents = Vec::new();
        if let Some(list) = marked.as_array_mut() {
            for m in list.iter_mut() {
                if let Some(c) = m.get_mut("content").filter(|c| c.is_string()) {
                    let original = c.as_str().unwrap_or_default().to_string();
                    *c = serde_json::Value::String(format!("\u{e000}odmoe{}\u{e001}", contents.len()));
                    contents.push(original);
                }
            }
        }
        let Ok(with_markers) = self.render_json(&marked, add_generation_prompt, tools) else { return Ok((text, Vec::new())) };
        // put each content back where its marker is, in order of appearance
        let mut rebuilt = String::with_capacity(text.len());
        let mut spans = Vec::new();
        let mut rest = with_markers.as_str();
        while let Some(a) = rest.find('\u{e000}') {
            let Some(len) = rest[a..].find('\u{e001}') else { break };
            let Some(i) = rest[a + '\u{e000}'.len_utf8()..a + len].strip_prefix("odmoe").and_then(|n| n.parse::<usize>().ok()).filter(|&i| i < contents.len()) else { break };
            rebuilt.push_str(&rest[..a]);
            spans.push(rebuilt.len()..rebuilt.len() + contents[i].len());
            rebuilt.push_str(&contents[i]);
            rest = &rest[a + len + '\u{e001}'.len_utf8()..];
        }
        rebuilt.push_str(rest);
        if rebuilt != text {
            return Ok((text, Vec::new()));
        }
        Ok((text, spans))
    }

    /// Renders messages given as JSON (any extra fields the template reads pass through),
    /// with optional `tools`.
    pub fn render_json(&self, messages: &serde_json::Value, add_generation_prompt: bool, tools: Option<&serde_json::Value>) -> Result<String> {
        let t = self.env.get_template("chat").expect("added at construction");
        let ctx = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
            tools => tools.map(|t| Value::from(Serde(t))),
        };
        t.render(ctx).map_err(|e| Error::Invalid(format!("chat template: {e}")))
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers'
/// `tojson` filter calls it.
fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_json(&v, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> std::result::Result<(), JinjaError> {
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() { (",", ": ") } else { (", ", ": ") };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                // Python writes floats with a fractional part (1.0, not 1)
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&format!("{f}"));
                }
            }
        }
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).expect("string")),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_json(x, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(&k.to_string()).expect("string"));
                out.push_str(key_sep);
                py_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).expect("string")),
    }
    Ok(())
}

/// `strftime` of the current UTC time, for the codes chat templates use.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    strftime(fmt, secs)
}

fn strftime(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let month = MONTHS[(m - 1) as usize];
    let day = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('-') => match it.next() {
                Some('d') => out.push_str(&d.to_string()),
                Some('m') => out.push_str(&m.to_string()),
                Some(o) => {
                    out.push_str("%-");
                    out.push(o)
                }
                None => out.push_str("%-"),
            },
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S %A", 1_795_651_200 + 3661), "2026-11-26 01:01:01 Thursday");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let e = t.render(&[ChatMessage::new("system", "x")], true).unwrap_err().to_string();
        assert!(e.contains("no system role"), "{e}");
    }

    #[test]
    fn tojson_writes_like_python() {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}|{{ 1.0 | tojson }}|{{ 'é<' | tojson }}", "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "hi")], false).unwrap(), r#"{"role": "user", "content": "hi"}|1.0|"é<""#);
    }
}
