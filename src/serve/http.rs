//! The batching server over HTTP, and a client that drives any server speaking its API.
//!
//! * `POST /v1/qa` with `{"question": "...", "context": "..."}` answers
//!   `{"answer", "score", "start", "end", "windows", "latency_ms"}` (`start`/`end`: code points
//!   into the context, end exclusive; `null` when no span was valid).
//! * `GET /health` answers `{"status": "ok", "model": ...}`.
//!
//! Errors are JSON `{"error": "..."}` with a 4xx for what the client got wrong (400 malformed
//! or empty fields, 404 unknown path, 405 wrong method, 411 no length, 413 a body over the
//! limit, 415 not JSON) and 503 with `Retry-After` when the queue is full. Each request is
//! read and tokenised on a thread of its own; the batcher's workers answer them, through one
//! responder thread so a slow client never holds a worker.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use tiny_http::{Header, Method, Request, Response};

use super::batcher::{Answer, Completion, Rejected, Reply, Server};
use super::scenario::{Query, Sut};

/// A question for `POST /v1/qa`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaRequest {
    pub question: String,
    pub context: String,
}

/// The answer of `POST /v1/qa`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaResponse {
    pub answer: String,
    pub score: f32,
    pub start: Option<usize>,
    pub end: Option<usize>,
    /// Windows the context became, and the server's own time for the query.
    pub windows: Option<usize>,
    pub latency_ms: Option<f64>,
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
        }
    }
}

/// A listening server: its address, and how to stop it.
pub struct HttpServer {
    http: Arc<tiny_http::Server>,
    pub addr: std::net::SocketAddr,
}

impl HttpServer {
    /// Binds `addr` (`host:port`; port 0 picks a free one).
    pub fn bind(addr: &str) -> Result<Self> {
        let http = tiny_http::Server::http(addr)
            .map_err(|e| crate::error::unavailable(format!("cannot listen on {addr}: {e}")))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow!("{addr} is not an IP address"))?;
        Ok(Self {
            http: Arc::new(http),
            addr,
        })
    }

    /// Answers requests with `server` until `stop` is set (checked every 100 ms).
    pub fn run(&self, server: &Server, model: &str, limits: HttpLimits, stop: &AtomicBool) {
        let (tx, rx) = channel::<(Request, Response<std::io::Cursor<Vec<u8>>>)>();
        let responder = std::thread::Builder::new()
            .name("http-responder".into())
            .spawn(move || {
                for (req, resp) in rx {
                    // A client that went away is its own loss.
                    let _ = req.respond(resp);
                }
            })
            .expect("spawn the HTTP responder");
        // Each request is read, checked and tokenised on a thread of its own: a client that
        // sends its body slowly holds only its own thread, never the accepting loop.
        std::thread::scope(|scope| {
            while !stop.load(Ordering::Relaxed) {
                match self.http.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some(req)) => {
                        let tx = tx.clone();
                        scope.spawn(move || handle(req, server, model, limits, &tx));
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        });
        drop(tx);
        let _ = responder.join();
    }
}

fn json_response(status: u16, body: &impl Serialize) -> Response<std::io::Cursor<Vec<u8>>> {
    let bytes = serde_json::to_vec(body).expect("serialisable");
    Response::from_data(bytes)
        .with_status_code(status)
        .with_header(Header::from_bytes("Content-Type", "application/json").expect("header"))
}

fn error(status: u16, message: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(status, &serde_json::json!({ "error": message.into() }))
}

fn handle(
    mut req: Request,
    server: &Server,
    model: &str,
    limits: HttpLimits,
    tx: &Sender<(Request, Response<std::io::Cursor<Vec<u8>>>)>,
) {
    let arrival = Instant::now();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let reply_now = |req: Request, resp| drop(tx.send((req, resp)));
    match (req.method(), path.as_str()) {
        (Method::Get, "/health") => {
            let body = serde_json::json!({ "status": "ok", "model": model });
            reply_now(req, json_response(200, &body));
        }
        (Method::Post, "/v1/qa") => match read_request(&mut req, limits) {
            Err((status, msg)) => reply_now(req, error(status, msg)),
            Ok(q) => {
                let tx2 = tx.clone();
                let slot = Arc::new(std::sync::Mutex::new(Some(req)));
                let slot2 = Arc::clone(&slot);
                let reply: Reply = Box::new(move |r: Result<Completion, String>| {
                    let Some(req) = slot2.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                        return;
                    };
                    let resp = match r {
                        Ok(c) => json_response(200, &response_of(&c.answer, &c, arrival)),
                        Err(e) => error(500, e),
                    };
                    let _ = tx2.send((req, resp));
                });
                if let Err(e) = server.submit(q.question.into(), q.context.into(), arrival, reply) {
                    let Some(req) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                        return;
                    };
                    let resp = match e {
                        Rejected::QueueFull(_) | Rejected::Closed => error(503, e.to_string())
                            .with_header(Header::from_bytes("Retry-After", "1").expect("header")),
                        Rejected::Invalid(m) => error(400, m),
                    };
                    reply_now(req, resp);
                }
            }
        },
        (_, "/health" | "/v1/qa") => {
            let m = req.method().to_string();
            reply_now(req, error(405, format!("{m} is not allowed on {path}")));
        }
        _ => reply_now(req, error(404, format!("no such endpoint: {path}"))),
    }
}

