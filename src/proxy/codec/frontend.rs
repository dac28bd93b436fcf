//! Frontend (client → server) messages the proxy writes to the upstream.

/// A protocol 3.0 `StartupMessage` with `params` in order.
pub fn startup_message<'a>(
    out: &mut Vec<u8>,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in params {
        for s in [k, v] {
            out.extend(s.bytes().filter(|&b| b != 0));
            out.push(0);
        }
    }
    out.push(0);
    let len = u32::try_from(out.len() - at).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A `CancelRequest` for the given upstream key.
pub fn cancel_request(process_id: i32, secret_key: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&80_877_102u32.to_be_bytes());
    out[8..12].copy_from_slice(&process_id.to_be_bytes());
    out[12..].copy_from_slice(&secret_key.to_be_bytes());
    out
}

/// `Terminate` ('X').
pub const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::codec::startup::{parse, StartupPacket};

    #[test]
    fn startup_message_round_trips_through_the_parser() {
        let mut out = Vec::new();
        startup_message(&mut out, [("user", "app"), ("work_mem", "4MB")]);
        let StartupPacket::Startup(m) = parse(&out[4..]).unwrap() else {
            panic!("startup expected")
        };
        assert_eq!(m.param("work_mem"), Some("4MB"));
        let cancel = cancel_request(1, 2);
        assert_eq!(
            parse(&cancel[4..]).unwrap(),
            StartupPacket::Cancel {
                process_id: 1,
                secret_key: 2
            }
        );
    }
}
