//! One tower layer for the checks a call passes before any handler: a
//! [`Check`] looks at the call's path, headers and connection (the
//! request's extensions) and lets it through, adding what it learned to
//! the extensions, or answers it with a status. Bearer tokens
//! (`auth::Tokens`) and a node's peer certificates (`tls::PeerGate`) are
//! the two checks.

use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use tonic::Status;

/// A check made before any handler runs.
pub trait Check: Clone + Send + Sync + 'static {
    /// `Ok` passes the call on; `Err` answers it, and no handler runs.
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &mut http::Extensions,
    ) -> Result<(), Status>;
}

/// Puts a [`Check`] before every service of a server (nothing without
/// one).
#[derive(Clone)]
pub struct CheckLayer<C> {
    check: Option<C>,
}

impl<C> CheckLayer<C> {
    /// Checks calls with `check`; lets every call through without.
    pub fn new(check: Option<C>) -> Self {
        CheckLayer { check }
    }
}

impl<S, C: Clone> tower_layer::Layer<S> for CheckLayer<C> {
    type Service = Checked<S, C>;

    fn layer(&self, inner: S) -> Checked<S, C> {
        Checked {
            inner,
            check: self.check.clone(),
        }
    }
}

/// [`CheckLayer`]'s service.
#[derive(Clone)]
pub struct Checked<S, C> {
    inner: S,
    check: Option<C>,
}

impl<S, C, B, R> tower_service::Service<http::Request<B>> for Checked<S, C>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    C: Check,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(check) = &self.check else {
            return self.inner.call(request).boxed();
        };
        let (mut parts, body) = request.into_parts();
        match check.admit(parts.uri.path(), &parts.headers, &mut parts.extensions) {
            Ok(()) => self
                .inner
                .call(http::Request::from_parts(parts, body))
                .boxed(),
            Err(status) => {
                let response = status.into_http::<R>();
                async move { Ok(response) }.boxed()
            }
        }
    }
}
