//! The HTTP layer shared by all repositories of one registry: scheme choice, authentication,
//! token cache, stall timeouts, retries, request logs and statistics.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::backend::ByteStream;
use cache_core::{Error, ErrorKind};
use futures_util::Stream;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::sync::OnceCell;

use crate::auth::{self, Challenge, Credentials, Secret, Token, TokenResponse};
use crate::error::{Action, Fail, parse_error, transport_error};
use crate::retry::{RetryPolicy, retry};

/// Byte bodies larger than this are sent as watched uploads, in slices of this size.
const UPLOAD_SLICE: usize = 256 * 1024;

/// Error bodies are read up to this size for their message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// State shared by every [`crate::Registry`] of one registry host (see `with_repository`).
pub(crate) struct Shared {
    /// The HTTP clients (connection pools) of this registry, built on first use: `plain` for
    /// `http://` URLs (no TLS roots loaded), `tls` for `https://` ones. A registry uses one of
    /// them; a token realm on HTTPS may use the other.
    plain: std::sync::OnceLock<reqwest::Client>,
    tls: std::sync::OnceLock<reqwest::Client>,
    /// How to build `http`.
    client_options: ClientOptions,
    /// How long a request may make no progress: no response to a sent request, no byte of a
    /// body being read or written. There is no whole-request timeout: big blobs take long.
    pub(crate) timeout: Duration,
    /// The registry as written in references, for messages and annotations.
    pub(crate) host: String,
    pub(crate) credentials: Credentials,
    pub(crate) policy: RetryPolicy,
    pub(crate) chunk_size: Option<u64>,
    /// Bounds the number of concurrent blob uploads.
    pub(crate) uploads: tokio::sync::Semaphore,
    pub(crate) stats: Counters,
    /// The base URL in use: plain HTTP first where allowed, else HTTPS.
    base: Mutex<Url>,
    /// Whether the registry answered on `base` (until then a plain-HTTP base may still turn
    /// out to be a TLS server, whose `400` answer moves it to HTTPS).
    confirmed: AtomicBool,
    secret: OnceCell<Option<Secret>>,
    auth: Mutex<AuthState>,
    /// Serialises token fetches so concurrent requests share one token.
    token_fetch: tokio::sync::Mutex<()>,
}

/// What the HTTP client is built from.
pub(crate) struct ClientOptions {
    pub(crate) user_agent: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) insecure: bool,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, Token>,
}

/// Request counters; see [`crate::Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) blobs_headed: AtomicU64,
    pub(crate) blobs_uploaded: AtomicU64,
    pub(crate) bytes_uploaded: AtomicU64,
    pub(crate) blobs_mounted: AtomicU64,
    pub(crate) blobs_downloaded: AtomicU64,
    pub(crate) bytes_downloaded: AtomicU64,
    pub(crate) manifests_fetched: AtomicU64,
    pub(crate) manifests_put: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) tokens_fetched: AtomicU64,
    /// Requests sent, by method: GET, HEAD, POST, PUT, PATCH, DELETE, other.
    pub(crate) requests: [AtomicU64; 7],
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn count_request(&self, method: &Method) {
        let slot = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::PATCH => 4,
            Method::DELETE => 5,
            _ => 6,
        };
        Counters::add(&self.requests[slot], 1);
    }
}

/// A request body.
pub(crate) enum Body {
    Empty,
    Bytes(Bytes),
    /// A stream that can be sent again only if no byte of it was read yet.
    Stream(StreamBody),
}

/// One logical request; retried and re-authenticated as a whole.
pub(crate) struct Request<'a> {
    pub(crate) action: Action<'a>,
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Body,
    /// Token scopes the request needs.
    pub(crate) scopes: Vec<String>,
    /// Statuses handed back to the caller; any other status is an error.
    pub(crate) accept: &'a [u16],
}