fn response_of(answer: &Answer, c: &Completion, arrival: Instant) -> QaResponse {
    QaResponse {
        answer: answer.text.clone(),
        score: answer.score,
        start: answer.span.map(|s| s.0),
        end: answer.span.map(|s| s.1),
        windows: c.stages.map(|s| s.windows),
        latency_ms: Some(c.finished.saturating_duration_since(arrival).as_secs_f64() * 1e3),
    }
}

/// The body of a `POST /v1/qa`, or the status and reason to refuse it with.
fn read_request(req: &mut Request, limits: HttpLimits) -> Result<QaRequest, (u16, String)> {
    let json = req
        .headers()
        .iter()
        .any(|h| h.field.equiv("Content-Type") && h.value.as_str().starts_with("application/json"));
    if !json {
        return Err((
            415,
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    let Some(len) = req.body_length() else {
        return Err((411, "a Content-Length is required".into()));
    };
    if len > limits.max_body_bytes {
        return Err((
            413,
            format!(
                "the body has {len} bytes; the limit is {}",
                limits.max_body_bytes
            ),
        ));
    }
    let mut body = Vec::with_capacity(len);
    req.as_reader()
        .take(limits.max_body_bytes as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| (400, format!("reading the body: {e}")))?;
    let q: QaRequest = serde_json::from_slice(&body).map_err(|e| {
        (
            400,
            format!("expected {{\"question\": string, \"context\": string}}: {e}"),
        )
    })?;
    if q.question.trim().is_empty() || q.context.trim().is_empty() {
        return Err((400, "question and context must not be empty".into()));
    }
    Ok(q)
}

/// A server over HTTP as a system under test: each query is one `POST /v1/qa` on a thread of
/// its own, at most `max_in_flight` at once (beyond, the query is refused here, which counts
/// against the run like a refusal there).
pub struct HttpSut {
    url: String,
    agent: ureq::Agent,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

impl HttpSut {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`); checks `/health`.
    pub fn connect(base: &str, max_in_flight: usize) -> Result<Self> {
        let base = base.trim_end_matches('/');
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let health = format!("{base}/health");
        let mut resp = agent
            .get(&health)
            .call()
            .map_err(|e| crate::error::unavailable(format!("{health}: {e}")))?;
        if resp.status() != 200 {
            return Err(crate::error::unavailable(format!(
                "{health} answered {}: {}",
                resp.status(),
                resp.body_mut().read_to_string().unwrap_or_default()
            )));
        }
        Ok(Self {
            url: format!("{base}/v1/qa"),
            agent,
            in_flight: Arc::default(),
            max_in_flight: max_in_flight.max(1),
        })
    }

    /// One request, answered or failed in words.
    fn post(agent: &ureq::Agent, url: &str, q: &QaRequest) -> Result<QaResponse> {
        let mut resp = agent.post(url).send_json(q).context("sending")?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("reading the answer")?;
        if status != 200 {
            return Err(anyhow!("HTTP {status}: {text}"));
        }
        serde_json::from_str(&text).with_context(|| format!("not a QA answer: {text}"))
    }
}

impl Sut for HttpSut {
    fn issue(&self, query: &Query, _arrival: Instant, reply: Reply) -> Result<(), Rejected> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if n >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Rejected::QueueFull(n));
        }
        let (agent, url, in_flight) = (
            self.agent.clone(),
            self.url.clone(),
            Arc::clone(&self.in_flight),
        );
        let q = QaRequest {
            question: query.question.to_string(),
            context: query.context.to_string(),
        };
        std::thread::spawn(move || {
            let r = Self::post(&agent, &url, &q);
            let finished = Instant::now();
            in_flight.fetch_sub(1, Ordering::SeqCst);
            reply(match r {
                Ok(a) => Ok(Completion {
                    answer: Answer {
                        text: a.answer,
                        score: a.score,
                        span: a.start.zip(a.end),
                    },
                    finished,
                    stages: None,
                }),
                Err(e) => Err(format!("{e:#}")),
            });
        });
        Ok(())
    }
}
