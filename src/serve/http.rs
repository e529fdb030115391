//! The batching server over HTTP/1.1: hyper on tokio, with every resource a client can take
//! bounded.
//!
//! Routes:
//! * `POST /v1/qa` with `{"question", "context"}`: `{"answer", "score", "start", "end",
//!   "windows", "latency_ms"}` (`start`/`end`: code points into the context, end exclusive;
//!   `null` when no span was valid).
//! * `POST /` and `POST /models/<model>`: Hugging Face's question-answering task
//!   ([`super::api`]).
//! * `GET /health` (and `/v2/health/live`): liveness, 200 while the process serves.
//! * `GET /ready` (and `/v2/health/ready`): 200 once the model is loaded and has answered a
//!   warm-up query, 503 before and while shutting down.
//! * `GET /info`: model, precision, tier, threads, windows, batcher and limits.
//! * `GET /metrics`: Prometheus text format ([`super::metrics`]).
//!
//! Every answer carries `x-total-time`, `x-tokenize-time`, `x-queue-time`,
//! `x-inference-time` and `x-decode-time` (milliseconds) and `x-windows`.
//!
//! Errors are JSON `{"error": "..."}`: 400 malformed (naming the field), 404 unknown path or
//! model, 405 wrong method (with `Allow`), 408 a body not sent within the body timeout, 413 a
//! body over the limit (refused from its `Content-Length` before it is read, or as soon as a
//! chunked one passes the limit), 415 not JSON, and 503 with `Retry-After` when the server is
//! at a limit, loading, or stopping.
//!
//! Bounds: at most `max_connections` connections (beyond, a connection gets a 503 and is
//! closed); a connection must send each request's headers within `header_timeout` (this also
//! closes idle keep-alive connections) and its body within `body_timeout`; at most
//! `max_in_flight` requests are answered at once, counted from when their body has arrived,
//! so a slow sender never holds a slot a fast one needs; the batcher's queue bounds the rest.
//! The HTTP front runs on `io_threads` threads and tokenises on at most
//! `2 x io_threads` more: the thread count does not grow with clients. On SIGTERM or
//! Ctrl-C it stops accepting, answers what it admitted, and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch, Semaphore};

use super::api::{parse, Api, HfAnswer, Parsed, QaResponse, ServerWindows};
use super::batcher::{BatchObserver, Completion, Rejected, Server, Submission};
use super::metrics::{BatcherNow, Metrics, Refusal};

/// Limits on what clients may take, and how the front runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HttpConfig {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// QA requests being answered at once (from their body's arrival to their answer).
    pub max_in_flight: usize,
    /// Time a client has to send a request's headers (and an idle connection stays open).
    #[serde(serialize_with = "seconds", rename = "header_timeout_s")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body, from its headers.
    #[serde(serialize_with = "seconds", rename = "body_timeout_s")]
    pub body_timeout: Duration,
    /// How long shutting down waits for requests in flight.
    #[serde(serialize_with = "seconds", rename = "shutdown_grace_s")]
    pub shutdown_grace: Duration,
    /// Threads running connections.
    pub io_threads: usize,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_connections: 1024,
            max_in_flight: 256,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            io_threads: 2,
        }
    }
}

/// What `GET /info` says about the model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub model: String,
    pub source: String,
    pub precision: String,
    pub isa: String,
    pub threads: usize,
}

/// A loaded model behind its batcher, ready to answer.
pub struct Loaded {
    pub server: Server,
    pub info: ModelInfo,
    pub windows: ServerWindows,
}

/// A bound address, not yet serving.
pub struct Listener {
    inner: std::net::TcpListener,
    pub addr: SocketAddr,
}

/// Binds `addr` (`host:port`; port 0 picks a free one).
pub fn bind(addr: &str) -> Result<Listener> {
    let inner = std::net::TcpListener::bind(addr)
        .map_err(|e| crate::error::unavailable(format!("cannot listen on {addr}: {e}")))?;
    inner
        .set_nonblocking(true)
        .context("setting the listener non-blocking")?;
    let addr = inner.local_addr().context("the listener's address")?;
    Ok(Listener { inner, addr })
}

