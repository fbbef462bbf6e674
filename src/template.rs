//! Body and header templates: what a receiver gets, shaped by configuration
//! (`endpoint add|update --body-template`, `--header 'name: …{{path}}…'`).
//!
//! Pure: [`Template::parse`] compiles a template once, when endpoints are
//! loaded (and checks it when one is configured); [`Template::render`] fills
//! it from an event's [`Values`].
//!
//! - A string that is exactly `"{{path}}"` becomes the value at that path
//!   with its JSON type (absent: `null`).
//! - `{{path}}` inside a longer string is interpolated as text: strings
//!   unquoted, other values as their JSON text, absent or `null` as nothing.
//! - A member `"...": "{{data}}"` merges that object's members in; the
//!   template's own members win.
//!
//! Paths start at `id`, `type`, `timestamp`, `tenant_id`, `data` or
//! `previous`; `data` and `previous` take dotted steps (`data.customer.id`,
//! `data.items.0` for an array's first element).

use std::fmt;

use serde_json::Value;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

fn err<T>(msg: String) -> Result<T, TemplateError> {
    Err(TemplateError(msg))
}

/// The member name that merges an object in.
pub(crate) const SPREAD: &str = "...";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Id,
    Type,
    Timestamp,
    TenantId,
    Data,
    Previous,
}

/// `data.customer.id`: a root and the steps below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path {
    root: Root,
    steps: Vec<String>,
}

impl Path {
    fn parse(text: &str) -> Result<Path, TemplateError> {
        let text = text.trim();
        if text.is_empty() {
            return err("empty placeholder {{}}".into());
        }
        let mut parts = text.split('.');
        let first = parts.next().unwrap_or_default();
        let root = match first {
            "id" => Root::Id,
            "type" => Root::Type,
            "timestamp" => Root::Timestamp,
            "tenant_id" => Root::TenantId,
            "data" => Root::Data,
            "previous" => Root::Previous,
            other => {
                return err(format!(
                    "unknown placeholder {{{{{text}}}}}: {other:?} is not one of id, type, timestamp, \
                     tenant_id, data, previous"
                ))
            }
        };
        let steps: Vec<String> = parts.map(str::to_owned).collect();
        if steps.iter().any(|s| s.trim().is_empty()) {
            return err(format!("placeholder {{{{{text}}}}} has an empty step"));
        }
        if !steps.is_empty() && !matches!(root, Root::Data | Root::Previous) {
            return err(format!(
                "placeholder {{{{{text}}}}}: {first} is a string and has no members (only data and previous do)"
            ));
        }
        Ok(Path { root, steps })
    }

    /// Can the value at this path be an object (so it may be merged in)?
    fn may_be_object(&self) -> bool {
        matches!(self.root, Root::Data | Root::Previous)
    }

    fn resolve<'a>(&self, v: &'a Values<'a>) -> Got<'a> {
        let start = match self.root {
            Root::Id => return Got::Str(v.id),
            Root::Type => return Got::Str(v.event_type),
            Root::Timestamp => return Got::Str(v.timestamp),
            Root::TenantId => return v.tenant_id.map_or(Got::Absent, Got::Str),
            Root::Data => v.data,
            Root::Previous => match v.previous {
                Some(p) => p,
                None => return Got::Absent,
            },
        };
        let mut node = start;
        for step in &self.steps {
            let next = match node {
                Value::Object(m) => m.get(step),
                Value::Array(a) => step.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return Got::Absent,
            }
        }
        Got::Json(node)
    }
}

/// A value looked up at send time.
enum Got<'a> {
    Str(&'a str),
    Json(&'a Value),
    Absent,
}

/// What a template is filled from: one event, as its envelope has it
/// (`data` and `previous` already masked for the endpoint).
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub timestamp: &'a str,
    pub tenant_id: Option<&'a str>,
    pub data: &'a Value,
    pub previous: Option<&'a Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    At(Path),
}

/// A string with `{{path}}` placeholders, rendered as text (header values,
/// and strings of a body template that are more than one placeholder).
#[derive(Debug, Clone, PartialEq)]
pub struct Text(Vec<Piece>);

