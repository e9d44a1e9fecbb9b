//! `Range` requests answered from a stored full response (RFC 9110 §14):
//! one range as a 206 with `Content-Range`, several as
//! `multipart/byteranges`, none satisfiable as a 416, and a range whose
//! `If-Range` does not match the stored validator ignored (the full 200).
//! A syntactically invalid `Range` is ignored, as the RFC allows.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

/// A client's `Range` (and `If-Range`), read before the cache answers.
#[derive(Debug, Clone, Default)]
pub struct ClientRange {
    ranges: Vec<Spec>,
    if_range: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-`.
    From(u64, Option<u64>),
    /// `-suffix`: the last bytes.
    Suffix(u64),
}

/// At most this many ranges are served from one request; more are
/// ignored (the full response), so a request cannot make the cache build
/// a huge multipart answer.
const MAX_RANGES: usize = 16;

impl ClientRange {
    pub fn read(headers: &HeaderMap) -> ClientRange {
        let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
            return ClientRange::default();
        };
        let ranges = parse(value).unwrap_or_default();
        ClientRange {
            ranges,
            if_range: headers
                .get(header::IF_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// Answer from a stored 200 with these headers and body, if the range
    /// applies: `(status, extra headers, body)`.
    pub fn answer(&self, status: StatusCode, headers: &HeaderMap, body: &Bytes) -> Option<Ranged> {
        if self.ranges.is_empty() || status != StatusCode::OK {
            return None;
        }
        if let Some(validator) = &self.if_range {
            // Strong comparison with the ETag, or an exact Last-Modified.
            let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
            let modified = headers
                .get(header::LAST_MODIFIED)
                .and_then(|v| v.to_str().ok());
            let matches = if validator.starts_with('"') {
                etag.is_some_and(|etag| !etag.starts_with("W/") && etag == validator)
            } else {
                modified == Some(validator.as_str())
            };
            if !matches {
                return None;
            }
        }
        let len = body.len() as u64;
        let satisfiable: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter_map(|spec| resolve(*spec, len))
            .collect();
        if satisfiable.is_empty() {
            return Some(Ranged {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                content_range: Some(format!("bytes */{len}")),
                content_type: None,
                body: Bytes::new(),
            });
        }
        if let [(first, last)] = satisfiable[..] {
            return Some(Ranged {
                status: StatusCode::PARTIAL_CONTENT,
                content_range: Some(format!("bytes {first}-{last}/{len}")),
                content_type: None,
                body: body.slice(first as usize..=last as usize),
            });
        }
        let boundary = format!("weir-{:016x}", len ^ (satisfiable.len() as u64) << 48);
        let part_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut multipart = BytesMut::new();
        for (first, last) in &satisfiable {
            multipart.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
            if let Some(part_type) = &part_type {
                multipart.extend_from_slice(format!("Content-Type: {part_type}\r\n").as_bytes());
            }
            multipart.extend_from_slice(
                format!("Content-Range: bytes {first}-{last}/{len}\r\n\r\n").as_bytes(),
            );
            multipart.extend_from_slice(&body[*first as usize..=*last as usize]);
        }
        multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        Some(Ranged {
            status: StatusCode::PARTIAL_CONTENT,
            content_range: None,
            content_type: Some(format!("multipart/byteranges; boundary={boundary}")),
            body: multipart.freeze(),
        })
    }
}

/// A ranged answer made from a stored response.
pub struct Ranged {
    pub status: StatusCode,
    pub content_range: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Ranged {
    /// Apply to the stored response's headers.
    pub fn headers(&self, headers: &mut HeaderMap) {
        headers.remove(header::CONTENT_LENGTH);
        if let Some(range) = self.content_range.as_deref() {
            if let Ok(value) = HeaderValue::from_str(range) {
                headers.insert(header::CONTENT_RANGE, value);
            }
        }
        if let Some(content_type) = self.content_type.as_deref() {
            if let Ok(value) = HeaderValue::from_str(content_type) {
                headers.insert(header::CONTENT_TYPE, value);
            }
        }
    }
}

/// `bytes=0-99, -5, 100-`; `None` for anything else (then ignored).
fn parse(value: &str) -> Option<Vec<Spec>> {
    let set = value.trim().strip_prefix("bytes=")?;
    let mut specs = Vec::new();
    for part in set.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (first, last) = part.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let spec = match (first, last) {
            ("", suffix) if digits(suffix) => Spec::Suffix(suffix.parse().ok()?),
            (first, "") if digits(first) => Spec::From(first.parse().ok()?, None),
            (first, last) if digits(first) && digits(last) => {
                let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
                if last < first {
                    return None;
                }
                Spec::From(first, Some(last))
            }
            _ => return None,
        };
        specs.push(spec);
    }
    (!specs.is_empty() && specs.len() <= MAX_RANGES).then_some(specs)
}

/// The inclusive byte range of a body of `len` bytes, if satisfiable.
fn resolve(spec: Spec, len: u64) -> Option<(u64, u64)> {
    match spec {
        Spec::From(first, _) if first >= len => None,
        Spec::From(first, last) => Some((first, last.map_or(len - 1, |l| l.min(len - 1)))),
        Spec::Suffix(0) => None,
        Spec::Suffix(_) if len == 0 => None,
        Spec::Suffix(n) => Some((len.saturating_sub(n), len - 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &'static str) -> ClientRange {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static(value));
        ClientRange::read(&headers)
    }

    #[test]
    fn single_suffix_open_and_unsatisfiable_ranges() {
        let body = Bytes::from_static(b"0123456789");
        let headers = HeaderMap::new();
        let one = range("bytes=2-4")
            .answer(StatusCode::OK, &headers, &body)
            .unwrap();
        assert_eq!(
            (one.status, &one.body[..]),
            (StatusCode::PARTIAL_CONTENT, &b"234"[..])
        );
        assert_eq!(one.content_range.as_deref(), Some("bytes 2-4/10"));
        let suffix = range("bytes=-3")
            .answer(StatusCode::OK, &headers, &body)
            .unwrap();
        assert_eq!(&suffix.body[..], b"789");
        let open = range("bytes=8-")
            .answer(StatusCode::OK, &headers, &body)
            .unwrap();
        assert_eq!(&open.body[..], b"89");
        let past = range("bytes=5-100")
            .answer(StatusCode::OK, &headers, &body)
            .unwrap();
        assert_eq!(past.content_range.as_deref(), Some("bytes 5-9/10"));
        let none = range("bytes=10-")
            .answer(StatusCode::OK, &headers, &body)
            .unwrap();
        assert_eq!(none.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(none.content_range.as_deref(), Some("bytes */10"));
    }

    #[test]
    fn invalid_ranges_are_ignored_and_several_are_multipart() {
        let body = Bytes::from_static(b"0123456789");
        let headers = HeaderMap::new();
        for invalid in ["bytes=5-2", "items=0-1", "bytes=a-b", "bytes=-"] {
            assert!(
                range(invalid)
                    .answer(StatusCode::OK, &headers, &body)
                    .is_none(),
                "{invalid}"
            );
        }
        let two = range("bytes=0-1, 8-9")
            .answer(StatusCode::OK, &headers, &body)
            .unwrap();
        assert_eq!(two.status, StatusCode::PARTIAL_CONTENT);
        let text = String::from_utf8(two.body.to_vec()).unwrap();
        assert!(
            text.contains("Content-Range: bytes 0-1/10\r\n\r\n01"),
            "{text}"
        );
        assert!(
            text.contains("Content-Range: bytes 8-9/10\r\n\r\n89"),
            "{text}"
        );
        assert!(two
            .content_type
            .unwrap()
            .starts_with("multipart/byteranges; boundary="));
    }

    #[test]
    fn if_range_must_match_the_stored_validator() {
        let body = Bytes::from_static(b"0123456789");
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let mut request = HeaderMap::new();
        request.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        request.insert(header::IF_RANGE, HeaderValue::from_static("\"v1\""));
        assert!(ClientRange::read(&request)
            .answer(StatusCode::OK, &headers, &body)
            .is_some());
        request.insert(header::IF_RANGE, HeaderValue::from_static("\"v0\""));
        assert!(ClientRange::read(&request)
            .answer(StatusCode::OK, &headers, &body)
            .is_none());
    }
}