struct State {
    model: String,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    loaded: OnceLock<Loaded>,
    stopping: AtomicBool,
    in_flight: Semaphore,
    load_error: Mutex<Option<anyhow::Error>>,
}

/// What a finished `serve` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Requests still unanswered when the shutdown grace ran out (0: a clean stop).
    pub abandoned: usize,
}

/// Serves on `listener` until `stop` completes ([`signalled`]: SIGTERM or Ctrl-C) or `load`
/// fails. `load` runs on a thread of its own while the server already answers liveness (and
/// 503 to questions); it gets the observer the batcher must report its batches to. Once it
/// returns, one warm-up query runs, then the server is ready. Stopping refuses new
/// connections, lets those open finish the requests they sent (up to `shutdown_grace`), and
/// returns once the batcher has answered all it admitted.
pub fn serve<L, F>(
    listener: Listener,
    model: &str,
    config: HttpConfig,
    load: L,
    stop: F,
) -> Result<Served>
where
    L: FnOnce(BatchObserver) -> Result<Loaded> + Send + 'static,
    F: std::future::Future<Output = ()> + Send,
{
    let threads = config.io_threads.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(2 * threads)
        .thread_name("http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(State {
        model: model.to_string(),
        config,
        metrics: Arc::clone(&metrics),
        loaded: OnceLock::new(),
        stopping: AtomicBool::new(false),
        in_flight: Semaphore::new(config.max_in_flight.max(1)),
        load_error: Mutex::new(None),
    });
    let (failed_tx, failed_rx) = watch::channel(false);
    {
        let state = Arc::clone(&state);
        let observer: BatchObserver = Arc::new(move |b| metrics.batch(b));
        std::thread::Builder::new()
            .name("model-load".into())
            .spawn(move || {
                let begin = Instant::now();
                match load(observer).and_then(|l| warm_up(&l.server).map(|()| l)) {
                    Ok(l) => {
                        let _ = state.loaded.set(l);
                        eprintln!("ready in {:.1} s", begin.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        *state.load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        let _ = failed_tx.send(true);
                    }
                }
            })
            .context("starting the model loader")?;
    }
    let served = runtime.block_on(run(listener, Arc::clone(&state), failed_rx, stop))?;
    // Requests abandoned after the grace are dropped with the runtime; the batcher then
    // answers (to no one) what it admitted, and stops.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(e) = state
        .load_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(e);
    }
    Ok(served)
}

