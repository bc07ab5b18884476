//! The CSI front: a second socket, for the csi-snapshotter only. It serves
//! csi.v1.GroupController itself and forwards every other call to
//! csi-rbdplugin's CSI socket unchanged, at the HTTP/2 level: path, headers
//! (metadata, `grpc-timeout`), message bytes, trailers (status, details) and
//! streams pass through without being decoded, so nothing secret is ever
//! read here. The one edit: GetPluginCapabilities' answer gains
//! GROUP_CONTROLLER_SERVICE, appended to the message's bytes.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Status;
use tonic::body::Body;
use tracing::{debug, warn};

/// The path prefix answered here; everything else goes upstream.
const SERVED_PREFIX: &str = "/csi.v1.GroupController/";
const CAPABILITIES_PATH: &str = "/csi.v1.Identity/GetPluginCapabilities";
/// A dead or wedged upstream is reported, not waited for.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// `PluginCapability { service { type: GROUP_CONTROLLER_SERVICE (3) } }` as
/// field 1 of GetPluginCapabilitiesResponse: tag 1/len, 4 bytes, which are
/// tag 1/len, 2 bytes (the Service), which are tag 1/varint, 3.
const GROUP_CONTROLLER_CAPABILITY: [u8; 6] = [0x0a, 0x04, 0x0a, 0x02, 0x08, 0x03];

/// csi-rbdplugin's CSI socket, with one HTTP/2 connection kept open to it.
pub(super) struct Upstream {
    path: PathBuf,
    sender: tokio::sync::Mutex<Option<SendRequest<Body>>>,
}

impl Upstream {
    pub(super) fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self { path, sender: tokio::sync::Mutex::new(None) })
    }

    async fn sender(&self) -> Result<SendRequest<Body>, String> {
        let mut held = self.sender.lock().await;
        if let Some(s) = held.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let path = self.path.display();
        let stream = tokio::time::timeout(CONNECT_WITHIN, tokio::net::UnixStream::connect(&self.path))
            .await
            .map_err(|_| format!("csi-rbdplugin's socket {path} did not accept within {CONNECT_WITHIN:?}"))?
            .map_err(|e| format!("cannot reach csi-rbdplugin's socket {path}: {e}"))?;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream));
        let (sender, conn) = tokio::time::timeout(CONNECT_WITHIN, handshake)
            .await
            .map_err(|_| format!("csi-rbdplugin's socket {path} did not speak HTTP/2 within {CONNECT_WITHIN:?}"))?
            .map_err(|e| format!("csi-rbdplugin's socket {path} refused HTTP/2: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection to csi-rbdplugin ended");
            }
        });
        *held = Some(sender.clone());
        Ok(sender)
    }

    /// Sends the call as it came; an upstream that cannot be reached answers
    /// UNAVAILABLE (the sidecars retry), never a hang.
    async fn forward(&self, mut req: Request<Body>) -> Response<Body> {
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        // HTTP/2 needs :scheme and :authority; on a Unix socket they are nominal.
        match http::Uri::builder().scheme("http").authority("localhost").path_and_query(path_and_query).build() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Status::invalid_argument("the request's path is not a valid URI").into_http(),
        }
        let mut sender = match self.sender().await {
            Ok(s) => s,
            Err(why) => return unavailable(why),
        };
        if let Err(e) = sender.ready().await {
            *self.sender.lock().await = None;
            return unavailable(format!("the connection to csi-rbdplugin closed: {e}"));
        }
        match sender.send_request(req).await {
            Ok(resp) => resp.map(Body::new),
            Err(e) => unavailable(format!("csi-rbdplugin did not answer: {e}")),
        }
    }
}

fn unavailable(why: String) -> Response<Body> {
    warn!(error = %why, "cannot forward a CSI call to csi-rbdplugin");
    Status::unavailable(why).into_http()
}

/// Puts the front before tonic's routes (which hold the GroupController).
#[derive(Clone)]
pub(super) struct FrontLayer {
    pub upstream: Arc<Upstream>,
}

impl<S> tower_layer::Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Front { inner, upstream: self.upstream.clone() }
    }
}