impl Shared {
    /// Creates the shared state; nothing is sent (and no TLS root is loaded) until the first
    /// request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client_options: ClientOptions,
        timeout: Duration,
        host: String,
        api_host: String,
        allow_http: bool,
        credentials: Credentials,
        policy: RetryPolicy,
        chunk_size: Option<u64>,
        max_parallel_uploads: usize,
    ) -> Result<Self, Error> {
        let scheme = if allow_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|err| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("invalid registry host {api_host:?}: {err}"),
            )
        })?;
        Ok(Shared {
            plain: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
            client_options,
            timeout,
            host,
            credentials,
            policy,
            chunk_size,
            uploads: tokio::sync::Semaphore::new(max_parallel_uploads.max(1)),
            stats: Counters::default(),
            base: Mutex::new(base),
            confirmed: AtomicBool::new(false),
            secret: OnceCell::new(),
            auth: Mutex::new(AuthState::default()),
            token_fetch: tokio::sync::Mutex::new(()),
        })
    }

    /// The HTTP client for `url`, built on first use: without TLS roots for plain HTTP
    /// (nothing to verify), with the platform's verifier (or none with `insecure`) for HTTPS.
    pub(crate) fn client(&self, url: &Url) -> Result<&reqwest::Client, Error> {
        let plain = url.scheme() == "http";
        let cell = if plain { &self.plain } else { &self.tls };
        if let Some(client) = cell.get() {
            return Ok(client);
        }
        let options = &self.client_options;
        let builder = reqwest::Client::builder()
            .user_agent(options.user_agent.clone())
            .connect_timeout(options.connect_timeout);
        let builder = if plain {
            builder.tls_certs_only(Vec::new())
        } else {
            builder.tls_danger_accept_invalid_certs(options.insecure)
        };
        let client = builder.build().map_err(|err| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot create the HTTP client for registry {}", self.host),
            )
            .with_source(err)
        })?;
        Ok(cell.get_or_init(|| client))
    }

    /// The registry's base URL (`http://host/` where plain HTTP is allowed, else
    /// `https://host/`). No request is sent to find it: a plain-HTTP base that meets a TLS
    /// server moves to HTTPS on the first request (see `attempt`).
    pub(crate) async fn base(&self) -> Result<Url, Error> {
        self.base
            .lock()
            .map(|base| base.clone())
            .map_err(|_| Error::new(ErrorKind::Unexpected, "registry state poisoned by a panic"))
    }

    /// Moves an unconfirmed plain-HTTP base to HTTPS after an answer that says it is a TLS
    /// server; returns whether it did.
    fn move_to_https(&self) -> bool {
        if self.confirmed.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(mut base) = self.base.lock() else {
            return false;
        };
        if base.scheme() != "http" || base.set_scheme("https").is_err() {
            return false;
        }
        tracing::debug!(host = %self.host, "plain HTTP failed, using HTTPS");
        true
    }

    /// `url` on the current base, if it points at the registry with another scheme (a
    /// request built before the base moved to HTTPS).
    fn rebase(&self, url: &Url) -> Url {
        let Ok(base) = self.base.lock() else {
            return url.clone();
        };
        let mut url = url.clone();
        if url.scheme() != base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default().is_some()
            && url.port() == base.port()
        {
            let _ = url.set_scheme(base.scheme());
        }
        url
    }

    /// The resolved credentials, read once (Docker's config runs helpers: blocking thread).
    async fn secret(&self) -> Result<Option<&Secret>, Error> {
        let secret = self
            .secret
            .get_or_try_init(|| async {
                let credentials = self.credentials.clone();
                let host = self.host.clone();
                tokio::task::spawn_blocking(move || auth::resolve(&credentials, &host))
                    .await
                    .map_err(|err| {
                        Error::new(ErrorKind::Unexpected, "reading credentials failed")
                            .with_source(err)
                    })?
            })
            .await?;
        Ok(secret.as_ref())
    }

    /// Whether `url` is on the registry itself (credentials are never sent elsewhere).
    fn is_registry_url(&self, url: &Url) -> bool {
        self.base.lock().is_ok_and(|base| {
            base.scheme() == url.scheme()
                && base.host_str() == url.host_str()
                && base.port_or_known_default() == url.port_or_known_default()
        })
    }

    /// The `Authorization` value for a request to `url` needing `scopes`.
    async fn authorization(
        &self,
        url: &Url,
        scopes: &[String],
        action: &Action<'_>,
    ) -> Result<Option<String>, Fail> {
        if !self.is_registry_url(url) {
            return Ok(None);
        }
        let challenge = self
            .auth
            .lock()
            .ok()
            .and_then(|state| state.challenge.clone());
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.secret().await?.and_then(Secret::basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self
                    .token(&realm, service.as_deref(), scopes, action)
                    .await?;
                Ok(Some(format!("Bearer {}", token.value)))
            }
        }
    }

    /// A cached token for `scopes`, or a new one from `realm`.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        action: &Action<'_>,
    ) -> Result<Token, Fail> {
        let key = auth::scope_key(scopes);
        let cached = || {
            let state = self.auth.lock().ok()?;
            let token = state.tokens.get(&key)?;
            (Instant::now() < token.renew_at).then(|| token.clone())
        };
        if let Some(token) = cached() {
            return Ok(token);
        }
        let _fetching = self.token_fetch.lock().await;
        if let Some(token) = cached() {
            return Ok(token);
        }
        let secret = self.secret().await?.cloned();
        let token = retry(
            self.policy,
            |_| Counters::add(&self.stats.retries, 1),
            |_| self.fetch_token(realm, service, scopes, secret.as_ref(), action),
        )
        .await?;
        Counters::add(&self.stats.tokens_fetched, 1);
        if let Ok(mut state) = self.auth.lock() {
            state.tokens.insert(key, token.clone());
        }
        Ok(token)
    }

    /// One token request: GET with Basic credentials, or the OAuth2 refresh-token POST for an
    /// identity token.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        secret: Option<&Secret>,
        action: &Action<'_>,
    ) -> Result<Token, Fail> {
        let scope_text = scopes.join(" ");
        let token_action = Action {
            host: action.host,
            what: "a token for",
            target: &scope_text,
        };
        let mut url = Url::parse(realm).map_err(|err| {
            Fail::from(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "registry {} sent an invalid token realm {realm:?}: {err}",
                    self.host
                ),
            ))
        })?;
        let request = match secret {
            Some(Secret::IdentityToken(refresh)) => {
                let mut form = Url::parse("form:").expect("static URL is valid");
                {
                    let mut pairs = form.query_pairs_mut();
                    pairs
                        .append_pair("grant_type", "refresh_token")
                        .append_pair("client_id", "buildcache")
                        .append_pair("refresh_token", refresh)
                        .append_pair("scope", &scope_text);
                    if let Some(service) = service {
                        pairs.append_pair("service", service);
                    }
                }
                let body = form.query().unwrap_or_default().to_string();
                self.client(&url)?
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
            }
            _ => {
                {
                    let mut pairs = url.query_pairs_mut();
                    if let Some(service) = service {
                        pairs.append_pair("service", service);
                    }
                    for scope in scopes {
                        pairs.append_pair("scope", scope);
                    }
                }
                let mut request = self.client(&url)?.get(url);
                if let Some(header) = secret.and_then(Secret::basic_header) {
                    request = request.header(AUTHORIZATION, header);
                }
                request
            }
        };
        let resp = self.send_timed(request, &token_action).await?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = read_limited(resp).await;
            return Err(parse_error(&token_action, status, &headers, &body));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|err| Fail::from(transport_error(&token_action, err)))?;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|parsed| parsed.into_token(Instant::now()))
            .ok_or_else(|| {
                Fail::from(Error::new(
                    ErrorKind::Unauthorized,
                    format!(
                        "registry {} token endpoint {realm} answered without a token",
                        self.host
                    ),
                ))
            })
    }

    /// Reacts to a 401: returns whether sending again with fresh authorization may help.
    async fn reauthenticate(
        &self,
        challenge: Option<Challenge>,
        scopes: &[String],
        sent: bool,
    ) -> bool {
        let key = auth::scope_key(scopes);
        let basic = {
            let Ok(mut state) = self.auth.lock() else {
                return false;
            };
            match challenge {
                Some(challenge @ Challenge::Bearer { .. }) => {
                    // An expired or revoked token, or a registry that switched to token auth.
                    state.tokens.remove(&key);
                    state.challenge = Some(challenge);
                    return true;
                }
                Some(Challenge::Basic) => {
                    state.challenge = Some(Challenge::Basic);
                    true
                }
                None => false,
            }
        };
        // Basic credentials that were sent and refused will be refused again.
        basic && !sent && matches!(self.secret().await, Ok(Some(_)))
    }

    /// Sends `req` with authorization, re-authenticating once on 401 and retrying temporary
    /// failures. Returns the response if its status is in `req.accept`.
    pub(crate) async fn call(&self, req: &Request<'_>) -> Result<Response, Error> {
        retry(
            self.policy,
            |_| Counters::add(&self.stats.retries, 1),
            |_| self.attempt(req),
        )
        .await
    }

    /// Sends `req` once (re-authenticating on 401), for callers with their own retry loop.
    pub(crate) async fn call_once(&self, req: &Request<'_>) -> Result<Response, Fail> {
        self.attempt(req).await
    }

    async fn attempt(&self, req: &Request<'_>) -> Result<Response, Fail> {
        let mut reauthenticated = false;
        loop {
            let url = self.rebase(&req.url);
            let authorization = self.authorization(&url, &req.scopes, &req.action).await?;
            let progress = Arc::new(Mutex::new(Instant::now()));
            let upload = match &req.body {
                Body::Empty => false,
                Body::Bytes(bytes) => bytes.len() > UPLOAD_SLICE,
                Body::Stream(_) => true,
            };
            let mut builder = self.client(&url)?.request(req.method.clone(), url.clone());
            for (name, value) in &req.headers {
                builder = builder.header(name.clone(), value.clone());
            }
            if let Some(value) = &authorization {
                builder = builder.header(AUTHORIZATION, value);
            }
            builder = match &req.body {
                Body::Empty => builder,
                Body::Bytes(bytes) if !upload => builder.body(bytes.clone()),
                Body::Bytes(bytes) => builder.body(reqwest::Body::wrap_stream(Progress {
                    inner: Box::pin(futures_util::stream::iter(slices(bytes.clone()).map(Ok))),
                    progress: Arc::clone(&progress),
                })),
                Body::Stream(stream) => match stream.take(&progress) {
                    Some(body) => builder.body(body),
                    None => {
                        return Err(Fail::from(Error::new(
                            ErrorKind::Unexpected,
                            format!(
                                "cannot send {} {} to registry {} again: its body was already \
                                 read; retry the whole upload",
                                req.action.what, req.action.target, req.action.host
                            ),
                        )));
                    }
                },
            };
            let consumed = || matches!(&req.body, Body::Stream(stream) if stream.is_started());
            let started = Instant::now();
            self.stats.count_request(&req.method);
            // Only the path is logged: query strings of upload sessions and redirects to
            // storage may carry signatures.
            let sent = if upload {
                self.send_upload(builder, &progress, &req.action).await
            } else {
                self.send_timed(builder, &req.action)
                    .await
                    .map_err(|fail| fail.error)
            };
            let resp = match sent {
                Ok(resp) => resp,
                Err(error) => {
                    tracing::debug!(
                        method = %req.method,
                        path = url.path(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        error = %error,
                        "registry request failed"
                    );
                    return Err(Fail {
                        // The error stays temporary for callers that can re-create the body.
                        retry_now: !consumed(),
                        ..Fail::from(error)
                    });
                }
            };
            let status = resp.status();
            tracing::debug!(
                method = %req.method,
                path = url.path(),
                status = status.as_u16(),
                bytes = content_length(&resp),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "registry request"
            );
            // A Go TLS server answers plain HTTP with a bare 400.
            if status == StatusCode::BAD_REQUEST
                && url.scheme() == "http"
                && !consumed()
                && !self.confirmed_by_other_answer(&resp)
                && self.move_to_https()
            {
                continue;
            }
            if self.is_registry_url(resp.url()) {
                self.confirmed.store(true, Ordering::SeqCst);
            }
            if status == StatusCode::UNAUTHORIZED
                && !reauthenticated
                && !consumed()
                && self.is_registry_url(&url)
                && self
                    .reauthenticate(challenge_of(&resp), &req.scopes, authorization.is_some())
                    .await
            {
                reauthenticated = true;
                continue;
            }
            if req.accept.contains(&status.as_u16()) {
                return Ok(resp);
            }
            let headers = resp.headers().clone();
            let body = read_limited(resp).await;
            let mut fail = parse_error(&req.action, status, &headers, &body);
            fail.retry_now = !consumed();
            return Err(fail);
        }
    }

    /// Whether a 400 from a plain-HTTP base came from a registry (it then answered before,
    /// or says `Docker-Distribution-Api-Version`), not from a TLS server refusing plain HTTP.
    fn confirmed_by_other_answer(&self, resp: &Response) -> bool {
        resp.headers()
            .contains_key("docker-distribution-api-version")
            || self.confirmed.load(Ordering::SeqCst)
    }

    /// Sends a request that has no body to watch, failing (temporarily) if the response does
    /// not start within [`Shared::timeout`].
    async fn send_timed(
        &self,
        builder: reqwest::RequestBuilder,
        action: &Action<'_>,
    ) -> Result<Response, Fail> {
        match tokio::time::timeout(self.timeout, builder.send()).await {
            Ok(res) => res.map_err(|err| Fail::from(transport_error(action, err))),
            Err(_) => Err(Fail::from(stalled(action, self.timeout))),
        }
    }
}