/// One query through the whole path, so the first client's answer is not the one that pays
/// for first-touch costs.
fn warm_up(server: &Server) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    server
        .submit(
            "What is this?".into(),
            "This is a short context the server answers once before it says it is ready.".into(),
            Instant::now(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .map_err(|e| anyhow::anyhow!("the warm-up query was refused: {e}"))?;
    rx.recv()
        .context("the batcher dropped the warm-up query")?
        .map_err(|e| anyhow::anyhow!("the warm-up query failed: {e}"))?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn signalled() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Connections beyond the limit that may be sent their 503 at once; past that they are
/// closed unanswered.
const BUSY_REPLIES: usize = 64;

/// Accepts connections until `stop` resolves or the model fails to load, then drains the open
/// ones ([`drain`]).
async fn run(
    listener: Listener,
    state: Arc<State>,
    mut failed: watch::Receiver<bool>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Served> {
    let listener =
        tokio::net::TcpListener::from_std(listener.inner).context("registering the listener")?;
    let config = state.config;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let busy = Arc::new(Semaphore::new(BUSY_REPLIES));
    tokio::pin!(stop);
    // The loader says `true` when loading failed, and drops its end when it succeeded.
    let load_failed = async move {
        if failed.wait_for(|&f| f).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(load_failed);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // keep serving the ones open.
                    eprintln!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => {
                eprintln!("stopping: answering the requests in flight, refusing new ones");
                break;
            }
            _ = &mut load_failed => break,
        };
        serve_connection(stream, &state, &http, &graceful, &connections, &busy);
    }
    drop(listener);
    state.stopping.store(true, Ordering::SeqCst);
    Ok(drain(graceful, &state).await)
}

/// Serves one accepted connection on a task of its own; over the connection limit, sends it a
/// 503 instead (while fewer than [`BUSY_REPLIES`] are being sent; past that, closes it).
fn serve_connection(
    stream: tokio::net::TcpStream,
    state: &Arc<State>,
    http: &hyper::server::conn::http1::Builder,
    graceful: &GracefulShutdown,
    connections: &Arc<Semaphore>,
    busy: &Arc<Semaphore>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(permit) = Arc::clone(connections).try_acquire_owned() else {
        state.metrics.refused(Refusal::Connections);
        if let Ok(slot) = Arc::clone(busy).try_acquire_owned() {
            let limit = state.config.max_connections;
            tokio::spawn(async move {
                refuse_connection(stream, limit).await;
                drop(slot);
            });
        }
        return;
    };
    let st = Arc::clone(state);
    let service = hyper::service::service_fn(move |req| {
        let st = Arc::clone(&st);
        async move { Ok::<_, Infallible>(handle(&st, req).await) }
    });
    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
    let st = Arc::clone(state);
    tokio::spawn(async move {
        let _open = st.metrics.connection();
        if let Err(e) = conn.await {
            if e.is_timeout() {
                st.metrics.timed_out();
            }
        }
        drop(permit);
    });
}

/// Once the listener is closed: waits for the open connections to finish their requests, for
/// at most the shutdown grace, and counts those left unanswered.
async fn drain(graceful: GracefulShutdown, state: &State) -> Served {
    let config = state.config;
    let in_flight = || config.max_in_flight.max(1) - state.in_flight.available_permits();
    tokio::select! {
        _ = graceful.shutdown() => Served { abandoned: 0 },
        _ = tokio::time::sleep(config.shutdown_grace) => {
            let abandoned = in_flight();
            eprintln!(
                "stopping: {abandoned} requests still unanswered after {:.0} s; closing",
                config.shutdown_grace.as_secs_f64()
            );
            Served { abandoned }
        }
    }
}

/// A 503 for a connection over the limit, written without reading its request (beyond
/// draining a little, so closing does not reset the connection before the client reads it).
async fn refuse_connection(mut stream: tokio::net::TcpStream, limit: usize) {
    let body = serde_json::json!({
        "error": format!("too many connections (the limit is {limit}); retry later")
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 << 10 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let bytes = serde_json::to_vec(body).expect("serialisable");
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

fn unavailable(message: impl Into<String>) -> Reply {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A route by name (a fixed set: the metrics' labels), and the method it takes.
fn route(path: &str) -> Option<(&'static str, Method)> {
    Some(match path {
        "/health" | "/v2/health/live" => ("health", Method::GET),
        "/ready" | "/v2/health/ready" => ("ready", Method::GET),
        "/info" => ("info", Method::GET),
        "/metrics" => ("metrics", Method::GET),
        "/v1/qa" => ("v1_qa", Method::POST),
        "/" => ("hf", Method::POST),
        p if p.starts_with("/models/") => ("hf_model", Method::POST),
        _ => return None,
    })
}

async fn handle(st: &Arc<State>, req: Request<Incoming>) -> Reply {
    let arrival = Instant::now();
    let path = req.uri().path().to_string();
    let (name, reply) = match route(&path) {
        None => (
            "other",
            error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        ),
        Some((name, method)) if req.method() != method => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {path}; use {method}", req.method()),
            );
            r.headers_mut().insert(
                ALLOW,
                HeaderValue::from_str(method.as_str()).expect("a method is a header value"),
            );
            (name, r)
        }
        Some((name, _)) => (
            name,
            match name {
                "health" => json(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ok", "model": st.model}),
                ),
                "ready" => readiness(st),
                "info" => info(st),
                "metrics" => metrics(st),
                "v1_qa" => answer(st, Api::Bertbench, req, arrival).await,
                "hf_model" => {
                    let asked = path.trim_start_matches("/models/");
                    if asked == st.model {
                        answer(st, Api::Hf, req, arrival).await
                    } else {
                        error(
                            StatusCode::NOT_FOUND,
                            format!("this server serves {}, not {asked}", st.model),
                        )
                    }
                }
                _ => answer(st, Api::Hf, req, arrival).await,
            },
        ),
    };
    st.metrics.request(name, reply.status().as_u16());
    reply
}

fn readiness(st: &State) -> Reply {
    let status = if st.stopping.load(Ordering::SeqCst) {
        "shutting down"
    } else if st.loaded.get().is_some() {
        return json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "model": st.model}),
        );
    } else {
        "loading"
    };
    let mut r = json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"status": status, "model": st.model}),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn info(st: &State) -> Reply {
    let loaded = st.loaded.get();
    let body = serde_json::json!({
        "model": st.model,
        "ready": loaded.is_some() && !st.stopping.load(Ordering::SeqCst),
        "bertbench": crate::record::VERSION,
        "commit": crate::record::GIT_COMMIT,
        "loaded": loaded.map(|l| &l.info),
        "windows": loaded.map(|l| serde_json::json!({
            "max_seq_length": l.windows.features.max_seq_length,
            "doc_stride": l.windows.features.doc_stride,
            "max_query_length": l.windows.features.max_query_length,
            "max_answer_length": l.windows.decode.max_answer_length,
            "n_best_size": l.windows.decode.n_best_size,
            "max_position_embeddings": l.windows.max_positions,
        })),
        "batcher": loaded.map(|l| {
            let c = l.server.config();
            serde_json::json!({
                "max_batch": c.max_batch,
                "max_queue_delay_ms": c.max_queue_delay.as_secs_f64() * 1e3,
                "queue_capacity": c.queue_capacity,
                "workers": c.workers,
            })
        }),
        "limits": st.config,
        "routes": ["POST /v1/qa", "POST /", "POST /models/<model>", "GET /health", "GET /ready",
                   "GET /info", "GET /metrics", "GET /v2/health/live", "GET /v2/health/ready"],
    });
    json(StatusCode::OK, &body)
}

fn metrics(st: &State) -> Reply {
    let text = st.metrics.encode(st.loaded.get().map(|l| {
        let (queries, windows) = l.server.waiting();
        BatcherNow {
            queries,
            windows,
            abandoned: l.server.abandoned(),
        }
    }));
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// A QA request: read and parse its body, queue it, and wait for its answer.
async fn answer(st: &Arc<State>, api: Api, req: Request<Incoming>, arrival: Instant) -> Reply {
    if st.stopping.load(Ordering::SeqCst) {
        st.metrics.refused(Refusal::ShuttingDown);
        return unavailable("the server is shutting down");
    }
    let Some(loaded) = st.loaded.get() else {
        st.metrics.refused(Refusal::NotReady);
        return unavailable("the model is still loading; GET /ready says when it is ready");
    };
    let body = match read_body(st, req).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let parsed = match parse(api, &body, &loaded.windows) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // Counted from here: a client still sending its body holds no slot.
    let Ok(_slot) = st.in_flight.try_acquire() else {
        st.metrics.refused(Refusal::InFlight);
        return unavailable(format!(
            "{} requests in flight (the limit); retry later",
            st.config.max_in_flight
        ));
    };
    let _counted = st.metrics.in_flight();
    let list = parsed.list;
    let rx = match submit(st, parsed, arrival).await {
        Ok(rx) => rx,
        Err(reply) => return reply,
    };
    let c = match rx.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the batcher dropped the query",
            )
        }
    };
    let total = c.finished.saturating_duration_since(arrival);
    let mut reply = match api {
        Api::Bertbench => json(StatusCode::OK, &v1_answer(&c, total)),
        Api::Hf if list => json(
            StatusCode::OK,
            &std::iter::once(&c.answer)
                .chain(&c.alternatives)
                .map(HfAnswer::from)
                .collect::<Vec<_>>(),
        ),
        Api::Hf => json(StatusCode::OK, &HfAnswer::from(&c.answer)),
    };
    timing_headers(&mut reply, &c, total);
    if let Some(stages) = &c.stages {
        st.metrics.answered(stages, total);
    }
    reply
}

