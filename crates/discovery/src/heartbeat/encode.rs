//! The canonical encoding of a heartbeat: the exact bytes its signature covers, and the body an announcer
//! publishes (see the rules on [`Heartbeat`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::Heartbeat;

/// The canonical encoding (see [`Heartbeat`]): the bytes `sig` covers.
pub(crate) fn canonical(hb: &Heartbeat) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + hb.id.len() + hb.addr.len());
    out.extend_from_slice(b"{\"v\":1,\"id\":");
    write_str(&mut out, &hb.id);
    out.extend_from_slice(b",\"addr\":");
    write_str(&mut out, &hb.addr);
    for (key, n) in [
        ("epoch", hb.epoch),
        ("seq", hb.seq),
        ("sent_at_ms", hb.sent_at_ms),
        ("interval_ms", hb.interval_ms),
    ] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(n.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"state\":");
    write_str(&mut out, hb.state.as_str());
    out.extend_from_slice(b",\"meta\":");
    write_object(&mut out, hb.meta.iter());
    out.push(b'}');
    out
}

/// The body an announcer publishes: the canonical encoding, with `,"kid":"…","sig":"…"` before the closing brace
/// when signed (each only when set).
pub(crate) fn wire(hb: &Heartbeat) -> Vec<u8> {
    let mut out = canonical(hb);
    for (name, value) in [("kid", &hb.kid), ("sig", &hb.sig)] {
        if let Some(value) = value {
            out.pop(); // the closing brace
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            write_str(&mut out, value);
            out.push(b'}');
        }
    }
    out
}

/// Length of `meta` in canonical form, for the size limit.
pub(crate) fn canonical_meta_len(meta: &BTreeMap<String, Value>) -> usize {
    let mut out = Vec::new();
    write_object(&mut out, meta.iter());
    out.len()
}

fn write_object<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    let mut entries: Vec<_> = entries.collect();
    // Sorting here, not relying on the map type, keeps the encoding stable even if serde_json's
    // `preserve_order` feature gets switched on by another crate in the build.
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map.iter()),
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_exact() {
        let mut hb = Heartbeat::new("a\"b", "10.0.0.1:80", 7, 9);
        hb.sent_at_ms = 1;
        hb.interval_ms = 5000;
        hb.meta.insert(
            "z".into(),
            serde_json::json!({"y": [1, "\u{1}é/"], "b": null}),
        );
        hb.meta.insert("a".into(), serde_json::json!(true));
        let text = String::from_utf8(canonical(&hb)).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"id":"a\"b","addr":"10.0.0.1:80","epoch":7,"seq":9,"sent_at_ms":1,"interval_ms":5000,"state":"up","meta":{"a":true,"z":{"b":null,"y":[1,"\u0001é/"]}}}"#
        );
        // The canonical text is valid JSON that means the same heartbeat.
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["meta"]["z"]["y"][1], "\u{1}é/");
    }
}
