//! The HTTP layer shared by all repositories of one registry: scheme probe, authentication,
//! token cache, retries and request statistics.

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
    pub(crate) http: reqwest::Client,
    /// Like `http` but without a read timeout, which in reqwest runs from the start of a
    /// request to its response headers and so would cut long uploads: uploads are watched for
    /// progress instead (see `send_upload`).
    pub(crate) http_upload: reqwest::Client,
    /// How long an upload may make no progress, or wait for its response.
    pub(crate) timeout: Duration,
    /// The registry as written in references, for messages and annotations.
    pub(crate) host: String,
    /// The host serving the API.
    pub(crate) api_host: String,
    /// Plain HTTP may be used (insecure mode or a loopback registry).
    pub(crate) allow_http: bool,
    pub(crate) credentials: Credentials,
    pub(crate) policy: RetryPolicy,
    pub(crate) chunk_size: Option<u64>,
    /// Bounds the number of concurrent blob uploads.
    pub(crate) uploads: tokio::sync::Semaphore,
    pub(crate) stats: Counters,
    base: OnceCell<Url>,
    secret: OnceCell<Option<Secret>>,
    auth: Mutex<AuthState>,
    /// Serialises token fetches so concurrent requests share one token.
    token_fetch: tokio::sync::Mutex<()>,
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
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
    /// Creates the shared state; nothing is sent until the first request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        http: reqwest::Client,
        http_upload: reqwest::Client,
        timeout: Duration,
        host: String,
        api_host: String,
        allow_http: bool,
        credentials: Credentials,
        policy: RetryPolicy,
        chunk_size: Option<u64>,
        max_parallel_uploads: usize,
    ) -> Self {
        Shared {
            http,
            http_upload,
            timeout,
            host,
            api_host,
            allow_http,
            credentials,
            policy,
            chunk_size,
            uploads: tokio::sync::Semaphore::new(max_parallel_uploads.max(1)),
            stats: Counters::default(),
            base: OnceCell::new(),
            secret: OnceCell::new(),
            auth: Mutex::new(AuthState::default()),
            token_fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The registry's base URL (`https://host/` or `http://host/`), probed on first use.
    pub(crate) async fn base(&self) -> Result<&Url, Error> {
        self.base.get_or_try_init(|| self.probe()).await
    }

    /// Finds the scheme like Docker does: HTTPS first; if plain HTTP is allowed and the TLS
    /// connection fails, HTTP. Records the registry's authentication challenge.
    async fn probe(&self) -> Result<Url, Error> {
        let url_for = |scheme: &str| {
            Url::parse(&format!("{scheme}://{}/", self.api_host)).map_err(|err| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("invalid registry host {:?}: {err}", self.api_host),
                )
            })
        };
        let https = url_for("https")?;
        let action = Action {
            host: &self.host,
            what: "GET",
            target: "/v2/",
        };
        // Only a failure to talk HTTPS at all (refused, TLS error) moves to plain HTTP; an
        // HTTPS registry answering with an error status stays on HTTPS.
        let base = if self.allow_http {
            let probe = https.join("v2/").map(|url| self.http.get(url).send());
            match probe {
                Ok(request) => match request.await {
                    Ok(_) => https,
                    Err(err) => {
                        tracing::debug!(host = %self.host, error = %err, "HTTPS failed, using plain HTTP");
                        url_for("http")?
                    }
                },
                Err(_) => url_for("http")?,
            }
        } else {
            https
        };
        let challenge = retry(
            self.policy,
            |_| Counters::add(&self.stats.retries, 1),
            |_| self.ping(&base, &action),
        )
        .await?;
        self.set_challenge(challenge);
        Ok(base)
    }

    /// `GET /v2/`: `Ok(None)` if open, the challenge if 401.
    async fn ping(&self, base: &Url, action: &Action<'_>) -> Result<Option<Challenge>, Fail> {
        let url = base.join("v2/").map_err(|err| {
            Fail::from(Error::new(
                ErrorKind::InvalidConfig,
                format!("invalid URL: {err}"),
            ))
        })?;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|err| Fail::from(transport_error(action, err)))?;
        match resp.status() {
            status if status.is_success() => Ok(None),
            StatusCode::UNAUTHORIZED => Ok(challenge_of(&resp)),
            status => {
                let headers = resp.headers().clone();
                let body = read_limited(resp).await;
                Err(parse_error(action, status, &headers, &body))
            }
        }
    }

    fn set_challenge(&self, challenge: Option<Challenge>) {
        if let Ok(mut state) = self.auth.lock() {
            state.challenge = challenge;
        }
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
        self.base.get().is_some_and(|base| {
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
                self.http
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
                let mut request = self.http.get(url);
                if let Some(header) = secret.and_then(Secret::basic_header) {
                    request = request.header(AUTHORIZATION, header);
                }
                request
            }
        };
        let resp = request
            .send()
            .await
            .map_err(|err| Fail::from(transport_error(&token_action, err)))?;
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

    async fn attempt(&self, req: &Request<'_>) -> Result<Response, Fail> {
        let mut reauthenticated = false;
        loop {
            let authorization = self
                .authorization(&req.url, &req.scopes, &req.action)
                .await?;
            let progress = Arc::new(Mutex::new(Instant::now()));
            let upload = match &req.body {
                Body::Empty => false,
                Body::Bytes(bytes) => bytes.len() > UPLOAD_SLICE,
                Body::Stream(_) => true,
            };
            let client = if upload {
                &self.http_upload
            } else {
                &self.http
            };
            let mut builder = client.request(req.method.clone(), req.url.clone());
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
            tracing::debug!(method = %req.method, url = %req.url.path(), "registry request");
            let consumed = || matches!(&req.body, Body::Stream(stream) if stream.is_started());
            let sent = if upload {
                self.send_upload(builder, &progress, &req.action).await
            } else {
                builder
                    .send()
                    .await
                    .map_err(|err| transport_error(&req.action, err))
            };
            let resp = match sent {
                Ok(resp) => resp,
                Err(error) => {
                    return Err(Fail {
                        // The error stays temporary for callers that can re-create the body.
                        retry_now: !consumed(),
                        ..Fail::from(error)
                    });
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                && !reauthenticated
                && !consumed()
                && self.is_registry_url(&req.url)
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
                        return Err(Error::new(
                            ErrorKind::Unexpected,
                            format!(
                                "registry {} stalled for {idle:?} during {} {}",
                                action.host, action.what, action.target
                            ),
                        )
                        .set_temporary(true));
                    }
                }
            }
        }
    }
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