/// Where a query's answer arrives.
type Answered = oneshot::Receiver<Result<Completion, String>>;

/// Tokenises and queues a parsed query for the batcher, off the connection threads (on the
/// bounded blocking pool: tokenising is CPU work); a query the batcher refuses is its reply.
async fn submit(st: &Arc<State>, parsed: Parsed, arrival: Instant) -> Result<Answered, Reply> {
    let (tx, rx) = oneshot::channel::<Result<Completion, String>>();
    let submitter = Arc::clone(st);
    let submitted = tokio::task::spawn_blocking(move || {
        let server = &submitter.loaded.get().expect("loaded (checked)").server;
        // A client that goes away drops its request (hyper drops this handler's future, and
        // with it the receiver): the batcher drops the query if it has not run yet.
        let tx = Arc::new(Mutex::new(Some(tx)));
        let tx2 = Arc::clone(&tx);
        server.send(Submission {
            question: parsed.question.into(),
            context: parsed.context.into(),
            options: parsed.options,
            arrival,
            reply: Box::new(move |r| {
                if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(r);
                }
            }),
            wanted: Some(Box::new(move || {
                tx2.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(|tx| !tx.is_closed())
            })),
        })
    })
    .await;
    match submitted {
        Ok(Ok(())) => Ok(rx),
        Ok(Err(Rejected::QueueFull(n))) => {
            st.metrics.refused(Refusal::QueueFull);
            Err(unavailable(format!(
                "queue full ({n} queries waiting); retry later"
            )))
        }
        Ok(Err(Rejected::Closed)) => {
            st.metrics.refused(Refusal::ShuttingDown);
            Err(unavailable("the server is shutting down"))
        }
        Ok(Err(Rejected::Invalid(m))) => Err(error(StatusCode::BAD_REQUEST, m)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("tokenising: {e}"),
        )),
    }
}