#[derive(Clone)]
pub(super) struct Front<S> {
    inner: S,
    upstream: Arc<Upstream>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<Request<Body>> for Front<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with(SERVED_PREFIX) {
            return Box::pin(self.inner.call(req));
        }
        let upstream = self.upstream.clone();
        if path == CAPABILITIES_PATH {
            return Box::pin(async move { Ok(with_group_controller(upstream.forward(req).await).await) });
        }
        Box::pin(async move { Ok(upstream.forward(req).await) })
    }
}

/// Adds GROUP_CONTROLLER_SERVICE to a GetPluginCapabilities answer. An
/// error, a compressed message or anything unexpected passes unchanged.
async fn with_group_controller(resp: Response<Body>) -> Response<Body> {
    let compressed = resp.headers().get("grpc-encoding").is_some_and(|v| v != "identity");
    if !resp.status().is_success() || compressed || resp.headers().contains_key("grpc-status") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(status) => return status.into_http(),
    };
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    let data = match add_capability(&data) {
        Some(edited) => edited,
        None => data,
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let mut frames: Vec<Result<Frame<Bytes>, Status>> = vec![Ok(Frame::data(data))];
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    Response::from_parts(parts, Body::new(body))
}

/// Edits one uncompressed gRPC message frame (flag, length, message): None
/// when it is not exactly that, or already lists the capability.
fn add_capability(frame: &[u8]) -> Option<Bytes> {
    let (&flag, rest) = frame.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let message = rest.get(4..)?;
    if flag != 0 || message.len() != len || lists_group_controller(message)? {
        return None;
    }
    let mut out = BytesMut::with_capacity(frame.len() + GROUP_CONTROLLER_CAPABILITY.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&((len + GROUP_CONTROLLER_CAPABILITY.len()) as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(&GROUP_CONTROLLER_CAPABILITY);
    Some(out.freeze())
}

/// Whether a GetPluginCapabilitiesResponse already carries the capability;
/// None when it does not parse as length-delimited fields 1.
fn lists_group_controller(mut message: &[u8]) -> Option<bool> {
    let wanted = &GROUP_CONTROLLER_CAPABILITY[2..];
    while message.has_remaining() {
        let tag = varint(&mut message)?;
        if tag & 7 != 2 {
            return None;
        }
        let len = varint(&mut message)? as usize;
        let field = message.get(..len)?;
        if tag >> 3 == 1 && field == wanted {
            return Some(true);
        }
        message.advance(len);
    }
    Some(false)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::csi::v1::plugin_capability::{Service, Type, service};
    use crate::proto::csi::v1::{GetPluginCapabilitiesResponse, PluginCapability};
    use prost::Message;

    fn capability(t: service::Type) -> PluginCapability {
        PluginCapability { r#type: Some(Type::Service(Service { r#type: t as i32 })) }
    }

    fn framed(msg: &GetPluginCapabilitiesResponse) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn the_appended_bytes_are_the_group_controller_capability() {
        let alone =
            GetPluginCapabilitiesResponse { capabilities: vec![capability(service::Type::GroupControllerService)] };
        assert_eq!(alone.encode_to_vec(), GROUP_CONTROLLER_CAPABILITY);
    }

    #[test]
    fn capabilities_gain_the_group_controller_once() {
        let upstream = GetPluginCapabilitiesResponse {
            capabilities: vec![
                capability(service::Type::ControllerService),
                capability(service::Type::VolumeAccessibilityConstraints),
            ],
        };
        let edited = add_capability(&framed(&upstream)).expect("edited");
        let decoded = GetPluginCapabilitiesResponse::decode(&edited[5..]).unwrap();
        let mut want = upstream.clone();
        want.capabilities.push(capability(service::Type::GroupControllerService));
        assert_eq!(decoded, want);
        assert_eq!(u32::from_be_bytes(edited[1..5].try_into().unwrap()) as usize, edited.len() - 5);
        // Already there (ceph-csi on Squid advertises it): unchanged.
        assert_eq!(add_capability(&edited), None);
        // Not one whole uncompressed frame: unchanged.
        let mut compressed = framed(&upstream);
        compressed[0] = 1;
        assert_eq!(add_capability(&compressed), None);
        assert_eq!(add_capability(&framed(&upstream)[..6]), None);
        assert_eq!(add_capability(&[]), None);
    }
}