impl Text {
    pub fn parse(s: &str) -> Result<Text, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return err(format!(
                    "unterminated placeholder in {s:?}: \"{{{{\" without \"}}}}\""
                ));
            };
            pieces.push(Piece::At(Path::parse(&after[..close])?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Text(pieces))
    }

    /// The text itself when it has no placeholder.
    pub fn constant(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::At(_) => return None,
            }
        }
        Some(out)
    }

    pub fn render(&self, v: &Values<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::At(path) => match path.resolve(v) {
                    Got::Str(s) => out.push_str(s),
                    Got::Json(Value::String(s)) => out.push_str(s),
                    Got::Json(Value::Null) | Got::Absent => {}
                    Got::Json(other) => out.push_str(&other.to_string()),
                },
            }
        }
        out
    }

    /// Exactly one placeholder and nothing else (`"{{data}}"`).
    fn single(&self) -> Option<&Path> {
        match self.0.as_slice() {
            [Piece::At(p)] => Some(p),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// No placeholder anywhere below: written as it is.
    Const(Value),
    /// `"{{path}}"`: the value, type kept.
    At(Path),
    /// A string with placeholders in it.
    Text(Text),
    Array(Vec<Node>),
    Object {
        members: Vec<(String, Node)>,
        /// `"...": "{{path}}"`: merged in, under the template's own members.
        spread: Option<Path>,
    },
}

/// A compiled body template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Node);

impl Template {
    /// Compiles a template given as JSON text.
    pub fn parse_str(text: &str) -> Result<Template, TemplateError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| TemplateError(format!("not valid JSON: {e}")))?;
        Template::parse(&value)
    }

    pub fn parse(value: &Value) -> Result<Template, TemplateError> {
        Ok(Template(compile(value)?))
    }

    /// The request body for one event.
    pub fn render(&self, v: &Values<'_>) -> String {
        let mut out = String::with_capacity(256 + v.data.as_object().map_or(0, |m| m.len() * 24));
        write_node(&self.0, v, &mut out);
        out
    }
}

fn compile(value: &Value) -> Result<Node, TemplateError> {
    Ok(match value {
        Value::String(s) => {
            let text = Text::parse(s)?;
            if let Some(c) = text.constant() {
                Node::Const(Value::String(c))
            } else if let Some(p) = text.single() {
                Node::At(p.clone())
            } else {
                Node::Text(text)
            }
        }
        Value::Array(items) => {
            let nodes = items.iter().map(compile).collect::<Result<Vec<_>, _>>()?;
            if nodes.iter().all(|n| matches!(n, Node::Const(_))) {
                Node::Const(value.clone())
            } else {
                Node::Array(nodes)
            }
        }
        Value::Object(map) => {
            let mut members = Vec::with_capacity(map.len());
            let mut spread = None;
            for (k, v) in map {
                if k == SPREAD {
                    let path = v
                        .as_str()
                        .map(Text::parse)
                        .transpose()?
                        .and_then(|t| t.single().cloned())
                        .filter(Path::may_be_object);
                    match path {
                        Some(p) => spread = Some(p),
                        None => {
                            return err(format!(
                                "\"...\" must be exactly one placeholder of an object path \
                                 (\"{{{{data}}}}\", \"{{{{data.customer}}}}\", \"{{{{previous}}}}\"); got {v}"
                            ))
                        }
                    }
                } else {
                    members.push((k.clone(), compile(v)?));
                }
            }
            if spread.is_none() && members.iter().all(|(_, n)| matches!(n, Node::Const(_))) {
                Node::Const(value.clone())
            } else {
                Node::Object { members, spread }
            }
        }
        other => Node::Const(other.clone()),
    })
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str always serialises"));
}

fn push_json(out: &mut String, v: &Value) {
    out.push_str(&serde_json::to_string(v).expect("a Value always serialises"));
}