fn v1_answer(c: &Completion, total: Duration) -> QaResponse {
    QaResponse {
        answer: c.answer.text.clone(),
        score: c.answer.score,
        start: c.answer.span.map(|s| s.0),
        end: c.answer.span.map(|s| s.1),
        windows: c.stages.map(|s| s.windows),
        latency_ms: Some(total.as_secs_f64() * 1e3),
    }
}

fn timing_headers(reply: &mut Reply, c: &Completion, total: Duration) {
    let ms = |d: Duration| {
        HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("a number")
    };
    let h = reply.headers_mut();
    h.insert("x-total-time", ms(total));
    if let Some(s) = &c.stages {
        h.insert("x-tokenize-time", ms(s.tokenize));
        h.insert("x-queue-time", ms(s.queue));
        h.insert("x-inference-time", ms(s.model));
        h.insert("x-decode-time", ms(s.decode));
        h.insert("x-windows", HeaderValue::from(s.windows));
    }
}

/// A request's JSON body, or the reply refusing it.
async fn read_body(st: &State, req: Request<Incoming>) -> Result<Bytes, Reply> {
    let limit = st.config.max_body_bytes;
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    let too_large = |len: String| {
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body has {len} bytes; the limit is {limit}"),
        );
        // The rest of the body is never read: this connection ends here.
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > limit as u64) {
        return Err(too_large(len.to_string()));
    }
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(st.config.body_timeout, body.collect()).await {
        Err(_) => {
            st.metrics.timed_out();
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {:.0} s",
                    st.config.body_timeout.as_secs_f64()
                ),
            );
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large(format!("more than {limit}")))
        }
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
