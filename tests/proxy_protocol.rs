//! The proxy's opening handshake over raw sockets and TLS: what it answers
//! to each kind of opening packet, and how it drops slow or oversized ones.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{client, Server, ADMIN_TOKEN};

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(&server.proxy_addr).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
    let mut p = ((8 + rest.len()) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(rest);
    p
}

/// Reads until the peer closes; returns everything received.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn sqlstate(error_response: &[u8]) -> Option<String> {
    if error_response.first() != Some(&b'E') {
        return None;
    }
    error_response[5..]
        .split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

#[test]
fn ssl_and_gssenc_requests_are_declined_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for code in [80_877_103u32, 80_877_104] {
        let mut s = connect(&server);
        s.write_all(&packet(code, &[])).unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"N", "code {code}");
    }
}

#[test]
fn other_protocol_versions_are_refused_with_08p01() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut s = connect(&server);
    s.write_all(&packet(0x0002_0000, b"user\0x\0\0")).unwrap();
    let reply = read_to_close(&mut s);
    assert_eq!(sqlstate(&reply).as_deref(), Some("08P01"));
    assert!(String::from_utf8_lossy(&reply).contains("unsupported frontend protocol 2.0"));
}

#[test]
fn oversized_and_slow_handshakes_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("DYNABASE__PROXY__HANDSHAKE_TIMEOUT", "1s")]);

    let mut big = connect(&server);
    big.write_all(&20_000u32.to_be_bytes()).unwrap();
    assert!(
        read_to_close(&mut big).is_empty(),
        "oversized: closed without a reply"
    );

    let mut slow = connect(&server);
    slow.write_all(&100u32.to_be_bytes()).unwrap(); // and then nothing
    assert!(
        read_to_close(&mut slow).is_empty(),
        "slow: closed without a reply"
    );

    // The proxy still serves afterwards.
    let mut s = connect(&server);
    s.write_all(&packet(80_877_103, &[])).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
}

#[test]
fn malformed_startup_and_unknown_cancel_keys_do_no_harm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // Unterminated parameter list.
    let mut s = connect(&server);
    s.write_all(&packet(196_608, b"user\0abc")).unwrap();
    assert!(read_to_close(&mut s).is_empty());
    // A cancel for a key nobody holds: accepted and closed, nothing else.
    let mut c = connect(&server);
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102u32.to_be_bytes());
    cancel.extend_from_slice(&[0, 0, 0, 42, 1, 2, 3, 4]);
    c.write_all(&cancel).unwrap();
    assert!(read_to_close(&mut c).is_empty());
}

#[tokio::test]
async fn tls_with_sni_identifies_the_org_and_plaintext_can_be_refused() {
    let Some(pg) = common::require_service("DYNABASE_TEST_PG_ADDR", "127.0.0.1:5432") else {
        return;
    };
    let certified = rcgen::generate_simple_self_signed(vec!["*.db.test".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("DYNABASE__PROXY__TLS_CERT", cert_path.to_str().unwrap()),
            ("DYNABASE__PROXY__TLS_KEY", key_path.to_str().unwrap()),
            ("DYNABASE__PROXY__REQUIRE_TLS", "true"),
            ("DYNABASE__PROXY__SNI_DOMAIN", "db.test"),
        ],
    );
    let created = client()
        .post(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .body(format!(
            r#"{{"id":"tlsorg","name":"T","tier":"pro","upstream":"{pg}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config);

    // The plain role name; the organization comes from the SNI host name.
    let mut config = tokio_postgres::Config::new();
    config
        .host("tlsorg.db.test")
        .hostaddr(std::net::IpAddr::from([127, 0, 0, 1]))
        .port(server.proxy_port())
        .user("trust_user")
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (pg_client, connection) = config.connect(tls).await.expect("TLS session");
    tokio::spawn(connection);
    let row = pg_client.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "64MB");

    let plain = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=trust_user.tlsorg dbname=postgres sslmode=disable",
            server.proxy_port()
        ),
        tokio_postgres::NoTls,
    )
    .await;
    let err = plain.err().expect("plaintext refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("TLS is required"));
}
