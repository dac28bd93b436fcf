//! Runs an established session's relay to its end: on the event loop when
//! the session can use it ([`super::event_loop`]), else on the async relay
//! ([`super::relay`]); then tells a terminated client why.

use std::{future::Future, pin::Pin};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    client_error::ClientError,
    event_loop::{self, Ended},
    relay::{relay, RelayEnd, RelayObserver},
    relay_state::RelayState,
    stream::ClientStream,
};

/// Relays `client` ↔ `server` until either closes or the session is
/// terminated; `status` is from the handshake's ReadyForQuery.
///
/// The relay is chosen here and returned boxed, sized for the one relay in
/// use: an idle session's task keeps this future for its whole life.
pub fn run(
    client: ClientStream,
    server: TcpStream,
    observer: RelayObserver,
    status: u8,
) -> Pin<Box<dyn Future<Output = RelayEnd> + Send>> {
    // Boxed so that no relay's future holds it inline as well.
    let state = Box::new(RelayState::new(status));
    match client {
        ClientStream::Plain(client) => {
            let usable =
                |l: &event_loop::EventLoop| l.is_running() && observer.gate.load().is_unlimited();
            match event_loop::current().filter(usable) {
                Some(event_loop) => {
                    Box::pin(on_event_loop(event_loop, client, server, observer, state))
                }
                None => {
                    Box::pin(async move { on_async_relay(client, server, &observer, state).await })
                }
            }
        }
        ClientStream::Tls(mut tls) => Box::pin(async move {
            let mut server = server;
            let (mut sr, mut sw) = server.split();
            let (mut cr, mut cw) = tokio::io::split(tls.as_mut());
            let end = relay(&mut cr, &mut cw, &mut sr, &mut sw, &observer, state).await;
            finish(&end, &mut cw).await;
            end
        }),
    }
}

/// A plain-TCP session of an organization with no QPS limit: on this
/// thread's event loop until a tier change gives it one, then on the async
/// relay.
async fn on_event_loop(
    event_loop: event_loop::EventLoop,
    client: TcpStream,
    server: TcpStream,
    observer: RelayObserver,
    state: Box<RelayState>,
) -> RelayEnd {
    let sockets = client
        .into_std()
        .map_err(RelayEnd::ClientError)
        .and_then(|c| Ok((c, server.into_std().map_err(RelayEnd::ServerError)?)));
    let (client, server) = match sockets {
        Ok(sockets) => sockets,
        Err(end) => return end,
    };
    let Ok(outcome) = event_loop.adopt(client, server, observer, *state).await else {
        // The loop stopped (shutdown) and closed the sockets.
        return RelayEnd::Terminated { at_boundary: false };
    };
    // Back on this thread's driver.
    let client = match TcpStream::from_std(outcome.client) {
        Ok(c) => c,
        Err(e) => return RelayEnd::ClientError(e),
    };
    match outcome.ended {
        Ended::Relay(end) => {
            let mut client = client;
            finish(&end, &mut client).await;
            end
        }
        // Boxed: while on the loop this future should stay small.
        Ended::Limited(state) => match TcpStream::from_std(outcome.server) {
            Ok(server) => Box::pin(on_async_relay(client, server, &outcome.observer, state)).await,
            Err(e) => RelayEnd::ServerError(e),
        },
    }
}

async fn on_async_relay(
    mut client: TcpStream,
    mut server: TcpStream,
    observer: &RelayObserver,
    state: Box<RelayState>,
) -> RelayEnd {
    let (mut sr, mut sw) = server.split();
    let (mut cr, mut cw) = client.split();
    let end = relay(&mut cr, &mut cw, &mut sr, &mut sw, observer, state).await;
    finish(&end, &mut cw).await;
    end
}

/// After an operator's termination, tell the client why when the stream is
/// at a message boundary (otherwise just close).
async fn finish<W: AsyncWrite + Unpin>(end: &RelayEnd, client: &mut W) {
    if let RelayEnd::Terminated { at_boundary } = end {
        if *at_boundary {
            let mut out = Vec::new();
            ClientError::AdminShutdown.write_fatal(&mut out);
            let _ = client.write_all(&out).await;
        }
        let _ = client.shutdown().await;
    }
}
