//! Answers an oversized request the way etcd (grpc-go) does: tonic refuses a message above the
//! decoding limit with OUT_OF_RANGE, grpc-go with RESOURCE_EXHAUSTED and its own wording, and
//! clients match on the code.

use http::HeaderValue;

const TONIC_PREFIX: &str = "Error, decoded message length too large";

/// Rewrites tonic's "message too large" status (sent in the response headers of a
/// trailers-only answer) into grpc-go's.
pub fn fix_oversize<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers();
    if h.get("grpc-status").and_then(|v| v.to_str().ok()) != Some("11") {
        return resp;
    }
    let Some(message) = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
    else {
        return resp;
    };
    let Some(fixed) = grpc_go_message(&message) else {
        return resp;
    };
    if let Ok(v) = HeaderValue::from_str(&fixed) {
        let h = resp.headers_mut();
        h.insert("grpc-status", HeaderValue::from_static("8"));
        h.insert("grpc-message", v);
    }
    resp
}

/// grpc-go's wording for tonic's "found N bytes, the limit is: M bytes".
pub fn grpc_go_message(tonic_message: &str) -> Option<String> {
    if !tonic_message.starts_with(TONIC_PREFIX) {
        return None;
    }
    let numbers: Vec<u64> = tonic_message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [found, limit] => Some(format!(
            "grpc: received message larger than max ({found} vs. {limit})"
        )),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let cases = [
            (
                "Error, decoded message length too large: found 3145739 bytes, the limit is: 2097152 bytes",
                Some("grpc: received message larger than max (3145739 vs. 2097152)"),
            ),
            (
                "etcdserver: mvcc: required revision is a future revision",
                None,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(grpc_go_message(input).as_deref(), want);
        }
        assert_eq!(percent_decode("a%20b%2Cc%"), "a b,c%");
    }

    #[test]
    fn rewrites_only_the_oversize_status() {
        let resp = http::Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "Error,%20decoded%20message%20length%20too%20large:%20found%2010%20bytes,%20the%20limit%20is:%205%20bytes",
            )
            .body(())
            .unwrap();
        let fixed = fix_oversize(resp);
        assert_eq!(fixed.headers()["grpc-status"], "8");
        assert_eq!(
            fixed.headers()["grpc-message"],
            "grpc: received message larger than max (10 vs. 5)"
        );
        let other = http::Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "etcdserver: mvcc: required revision is a future revision",
            )
            .body(())
            .unwrap();
        assert_eq!(fix_oversize(other).headers()["grpc-status"], "11");
    }
}
