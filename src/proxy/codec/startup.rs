//! The first packet of a connection: SSLRequest, GSSENCRequest,
//! CancelRequest or StartupMessage (which have no type byte).

use tokio::io::{AsyncRead, AsyncReadExt};

use super::CodecError;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// PostgreSQL's own limit (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: u32 = 10_000;

/// A client's opening packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    Startup(StartupMessage),
    /// A startup message for a protocol major version other than 3.
    UnsupportedVersion {
        major: u16,
        minor: u16,
    },
}

/// A StartupMessage: protocol version and parameters in the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub minor_version: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one startup packet (length-prefixed, no type byte).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, CodecError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(CodecError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(CodecError::BadStartupLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    parse(&body)
}

/// Parses a startup packet body (everything after the length).
pub fn parse(body: &[u8]) -> Result<StartupPacket, CodecError> {
    let code = u32::from_be_bytes(
        body.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(CodecError::MalformedStartup("too short"))?,
    );
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if rest.len() != 8 {
                return Err(CodecError::MalformedStartup(
                    "cancel request must be 16 bytes",
                ));
            }
            let word =
                |i: usize| i32::from_be_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
            Ok(StartupPacket::Cancel {
                process_id: word(0),
                secret_key: word(4),
            })
        }
        version => {
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != 3 {
                return Ok(StartupPacket::UnsupportedVersion { major, minor });
            }
            Ok(StartupPacket::Startup(StartupMessage {
                minor_version: minor,
                params: parse_params(rest)?,
            }))
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, CodecError> {
    let mut params = Vec::new();
    loop {
        let (key, after) = cstr(rest)?;
        if key.is_empty() {
            return Ok(params);
        }
        let (value, after) = cstr(after)?;
        params.push((key.to_owned(), value.to_owned()));
        rest = after;
    }
}

fn cstr(b: &[u8]) -> Result<(&str, &[u8]), CodecError> {
    let nul = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(CodecError::MalformedStartup("unterminated string"))?;
    let s =
        std::str::from_utf8(&b[..nul]).map_err(|_| CodecError::MalformedStartup("not UTF-8"))?;
    Ok((s, &b[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_body(params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parses_each_kind_of_opening_packet() {
        assert_eq!(
            parse(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse(&GSSENC_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse(&cancel).unwrap(),
            StartupPacket::Cancel {
                process_id: 7,
                secret_key: -9
            }
        );
        let StartupPacket::Startup(m) =
            parse(&startup_body(&[("user", "app.acme"), ("database", "db")])).unwrap()
        else {
            panic!("startup expected")
        };
        assert_eq!(m.param("user"), Some("app.acme"));
        assert_eq!(m.minor_version, 0);
        assert_eq!(
            parse(&0x0002_0000u32.to_be_bytes()).unwrap(),
            StartupPacket::UnsupportedVersion { major: 2, minor: 0 }
        );
    }

    #[test]
    fn refuses_malformed_packets_without_panicking() {
        assert!(parse(&[1, 2]).is_err());
        let mut b = startup_body(&[("user", "x")]);
        b.pop();
        b.pop();
        assert!(parse(&b).is_err());
        assert!(parse(&[0, 3, 0, 0, b'u', b's']).is_err());
        let mut bad_cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        bad_cancel.push(1);
        assert!(parse(&bad_cancel).is_err());
    }
}
