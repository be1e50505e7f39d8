//! Invariants of the proxy's `Host` validator on arbitrary bytes, shared by the `host` fuzz target and the stable
//! corpus replay in `crates/proxy/tests/fuzz_corpus.rs`.
//!
//! A value it accepts is forwarded to data servers as `X-Forwarded-Host` and `Forwarded: host=`: it must carry no
//! userinfo, nothing a header or URL parser could read as a delimiter, and a port a socket address can hold. It is
//! also never laxer than the `http` crate's authority parser, which data servers built on hyper use.

use proxy::h1::valid_authority;

pub fn check(data: &[u8]) {
    let valid = valid_authority(data);
    assert_eq!(valid, valid_authority(data), "deterministic");
    if !valid {
        return;
    }
    assert!(!data.is_empty());
    assert!(!data.contains(&b'@'), "userinfo accepted: {data:?}");
    for &b in data {
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]".contains(&b);
        assert!(allowed, "byte {b:#04x} accepted in {data:?}");
    }
    let (host, port) = match data.strip_prefix(b"[") {
        Some(rest) => {
            let end = rest
                .iter()
                .position(|&b| b == b']')
                .expect("a closed IP literal");
            let literal = std::str::from_utf8(&rest[..end]).expect("ASCII");
            assert!(literal.parse::<std::net::Ipv6Addr>().is_ok(), "{literal}");
            (&data[..end + 2], &rest[end + 1..])
        }
        None => match data.iter().position(|&b| b == b':') {
            Some(i) => (&data[..i], &data[i..]),
            None => (data, &b""[..]),
        },
    };
    assert!(!host.is_empty());
    if let Some(digits) = port.strip_prefix(b":") {
        let port: u32 = std::str::from_utf8(digits).unwrap().parse().unwrap();
        assert!(port <= 65535, "{port}");
    } else {
        assert!(port.is_empty(), "text after the host: {port:?}");
    }
    assert!(
        http::uri::Authority::try_from(data).is_ok(),
        "accepted what the http crate refuses: {data:?}"
    );
}