fn write_node(node: &Node, v: &Values<'_>, out: &mut String) {
    match node {
        Node::Const(c) => push_json(out, c),
        Node::At(p) => match p.resolve(v) {
            Got::Str(s) => push_json_str(out, s),
            Got::Json(j) => push_json(out, j),
            Got::Absent => out.push_str("null"),
        },
        Node::Text(t) => push_json_str(out, &t.render(v)),
        Node::Array(items) => {
            out.push('[');
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_node(n, v, out);
            }
            out.push(']');
        }
        Node::Object { members, spread } => {
            out.push('{');
            let mut first = true;
            let mut sep = |out: &mut String| {
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
            };
            if let Some(Got::Json(Value::Object(merged))) = spread.as_ref().map(|p| p.resolve(v)) {
                for (k, val) in merged {
                    if members.iter().any(|(m, _)| m == k) {
                        continue; // the template's own member wins
                    }
                    sep(out);
                    push_json_str(out, k);
                    out.push(':');
                    push_json(out, val);
                }
            }
            for (k, n) in members {
                sep(out);
                push_json_str(out, k);
                out.push(':');
                write_node(n, v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values<'a>(data: &'a Value, previous: Option<&'a Value>) -> Values<'a> {
        Values {
            id: "0190e1f0-0000-7000-8000-000000000001",
            event_type: "task.created",
            timestamp: "2026-01-02T03:04:05.678Z",
            tenant_id: None,
            data,
            previous,
        }
    }

    fn render(template: Value, data: Value) -> Value {
        let t = Template::parse(&template).unwrap();
        let out = t.render(&values(&data, None));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
    }

    #[test]
    fn whole_placeholders_keep_their_type() {
        let data =
            json!({"id": 7, "title": "Write", "tags": ["a", "b"], "done": false, "owner": {"id": "u1"}});
        let got = render(
            json!({"event": "{{type}}", "task": "{{data}}", "n": "{{data.id}}", "tag": "{{ data.tags.1 }}",
                   "done": "{{data.done}}", "owner": "{{data.owner}}", "none": "{{data.missing.x}}",
                   "tenant": "{{tenant_id}}", "prev": "{{previous}}", "fixed": [1, {"k": "v"}]}),
            data.clone(),
        );
        assert_eq!(
            got,
            json!({"event": "task.created", "task": data, "n": 7, "tag": "b", "done": false,
                   "owner": {"id": "u1"}, "none": null, "tenant": null, "prev": null, "fixed": [1, {"k": "v"}]})
        );
    }

    #[test]
    fn placeholders_inside_text_interpolate() {
        let data = json!({"appointment": {"id": 42}, "name": "Ana", "obj": {"a": 1}, "nil": null});
        let got = render(
            json!({"key": "appointment:{{data.appointment.id}}:{{type}}", "hi": "Hi {{data.name}}!",
                   "obj": "o={{data.obj}}", "gone": "[{{data.nope}}][{{data.nil}}]",
                   "list": ["{{id}}", "at {{timestamp}}"]}),
            data,
        );
        assert_eq!(got["key"], "appointment:42:task.created");
        assert_eq!(got["hi"], "Hi Ana!");
        assert_eq!(got["obj"], r#"o={"a":1}"#);
        assert_eq!(got["gone"], "[][]");
        assert_eq!(
            got["list"],
            json!([
                "0190e1f0-0000-7000-8000-000000000001",
                "at 2026-01-02T03:04:05.678Z"
            ])
        );
    }

    #[test]
    fn spread_merges_an_object_under_the_templates_own_members() {
        let data = json!({"status": "new", "contact_email": "a@example.com", "event_type": "data's own",
                          "pricing": {"total": 12.5}});
        let got = render(
            json!({"event_type": "{{type}}", "request_id": "{{id}}", "submitted_at": "{{timestamp}}",
                   "source_app": "order-form", "...": "{{data}}"}),
            data,
        );
        assert_eq!(
            got,
            json!({"event_type": "task.created", "request_id": "0190e1f0-0000-7000-8000-000000000001",
                   "submitted_at": "2026-01-02T03:04:05.678Z", "source_app": "order-form", "status": "new",
                   "contact_email": "a@example.com", "pricing": {"total": 12.5}})
        );
        // Nothing to merge (absent, or not an object): just the members.
        assert_eq!(
            render(json!({"a": 1, "...": "{{data.x}}"}), json!({})),
            json!({"a": 1})
        );
        assert_eq!(render(json!({"...": "{{data}}"}), json!([1])), json!({}));
        // The whole body may be one placeholder.
        assert_eq!(render(json!("{{data}}"), json!({"x": 1})), json!({"x": 1}));
    }

    #[test]
    fn constants_and_escaping() {
        let got = render(
            json!({"q": "say \"hi\"\n", "n": 1.5, "b": true, "z": null}),
            json!({}),
        );
        assert_eq!(got, json!({"q": "say \"hi\"\n", "n": 1.5, "b": true, "z": null}));
        let data = json!({"s": "a\"b\\c"});
        assert_eq!(render(json!({"t": "x{{data.s}}"}), data)["t"], "xa\"b\\c");
    }

    #[test]
    fn bad_templates_are_refused_naming_the_problem() {
        let bad = |t: &str| Template::parse_str(t).unwrap_err().0;
        assert!(
            bad("{not json").contains("not valid JSON"),
            "{}",
            bad("{not json")
        );
        let e = bad(r#"{"a": "{{payload.id}}"}"#);
        assert!(
            e.contains("unknown placeholder {{payload.id}}") && e.contains("\"payload\""),
            "{e}"
        );
        let e = bad(r#"{"a": "x {{data.id"}"#);
        assert!(e.contains("unterminated placeholder"), "{e}");
        assert!(bad(r#"{"a": "{{}}"}"#).contains("empty placeholder"));
        assert!(bad(r#"{"a": "{{data..x}}"}"#).contains("empty step"));
        assert!(bad(r#"{"a": "{{type.x}}"}"#).contains("no members"));
        for spread in [
            r#""{{type}}""#,
            r#""x{{data}}""#,
            r#""data""#,
            "1",
            r#""{{data}} {{id}}""#,
        ] {
            let e = bad(&format!(r#"{{"...": {spread}}}"#));
            assert!(
                e.contains("\"...\" must be exactly one placeholder"),
                "{spread}: {e}"
            );
        }
        assert!(Template::parse_str(r#"{"...": "{{ previous }}"}"#).is_ok());
    }

    #[test]
    fn header_text() {
        let t = Text::parse("appointment:{{data.appointment.id}}:{{type}}").unwrap();
        assert_eq!(t.constant(), None);
        let data = json!({"appointment": {"id": "a-1"}});
        assert_eq!(t.render(&values(&data, None)), "appointment:a-1:task.created");
        assert_eq!(Text::parse("plain").unwrap().constant().as_deref(), Some("plain"));
        assert!(Text::parse("{{nope}}").is_err());
        let prev = json!({"status": "open"});
        let t = Text::parse("{{previous.status}}->{{data.status}}").unwrap();
        assert_eq!(
            t.render(&values(&json!({"status": "done"}), Some(&prev))),
            "open->done"
        );
    }
}
