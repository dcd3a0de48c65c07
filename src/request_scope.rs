//! What every log line logged while serving a request carries (contract
//! §6): the request's id, method, path and, once authenticated, its user.
//!
//! A task-local rather than a tracing span: a span per request (created,
//! entered and exited on every poll, its fields rendered, looked up in the
//! registry by every event) cost about 1.4 µs of the 13 µs a health check
//! took, for the same four fields. The edge sets the scope around the
//! request's future; the log layers read it.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, Uri};
use tokio::task::futures::TaskLocalFuture;

use crate::request_id::RequestId;

/// The request being served, as its log lines name it.
#[derive(Debug)]
pub struct RequestScope {
    /// Its id.
    pub request_id: RequestId,
    /// Its method.
    pub method: Method,
    uri: Uri,
    user_id: OnceLock<Box<str>>,
}

tokio::task_local! {
    static CURRENT: Arc<RequestScope>;
}

impl RequestScope {
    /// A request not yet authenticated.
    pub fn new(request_id: RequestId, method: Method, uri: Uri) -> Arc<Self> {
        Arc::new(Self {
            request_id,
            method,
            uri,
            user_id: OnceLock::new(),
        })
    }

    /// Its path, without the query (which may carry a user id).
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// Its user, once authenticated.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.get().map(|u| &**u)
    }

    /// Runs `future` inside this scope.
    pub fn wrap<F: Future>(self: Arc<Self>, future: F) -> TaskLocalFuture<Arc<Self>, F> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` inside this scope.
    pub fn enter<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }
}

/// The scope of the request being served here, if any.
pub fn current() -> Option<Arc<RequestScope>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Calls `f` with the scope of the request being served here, if any.
pub fn with_current<R>(f: impl FnOnce(&RequestScope) -> R) -> Option<R> {
    CURRENT.try_with(|scope| f(scope)).ok()
}

/// The id of the request being served here; a fresh one outside any request.
pub fn request_id() -> RequestId {
    with_current(|scope| scope.request_id.clone()).unwrap_or_else(RequestId::generate)
}

/// Handlers take the request id from the scope the edge set: one lookup,
/// where a request extension cost an insert (and a table growth) per request.
impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(request_id())
    }
}

/// Names the authenticated user on every later line of this request.
pub fn set_user(user_id: &str) {
    let _ = CURRENT.try_with(|scope| scope.user_id.set(user_id.into()));
}

/// `future` in the current request's scope, if any: for a task spawned to
/// finish a request's work. The scope is taken now, not when first polled.
pub fn inherit<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let scope = current();
    async move {
        match scope {
            Some(scope) => scope.wrap(future).await,
            None => future.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_scope_is_seen_inside_and_by_inheriting_tasks_only() {
        let scope = RequestScope::new(
            RequestId::generate(),
            Method::GET,
            Uri::from_static("/api/images?userId=x"),
        );
        assert!(current().is_none());
        let inner = scope.clone().wrap(async {
            set_user("user_1");
            let spawned = tokio::spawn(inherit(async {
                with_current(|s| (s.path().to_owned(), s.user_id().map(str::to_owned)))
            }));
            spawned.await.unwrap()
        });
        assert_eq!(
            inner.await,
            Some(("/api/images".to_owned(), Some("user_1".to_owned())))
        );
        assert_eq!(scope.user_id(), Some("user_1"));
        assert!(current().is_none());
    }
}
