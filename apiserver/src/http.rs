//! HTTP plumbing shared by every handler: JSON responses, query parameters, content
//! negotiation and request bodies (JSON, YAML; bounded in size).

use std::collections::HashMap;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::Value;

use crate::errors::{ApiError, ApiResult};

/// Largest request body accepted (upstream's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub const JSON: &str = "application/json";

/// A JSON response with `code`.
pub fn json_response(code: StatusCode, body: &impl Serialize) -> Response {
    let bytes =
        serde_json::to_vec(body).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    bytes_response(code, JSON, bytes)
}

pub fn bytes_response(code: StatusCode, content_type: &str, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(JSON)),
    );
    resp
}

/// The query string as a map (repeated keys keep the last value, as upstream for these params).
#[derive(Debug, Clone, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut m = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.insert(decode(k), decode(v));
        }
        Query(m)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    /// An integer parameter; a malformed one is a 400.
    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {k}: {v:?} is not an integer"))
            }),
        }
    }
}

/// Percent-decoding of one query component (`+` is a space, as in forms).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What representation the client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The object or list as JSON.
    Object,
    /// A `meta.k8s.io/v1` Table.
    Table,
}

pub fn wanted(headers: &HeaderMap) -> Wanted {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // kubectl lists `as=Table` first and plain JSON as a fallback: honour the first choice.
    let first = accept.split(',').next().unwrap_or("");
    if first.contains("as=Table") && first.contains("g=meta.k8s.io") {
        Wanted::Table
    } else {
        Wanted::Object
    }
}

/// The request's media type, without parameters (none given: JSON, as upstream tolerates).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| JSON.to_string())
}

/// Parses a JSON or YAML body into a value; the media type decides.
pub fn parse_body(content_type: &str, body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: send the object as JSON or YAML",
        ));
    }
    match content_type {
        "application/yaml"
        | "application/apply-patch+yaml"
        | "text/yaml"
        | "application/x-yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the YAML body is not valid UTF-8"))?;
            // JSON is YAML: an apply patch usually arrives as JSON text.
            if let Ok(v) = serde_json::from_str(text) {
                return Ok(v);
            }
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
        }
        crate::protobuf::MEDIA_TYPE => crate::protobuf::decode(body),
        t if t == JSON || t.ends_with("+json") => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_selectors() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&limit=500&x",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.int("limit").unwrap(), Some(500));
        assert_eq!(q.get("x"), Some(""));
        assert!(Query::parse(Some("limit=abc")).int("limit").is_err());
        assert_eq!(Query::parse(Some("a=%zz%4")).get("a"), Some("%zz%4"));
    }

    #[test]
    fn negotiation_follows_kubectl() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        );
        assert_eq!(wanted(&h), Wanted::Table);
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(wanted(&h), Wanted::Object);
        assert_eq!(content_type(&HeaderMap::new()), JSON);
    }

    #[test]
    fn bodies() {
        assert!(parse_body(JSON, &Bytes::from_static(b"{\"a\":1}")).is_ok());
        assert_eq!(
            parse_body(JSON, &Bytes::from_static(b"{oops"))
                .unwrap_err()
                .code,
            400
        );
        let y = parse_body("application/yaml", &Bytes::from_static(b"a: 1\nb: [x]\n")).unwrap();
        assert_eq!(y["b"][0], "x");
        assert_eq!(
            parse_body("text/plain", &Bytes::from_static(b"x"))
                .unwrap_err()
                .code,
            415
        );
    }
}