impl Shared {
    /// Sends an upload, failing if its body makes no progress (or, once sent, its response
    /// does not come) for [`Shared::timeout`].
    async fn send_upload(
        &self,
        builder: reqwest::RequestBuilder,
        progress: &Mutex<Instant>,
        action: &Action<'_>,
    ) -> Result<Response, Error> {
        let send = builder.send();
        tokio::pin!(send);
        let tick = (self.timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                res = &mut send => return res.map_err(|err| transport_error(action, err)),
                () = tokio::time::sleep(tick) => {
                    let idle = progress.lock().map(|last| last.elapsed()).unwrap_or_default();
                    if idle > self.timeout {
                        return Err(stalled(action, idle));
                    }
                }
            }
        }
    }
}

/// The temporary error of a request that made no progress for `idle`.
pub(crate) fn stalled(action: &Action<'_>, idle: Duration) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!(
            "registry {} stalled for {:.1} s during {} {}",
            action.host,
            idle.as_secs_f64(),
            action.what,
            action.target
        ),
    )
    .set_temporary(true)
}

/// The `Content-Length` of a response (a `HEAD` answer's names the resource), for logs.
fn content_length(resp: &Response) -> u64 {
    resp.headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_default()
}

/// `bytes` cut into [`UPLOAD_SLICE`]-byte pieces (no copies).
fn slices(bytes: Bytes) -> impl Iterator<Item = Bytes> + Send {
    (0..bytes.len())
        .step_by(UPLOAD_SLICE)
        .map(move |start| bytes.slice(start..(start + UPLOAD_SLICE).min(bytes.len())))
}

