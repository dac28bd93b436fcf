//! Backend (server → client) messages the proxy writes itself.

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Fields of an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: Severity,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

fn put_message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = u32::try_from(out.len() - at).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    // A NUL inside would end the field early; our own texts never have one.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// `ErrorResponse` ('E').
pub fn error_response(out: &mut Vec<u8>, e: &ErrorFields<'_>) {
    put_message(out, b'E', |b| {
        for (field, value) in [
            (b'S', Some(e.severity.as_str())),
            (b'V', Some(e.severity.as_str())),
            (b'C', Some(e.code)),
            (b'M', Some(e.message)),
            (b'D', e.detail),
            (b'H', e.hint),
        ] {
            if let Some(v) = value {
                b.push(field);
                put_cstr(b, v);
            }
        }
        b.push(0);
    });
}

/// `ReadyForQuery` ('Z') with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    put_message(out, b'Z', |b| b.push(status));
}

/// `BackendKeyData` ('K').
pub fn backend_key_data(out: &mut Vec<u8>, process_id: i32, secret_key: i32) {
    put_message(out, b'K', |b| {
        b.extend_from_slice(&process_id.to_be_bytes());
        b.extend_from_slice(&secret_key.to_be_bytes());
    });
}

/// `NegotiateProtocolVersion` ('v'): we speak 3.0 and none of the
/// `_pq_.` options the client asked for.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, unsupported: &[&str]) {
    put_message(out, b'v', |b| {
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&i32::try_from(unsupported.len()).unwrap_or(0).to_be_bytes());
        for name in unsupported {
            put_cstr(b, name);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_framed_with_its_fields() {
        let mut out = Vec::new();
        error_response(
            &mut out,
            &ErrorFields {
                severity: Severity::Fatal,
                code: "53300",
                message: "full",
                detail: None,
                hint: Some("upgrade"),
            },
        );
        assert_eq!(out[0], b'E');
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let text = String::from_utf8_lossy(&out[5..]);
        assert!(text.contains("SFATAL\0VFATAL\0C53300\0Mfull\0Hupgrade\0"));
        assert_eq!(*out.last().unwrap(), 0);
    }

    #[test]
    fn ready_for_query_carries_the_status() {
        let mut out = Vec::new();
        ready_for_query(&mut out, b'T');
        assert_eq!(out, [b'Z', 0, 0, 0, 5, b'T']);
    }
}
