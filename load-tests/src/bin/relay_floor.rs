//! `relay_floor`: the least a TCP relay can do between pgbench and
//! PostgreSQL, as a reference for the proxy's cost (load-tests/relay_floor.sh).
//!
//! ```text
//! relay_floor tokio|mio LISTEN_PORT UPSTREAM_ADDR
//! ```
//!
//! Each accepted connection gets its own upstream connection and bytes are
//! copied both ways, nothing else: no parsing, no tenants, no metrics.
//! `tokio` runs `copy_bidirectional` per connection on one current-thread
//! runtime (the proxy's substrate without the proxy); `mio` is a single
//! readiness loop that reads from the ready socket and writes to its peer
//! from the same stack frame (PgBouncer's shape). Both run on one thread.
//!
//! Not a product: the mio loop treats a full peer socket as a reason to
//! retry the write after yielding the CPU, which is fine for pgbench -S
//! (small messages) and nothing else.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::SocketAddr,
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, kind, port, upstream] => port
            .parse::<u16>()
            .ok()
            .zip(upstream.parse::<SocketAddr>().ok())
            .map(|(port, upstream)| (kind.as_str(), port, upstream)),
        _ => None,
    };
    let result = match parsed {
        Some(("tokio", port, upstream)) => tokio_relay(port, upstream),
        Some(("mio", port, upstream)) => mio_relay(port, upstream),
        _ => {
            eprintln!("usage: relay_floor tokio|mio LISTEN_PORT UPSTREAM_ADDR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_relay(port: u16, upstream: SocketAddr) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on 127.0.0.1:{port}");
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}

const LISTENER: mio::Token = mio::Token(usize::MAX);

/// Sockets by token: a connection's client is at an even index, its server
/// at the next one, so a socket's peer is `token ^ 1`.
fn mio_relay(port: u16, upstream: SocketAddr) -> io::Result<()> {
    use mio::{net::TcpListener, Events, Interest, Poll, Token};

    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on 127.0.0.1:{port}");
    let mut sockets: Vec<Option<mio::net::TcpStream>> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            if event.token() == LISTENER {
                while let Ok((mut client, _)) = listener.accept() {
                    let Ok(mut server) = connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let at = sockets.len();
                    poll.registry()
                        .register(&mut client, Token(at), Interest::READABLE)?;
                    poll.registry()
                        .register(&mut server, Token(at + 1), Interest::READABLE)?;
                    sockets.push(Some(client));
                    sockets.push(Some(server));
                }
                continue;
            }
            let from = event.token().0;
            if !forward(&mut sockets, from, &mut buf) {
                sockets[from] = None;
                sockets[from ^ 1] = None;
            }
        }
    }
}

fn connect(upstream: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let server = std::net::TcpStream::connect(upstream)?;
    server.set_nodelay(true)?;
    server.set_nonblocking(true)?;
    Ok(mio::net::TcpStream::from_std(server))
}

/// Copies what `from` has to its peer; `false` when the pair is done.
fn forward(sockets: &mut [Option<mio::net::TcpStream>], from: usize, buf: &mut [u8]) -> bool {
    loop {
        let Some(Some(socket)) = sockets.get_mut(from) else {
            return false;
        };
        let n = match socket.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        };
        let Some(Some(peer)) = sockets.get_mut(from ^ 1) else {
            return false;
        };
        let mut written = 0;
        while written < n {
            match peer.write(&buf[written..n]) {
                Ok(k) => written += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(_) => return false,
            }
        }
        // A short read emptied the socket (edge-triggered: no event is lost).
        if n < buf.len() {
            return true;
        }
    }
}
