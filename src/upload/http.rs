//! The HTTPS side of the service (XEP-0363 §5): hyper over the `[tls]` certificates.
//!
//! 1. A connection is accepted (a permit each, [`crate::listener::accept_loop`]), its TLS
//!    handshake presents the certificate for the host of `[upload] url`.
//! 2. `PUT /ID/NAME` is checked against its slot by [`put::check`] (token, length, type; 403,
//!    411, 413, 415), for a URL that has no file yet (409), then against the owner's quota
//!    (413), then stored by streaming the body to disk, never more than the slot's size: 201.
//! 3. `GET`/`HEAD /ID/NAME` serve a stored file with its `Content-Type`, `Content-Length`
//!    and a `Content-Disposition` (see [`disposition`]); unknown URLs get 404.
//! 4. Every answer carries the CORS headers browsers' web clients need; `OPTIONS` is the
//!    preflight. Any other method gets 405.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::put::{self, Put, PutRefusal};
use super::store::{is_id, BeginError, Files, Meta};
use super::token::Signer;
use crate::metrics::UploadMetrics;
use crate::tls::Tls;

/// How long a TLS handshake and the request headers may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upload may go without a byte arriving before it is abandoned.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The chunk a download reads from disk at a time: what one response holds in memory.
const READ_CHUNK: usize = 64 * 1024;

const CORS_METHODS: &str = "OPTIONS, HEAD, GET, PUT";
const CORS_HEADERS: &str = "Authorization, Content-Type";

/// What every connection shares.
pub struct HttpContext {
    /// The stored files and each account's usage.
    pub files: Arc<Files>,
    /// Checks the slot tokens of PUTs (the key the slots were signed with).
    pub signer: Signer,
    /// The path before `/ID/NAME` (`""` or `/prefix`), from `[upload] url`.
    pub prefix: String,
    /// The certificate to present, when the client sends no SNI.
    pub host: String,
    /// Bytes one account may have stored (`[upload] quota`); checked again at the PUT, since
    /// other uploads may have finished since the slot was given.
    pub quota: u64,
    /// How long a stored file is kept, in seconds.
    pub expire_after: u64,
    /// The `[tls]` certificates the handshake picks from.
    pub tls: Arc<Tls>,
    /// Where uploads, downloads and refusals are counted; `None` counts nothing.
    pub metrics: Option<UploadMetrics>,
}

type Answer = Response<ResponseBody>;

/// A response body: a short text, or a stored file read a chunk at a time.
pub enum ResponseBody {
    /// A body held in memory: an error's text, or nothing.
    Full(Full<Bytes>),
    /// A stored file, read 64 KiB at a time as the client takes it.
    File {
        /// The open file, positioned at the next byte to send.
        file: tokio::fs::File,
        /// Bytes still to send: the stored size less what was sent.
        remaining: u64,
    },
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(f) => Pin::new(f)
                .poll_frame(cx)
                .map_err(|never: Infallible| match never {}),
            ResponseBody::File { file, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let mut chunk = vec![0u8; READ_CHUNK.min(*remaining as usize)];
                let mut buf = ReadBuf::new(&mut chunk);
                match Pin::new(file).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            let e = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the stored file is shorter than its size",
                            );
                            return Poll::Ready(Some(Err(e)));
                        }
                        *remaining -= n as u64;
                        chunk.truncate(n);
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(f) => f.is_end_stream(),
            ResponseBody::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ResponseBody::Full(f) => f.size_hint(),
            ResponseBody::File { remaining, .. } => hyper::body::SizeHint::with_exact(*remaining),
        }
    }
}

