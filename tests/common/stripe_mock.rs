//! Stripe's API for tests: stripe-mock (started by `scripts/services.sh`,
//! found through `STRIPE_MOCK_URL`) behind a recording relay.
//!
//! The relay is a minimal HTTP/1.1 server on 127.0.0.1 (one request per
//! connection, answered with `Connection: close`) that forwards each request
//! to stripe-mock, records what was sent, and can be told to answer the next
//! requests to a method and path itself: a Stripe-shaped error, a canned
//! body, a dropped connection or no answer at all. stripe-mock keeps no
//! state, so what the code under test sent is checked on the recording.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// The stripe-mock URL, or `None` (test skipped) when it is not running.
/// Under `CI=true` a missing `STRIPE_MOCK_URL` or an unreachable stripe-mock
/// fails the test.
pub fn url() -> Option<String> {
    if std::env::var("CI").as_deref() == Ok("true") && std::env::var("STRIPE_MOCK_URL").is_err() {
        panic!(
            "CI requires STRIPE_MOCK_URL; run scripts/services.sh start and source its env file"
        );
    }
    super::require_service("STRIPE_MOCK_URL", "http://127.0.0.1:12111")
}

/// One request as the relay received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Without the query.
    pub path: String,
    /// The decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// The decoded `application/x-www-form-urlencoded` body pairs, in order.
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
}

impl Recorded {
    /// The first form value under `key` (e.g. `metadata[dynabase_org]`).
    pub fn field(&self, key: &str) -> Option<&str> {
        find(&self.form, key)
    }

    /// The first query value under `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        find(&self.query, key)
    }
}

fn find<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// What the relay does instead of forwarding.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answers `status` with `{"error":{"type":..,"message":..}}`.
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// Answers `status` with this JSON body.
    Respond { status: u16, body: String },
    /// Closes the connection without answering.
    Drop,
    /// Keeps the connection open without answering (for timeouts).
    Stall,
    /// Forwards (so the request takes effect) but never answers: the
    /// caller dies or times out between the provider's work and its own.
    ForwardThenStall,
}

impl Fault {
    /// The error Stripe answers with this status, Stripe-shaped.
    pub fn status(status: u16) -> Fault {
        let (error_type, message) = match status {
            429 => (
                "invalid_request_error",
                "Too many requests hit the API too quickly.",
            ),
            400..=499 => ("invalid_request_error", "No such customer: 'cus_x'"),
            _ => ("api_error", "Something went wrong on Stripe's end."),
        };
        Fault::error(status, error_type, message)
    }

    pub fn error(status: u16, error_type: &str, message: &str) -> Fault {
        Fault::Error {
            status,
            error_type: error_type.to_owned(),
            message: message.to_owned(),
        }
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// (method, path, fault), consumed front first per method and path.
    faults: VecDeque<(String, String, Fault)>,
    /// In remembering mode: the invoice items created, as answered.
    items: Option<Vec<RememberedItem>>,
}

/// An invoice item the relay created, as Stripe would keep it.
#[derive(Debug, Clone)]
pub struct RememberedItem {
    pub customer: String,
    pub idempotency_key: Option<String>,
    pub json: serde_json::Value,
}

impl RememberedItem {
    pub fn id(&self) -> &str {
        self.json["id"].as_str().unwrap_or_default()
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.json["metadata"][key].as_str()
    }
}

/// A recording relay in front of stripe-mock; stops when dropped.
pub struct StripeRelay {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for StripeRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StripeRelay {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: &str) -> StripeRelay {
        Self::start_with(upstream, State::default()).await
    }

    /// Like [`start`](Self::start), and also keeps what stripe-mock cannot:
    /// each created invoice item gets a unique id and the metadata and
    /// customer it was created with; a create repeating an idempotency key
    /// gets the first answer again; listing a customer's items answers
    /// with the items created for it (Stripe's documented list shape).
    pub async fn start_remembering(upstream: &str) -> StripeRelay {
        let state = State {
            items: Some(Vec::new()),
            ..State::default()
        };
        Self::start_with(upstream, state).await
    }

    /// The invoice items created so far (remembering mode).
    pub fn items(&self) -> Vec<RememberedItem> {
        self.lock().items.clone().unwrap_or_default()
    }

