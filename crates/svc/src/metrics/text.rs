//! The Prometheus text exposition format (version 0.0.4): names, escaping, numbers, lines.

use std::fmt::{self, Write};

/// Metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Label names: `[a-zA-Z_][a-zA-Z0-9_]*`, and `__…` is reserved for Prometheus itself.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.starts_with("__")
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// HELP text escapes backslash and newline.
pub(crate) fn push_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Label values also escape the double quote that delimits them.
pub(crate) fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as Prometheus reads it: Rust's shortest round-trip form, but `+Inf`, `-Inf`, `NaN`.
pub(crate) struct Float(pub(crate) f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            f64::INFINITY => f.write_str("+Inf"),
            f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
pub(crate) fn push_header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    push_help(out, help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// One sample line: `name_suffix{k="v",…} value`.
pub(crate) fn push_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    value: impl fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            push_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_metric_name("http_requests_total"));
        assert!(is_metric_name(":recording:rule"));
        assert!(!is_metric_name("1abc"));
        assert!(!is_metric_name("a-b"));
        assert!(!is_metric_name(""));
        assert!(is_label_name("upstream"));
        assert!(!is_label_name("__name__"));
        assert!(!is_label_name("a:b"));
    }

    #[test]
    fn escaping_and_floats() {
        let mut out = String::new();
        push_sample(
            &mut out,
            "m",
            "_x",
            &[("a", "q\"b\\\nc")],
            Float(f64::INFINITY),
        );
        assert_eq!(out, "m_x{a=\"q\\\"b\\\\\\nc\"} +Inf\n");
        let mut help = String::new();
        push_help(&mut help, "a\\b\n\"c\"");
        assert_eq!(help, "a\\\\b\\n\"c\"");
        assert_eq!(Float(0.25).to_string(), "0.25");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(3.0).to_string(), "3");
    }
}