/// Serves one TCP connection: TLS, then HTTP/1.1 requests until the client is done.
pub async fn handle(tcp: TcpStream, peer: std::net::SocketAddr, ctx: Arc<HttpContext>) {
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        ctx.tls.accept(Box::new(tcp), Some(&ctx.host), false),
    )
    .await;
    let io = match accepted {
        Ok(Ok((io, _))) => io,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "upload: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "upload: TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(answer(&ctx, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, "upload: connection ended: {e}");
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The CORS headers of every answer (the Fetch standard's): any origin may read the files
/// and PUT with the slot's headers, since a slot's token, not the origin, authorises it.
fn with_cors(mut r: Answer) -> Answer {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    body.push('\n');
    let mut r = Response::new(ResponseBody::Full(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `inline` for types a browser shows without running anything (images but SVG, audio,
/// video, plain text); `attachment` for everything else, HTML, SVG and PDF among them,
/// which could run script in the service's origin. With the file's name (RFC 6266,
/// RFC 8187's `filename*`, which the percent-encoded name already is).
pub fn disposition(content_type: &str, name: &str) -> String {
    let t = content_type.to_ascii_lowercase();
    let inline = (t.starts_with("image/") && t != "image/svg+xml")
        || t.starts_with("audio/")
        || t.starts_with("video/")
        || t == "text/plain";
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename*=UTF-8''{name}")
}

/// The slot id and name of a request path under `prefix`, if it is one.
fn file_path<'a>(prefix: &str, path: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
    let (id, name) = rest.split_once('/')?;
    (is_id(id) && !name.is_empty() && !name.contains('/')).then_some((rest, id, name))
}

async fn answer(ctx: &HttpContext, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let r = match method {
        Method::OPTIONS => {
            let mut r = Response::new(ResponseBody::Full(Full::new(Bytes::new())));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Method::PUT => put(ctx, req).await,
        Method::GET | Method::HEAD => get(ctx, req.uri().path(), method == Method::HEAD).await,
        _ => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET, HEAD, PUT and OPTIONS are served here",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(CORS_METHODS));
            r
        }
    };
    with_cors(r)
}

async fn get(ctx: &HttpContext, path: &str, head: bool) -> Answer {
    let not_found = || text(StatusCode::NOT_FOUND, "no file is stored at this URL");
    let Some((_, id, name)) = file_path(&ctx.prefix, path) else {
        return not_found();
    };
    let Some(meta) = ctx.files.lookup(id, name) else {
        return not_found();
    };
    let body = if head {
        ResponseBody::Full(Full::new(Bytes::new()))
    } else {
        match tokio::fs::File::open(ctx.files.data_path(id)).await {
            Ok(file) => ResponseBody::File {
                file,
                remaining: meta.size,
            },
            // Deleted by the expiry sweep since the lookup.
            Err(_) => return not_found(),
        }
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::CONTENT_TYPE, value(&meta.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    h.insert(
        header::CONTENT_DISPOSITION,
        value(&disposition(&meta.content_type, &meta.name)),
    );
    // The type is the uploader's word: browsers must not guess another, and a file shown
    // inline may load nothing and run nothing.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    r
}

fn refused(ctx: &HttpContext, why: &PutRefusal) -> Answer {
    if let Some(m) = &ctx.metrics {
        match why {
            PutRefusal::NoToken | PutRefusal::BadToken(_) => m.refusals.token.inc(),
            PutRefusal::NoLength | PutRefusal::WrongLength { .. } => m.refusals.size.inc(),
            PutRefusal::WrongType { .. } => m.refusals.content_type.inc(),
        }
    }
    let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST);
    text(status, why.to_string())
}

async fn put(ctx: &HttpContext, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let Some((signed, id, name)) = file_path(&ctx.prefix, &path) else {
        return text(
            StatusCode::NOT_FOUND,
            "this is not the URL of an upload slot",
        );
    };
    let headers = req.headers();
    let header_str = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let content_length = match header_str(header::CONTENT_LENGTH).map(str::parse::<u64>) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return text(StatusCode::BAD_REQUEST, "Content-Length is not a number");
        }
        None => None,
    };
    let request = Put {
        path: signed,
        authorization: header_str(header::AUTHORIZATION),
        content_length,
        content_type: header_str(header::CONTENT_TYPE),
    };
    let grant = match put::check(&ctx.signer, &request, now_secs()) {
        Ok(g) => g,
        Err(why) => return refused(ctx, &why),
    };
    let conflict = |ctx: &HttpContext| {
        if let Some(m) = &ctx.metrics {
            m.refusals.conflict.inc();
        }
        text(StatusCode::CONFLICT, "a file is already stored at this URL")
    };
    let mut file = match ctx.files.begin(id).await {
        Ok(f) => f,
        Err(BeginError::Exists) => return conflict(ctx),
        Err(BeginError::Io(e)) => {
            tracing::warn!(upload = %id, "cannot store an upload: {e}");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the file cannot be stored right now",
            );
        }
    };
    // After the conflict check, so that a second PUT of a stored file is told so.
    let used = ctx.files.used(&grant.owner);
    if used.saturating_add(grant.size) > ctx.quota {
        drop(file);
        ctx.files.abort(id).await;
        if let Some(m) = &ctx.metrics {
            m.refusals.quota.inc();
        }
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload quota is {} bytes per account and {used} bytes are in use",
                ctx.quota
            ),
        );
    }
    let mut body = req.into_body();
    let mut written: u64 = 0;
    let failure = loop {
        let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => break Some(text(StatusCode::REQUEST_TIMEOUT, "the upload stalled")),
            Ok(None) => break None,
            Ok(Some(Err(e))) => {
                tracing::debug!(upload = %id, "upload body: {e}");
                break Some(text(StatusCode::BAD_REQUEST, "the upload was cut short"));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        written += data.len() as u64;
        // hyper holds the body to its Content-Length; this is what the slot allows.
        if written > grant.size {
            break Some(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the slot is for {} bytes", grant.size),
            ));
        }
        if let Err(e) = file.write_all(&data).await {
            tracing::warn!(upload = %id, "cannot store an upload: {e}");
            break Some(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the file cannot be stored right now",
            ));
        }
    };
    let failure = failure.or_else(|| {
        (written != grant.size).then(|| {
            text(
                StatusCode::BAD_REQUEST,
                format!("{written} bytes arrived, the slot is for {}", grant.size),
            )
        })
    });
    if let Some(r) = failure {
        drop(file);
        ctx.files.abort(id).await;
        return r;
    }
    let meta = Meta {
        name: name.to_owned(),
        content_type: grant.content_type.clone(),
        size: grant.size,
        owner: grant.owner.clone(),
        expires: now_secs() + ctx.expire_after,
    };
    if let Err(e) = ctx.files.commit(id, file, meta).await {
        tracing::warn!(upload = %id, "cannot store an upload: {e}");
        ctx.files.abort(id).await;
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the file cannot be stored right now",
        );
    }
    if let Some(m) = &ctx.metrics {
        m.files.inc();
        m.bytes.inc_by(grant.size);
        m.stored_bytes.set(ctx.files.totals().0 as i64);
    }
    tracing::debug!(upload = %id, owner = %grant.owner, size = grant.size, "file stored");
    text(StatusCode::CREATED, "stored")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_types_that_run_nothing_are_shown_inline() {
        for t in [
            "image/png",
            "IMAGE/JPEG",
            "audio/ogg",
            "video/mp4",
            "text/plain",
        ] {
            assert!(disposition(t, "a").starts_with("inline;"), "{t}");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "application/pdf",
            "application/octet-stream",
            "application/javascript",
            "text/xml",
        ] {
            assert!(disposition(t, "a").starts_with("attachment;"), "{t}");
        }
        assert_eq!(
            disposition("image/png", "my%20photo.png"),
            "inline; filename*=UTF-8''my%20photo.png"
        );
    }

    #[test]
    fn a_file_path_is_a_slot_id_and_one_name_under_the_prefix() {
        let id = "0123456789abcdef0123456789abcdef";
        let p = format!("/{id}/a.png");
        assert_eq!(file_path("", &p), Some((&p[1..], id, "a.png")), "no prefix");
        let q = format!("/up/{id}/a.png");
        assert_eq!(file_path("/up", &q).map(|t| t.1), Some(id));
        for bad in [
            "/".to_owned(),
            format!("/{id}"),
            format!("/{id}/"),
            format!("/{id}/a/b"),
            "/../etc/passwd".to_owned(),
            format!("/x{id}/a"),
        ] {
            assert_eq!(file_path("", &bad), None, "{bad}");
        }
        assert_eq!(file_path("/up", &p), None);
    }
}