    async fn start_with(upstream: &str, state: State) -> StripeRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let url = format!("http://{}", listener.local_addr().expect("relay address"));
        let state = Arc::new(Mutex::new(state));
        let upstream = upstream.trim_end_matches('/').to_owned();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, upstream) = (shared.clone(), upstream.clone());
                tokio::spawn(async move { serve(stream, state, upstream).await });
            }
        });
        StripeRelay { url, state, task }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `count` requests to `method path` (path without query, e.g.
    /// `/v1/invoiceitems`) get `fault` instead of stripe-mock's answer.
    pub fn fail_next(&self, method: &str, path: &str, count: usize, fault: Fault) {
        let mut state = self.lock();
        for _ in 0..count {
            state
                .faults
                .push_back((method.to_owned(), path.to_owned(), fault.clone()));
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests to `method path` so far.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// `POST /v1/invoiceitems` requests so far.
    pub fn creates(&self) -> usize {
        self.count("POST", "/v1/invoiceitems")
    }

    /// `GET /v1/invoiceitems` requests so far.
    pub fn lists(&self) -> usize {
        self.count("GET", "/v1/invoiceitems")
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, upstream: String) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    let recorded = Recorded {
        method: request.method.clone(),
        path: path.to_owned(),
        query: decode_pairs(query),
        form: decode_pairs(&String::from_utf8_lossy(&request.body)),
        idempotency_key: request.header("idempotency-key").map(str::to_owned),
        authorization: request.header("authorization").map(str::to_owned),
    };
    let fault = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.requests.push(recorded.clone());
        let at = state
            .faults
            .iter()
            .position(|(m, p, _)| *m == recorded.method && *p == recorded.path);
        at.and_then(|i| state.faults.remove(i)).map(|(_, _, f)| f)
    };
    let (status, body) = match fault {
        Some(Fault::Drop) => return,
        Some(Fault::Stall) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        Some(Fault::Error {
            status,
            error_type,
            message,
        }) => (
            status,
            serde_json::json!({"error": {"type": error_type, "message": message}}).to_string(),
        ),
        Some(Fault::Respond { status, body }) => (status, body),
        Some(Fault::ForwardThenStall) => {
            let (status, body) = forward(&request, &upstream).await;
            remember(&state, &recorded, status, body);
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        None => match remembered_answer(&state, &recorded) {
            Some(answer) => answer,
            None => {
                let (status, body) = forward(&request, &upstream).await;
                remember(&state, &recorded, status, body)
            }
        },
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// In remembering mode, the answer Stripe would give from what it keeps:
/// a list of the customer's items, or the first answer to a repeated
/// idempotency key.
fn remembered_answer(state: &Mutex<State>, r: &Recorded) -> Option<(u16, String)> {
    let state = state.lock().unwrap_or_else(|p| p.into_inner());
    let items = state.items.as_ref()?;
    if r.path != "/v1/invoiceitems" {
        return None;
    }
    if r.method == "GET" {
        let customer = r.param("customer")?;
        let data: Vec<&serde_json::Value> = items
            .iter()
            .filter(|i| i.customer == customer)
            .map(|i| &i.json)
            .collect();
        let list = serde_json::json!({
            "object": "list", "data": data, "has_more": false, "url": "/v1/invoiceitems",
        });
        return Some((200, list.to_string()));
    }
    let key = r.idempotency_key.as_deref()?;
    items
        .iter()
        .find(|i| i.idempotency_key.as_deref() == Some(key))
        .map(|i| (200, i.json.to_string()))
}

/// In remembering mode, keeps a successfully created item (with a unique
/// id, and the customer and metadata sent) and answers with it.
fn remember(state: &Mutex<State>, r: &Recorded, status: u16, body: String) -> (u16, String) {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(items) = state.items.as_mut() else {
        return (status, body);
    };
    if r.method != "POST" || r.path != "/v1/invoiceitems" || status != 200 {
        return (status, body);
    }
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(&body) else {
        return (status, body);
    };
    let customer = r.field("customer").unwrap_or_default().to_owned();
    let metadata: serde_json::Map<String, serde_json::Value> = r
        .form
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((key.to_owned(), serde_json::Value::from(v.as_str())))
        })
        .collect();
    json["id"] = format!("ii_relay_{}", items.len() + 1).into();
    json["customer"] = customer.clone().into();
    json["metadata"] = metadata.into();
    if let Some(amount) = r.field("amount").and_then(|a| a.parse::<i64>().ok()) {
        json["amount"] = amount.into();
    }
    items.push(RememberedItem {
        customer,
        idempotency_key: r.idempotency_key.clone(),
        json: json.clone(),
    });
    (status, json.to_string())
}

/// Sends the request on to stripe-mock; a failure becomes a 502 the test
/// will notice.
async fn forward(request: &Request, upstream: &str) -> (u16, String) {
    let method =
        reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut out = super::client().request(method, format!("{upstream}{}", request.target));
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "stripe-version",
        "stripe-account",
        "user-agent",
    ] {
        if let Some(value) = request.header(name) {
            out = out.header(name, value);
        }
    }
    match out.body(request.body.clone()).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (
            502,
            serde_json::json!({"error": {"type": "api_error", "message": format!("relay: {e}")}})
                .to_string(),
        ),
    }
}

/// Reads one request: head up to the blank line, then Content-Length bytes.
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// `a=1&metadata%5Bk%5D=v+w` → `[("a","1"), ("metadata[k]","v w")]`.
pub fn decode_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