/// A body stream that stamps the time of each chunk it yields.
struct Progress {
    inner: ByteStream,
    progress: Arc<Mutex<Instant>>,
}

impl Stream for Progress {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(_)) = &item
            && let Ok(mut last) = self.progress.lock()
        {
            *last = Instant::now();
        }
        item
    }
}

/// The authentication challenge of a 401 response.
fn challenge_of(resp: &Response) -> Option<Challenge> {
    auth::parse_challenges(
        resp.headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    )
}

/// Reads up to [`ERROR_BODY_LIMIT`] bytes of an error response; a broken body reads as empty.
pub(crate) async fn read_limited(mut resp: Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        out.extend_from_slice(&chunk);
        if out.len() >= ERROR_BODY_LIMIT {
            out.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    out
}

/// A streamed request body that can be handed out again as long as nobody read from it.
pub(crate) struct StreamBody {
    slot: Arc<Mutex<Option<ByteStream>>>,
    started: Arc<AtomicBool>,
}

impl StreamBody {
    pub(crate) fn new(stream: ByteStream) -> Self {
        StreamBody {
            slot: Arc::new(Mutex::new(Some(stream))),
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The body for one request, or `None` if an earlier request consumed it.
    fn take(&self, progress: &Arc<Mutex<Instant>>) -> Option<reqwest::Body> {
        let inner = self.slot.lock().ok()?.take()?;
        Some(reqwest::Body::wrap_stream(Lend {
            inner: Some(inner),
            slot: Arc::clone(&self.slot),
            started: Arc::clone(&self.started),
            progress: Arc::clone(progress),
            polled: false,
        }))
    }

    /// Whether some request read from the stream.
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }
}

/// The stream lent to one request; given back on drop if it was never polled.
struct Lend {
    inner: Option<ByteStream>,
    slot: Arc<Mutex<Option<ByteStream>>>,
    started: Arc<AtomicBool>,
    progress: Arc<Mutex<Instant>>,
    polled: bool,
}

impl Stream for Lend {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.polled = true;
        self.started.store(true, Ordering::SeqCst);
        let item = match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(Some(_)) = &item
            && let Ok(mut last) = self.progress.lock()
        {
            *last = Instant::now();
        }
        item
    }
}

impl Drop for Lend {
    fn drop(&mut self) {
        if !self.polled
            && let Some(inner) = self.inner.take()
            && let Ok(mut slot) = self.slot.lock()
        {
            *slot = Some(inner);
        }
    }
}
