//! The request body: `{"id","type","timestamp","tenant_id","data","previous"?}`.
//!
//! `data` and `previous` arrive from Postgres as JSON text and are spliced in
//! unparsed, unless the endpoint masks fields.

use serde_json::Value;

/// Builds the envelope. `data` and `previous` must be JSON texts.
pub(crate) fn envelope(
    id: &str,
    event_type: &str,
    timestamp: &str,
    tenant_id: Option<&str>,
    data: &str,
    previous: Option<&str>,
) -> String {
    let mut out = String::with_capacity(96 + event_type.len() + data.len() + previous.map_or(0, str::len));
    out.push_str("{\"id\":");
    push_json_str(&mut out, id);
    out.push_str(",\"type\":");
    push_json_str(&mut out, event_type);
    out.push_str(",\"timestamp\":");
    push_json_str(&mut out, timestamp);
    out.push_str(",\"tenant_id\":");
    match tenant_id {
        Some(t) => push_json_str(&mut out, t),
        None => out.push_str("null"),
    }
    out.push_str(",\"data\":");
    out.push_str(data);
    if let Some(p) = previous {
        out.push_str(",\"previous\":");
        out.push_str(p);
    }
    out.push('}');
    out
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str always serialises"));
}

/// Masks the named fields of a JSON text (`phone`, or a dotted path such
/// as `customer.phone`); fields that are absent are ignored.
pub(crate) fn mask(json: &str, fields: &[String]) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(json) else {
        return json.to_owned();
    };
    mask_in(&mut value, fields);
    value.to_string()
}

/// [`mask`] on a parsed value, in place.
pub(crate) fn mask_in(value: &mut Value, fields: &[String]) {
    for field in fields {
        let mut node = Some(&mut *value);
        let mut parts = field.split('.').peekable();
        while let (Some(part), Some(Value::Object(map))) = (parts.next(), node.take()) {
            if parts.peek().is_none() {
                if let Some(v) = map.get_mut(part) {
                    *v = mask_value(v);
                }
            } else {
                node = map.get_mut(part);
            }
        }
    }
}

/// `0912345678` → `0912***5678`: the first and last four characters stay
/// when the value is long enough to keep something hidden.
fn mask_value(v: &Value) -> Value {
    let text = match v {
        Value::Null => return Value::Null,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let chars: Vec<char> = text.chars().collect();
    let masked = if chars.len() >= 10 {
        format!(
            "{}***{}",
            chars[..4].iter().collect::<String>(),
            chars[chars.len() - 4..].iter().collect::<String>()
        )
    } else {
        "***".to_owned()
    };
    Value::String(masked)
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_valid_json_with_the_contract_fields() {
        let b = envelope(
            "e\"1",
            "appointment.created",
            "2024-01-01T00:00:00.000Z",
            None,
            r#"{"a":1}"#,
            None,
        );
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["id"], "e\"1");
        assert_eq!(v["type"], "appointment.created");
        assert_eq!(v["tenant_id"], Value::Null);
        assert_eq!(v["data"]["a"], 1);
        assert!(v.get("previous").is_none());
        let b = envelope("e", "t", "ts", Some("acme"), "{}", Some(r#"{"status":"open"}"#));
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["previous"]["status"], "open");
        assert_eq!(v["tenant_id"], "acme");
    }

    #[test]
    fn masking_phone_numbers() {
        let out = mask(
            r#"{"phone":"0912345678","customer":{"phone":"+15550100999"},"short":"123","n":null}"#,
            &[
                "phone".into(),
                "customer.phone".into(),
                "short".into(),
                "n".into(),
                "missing.x".into(),
            ],
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["phone"], "0912***5678");
        assert_eq!(v["customer"]["phone"], "+155***0999");
        assert_eq!(v["short"], "***");
        assert_eq!(v["n"], Value::Null);
    }
}
