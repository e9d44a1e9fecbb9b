//! The one body type that flows through the proxy: a boxed stream of bytes,
//! so a streamed upstream body, a buffered plugin body and a synthetic error
//! body are interchangeable without copying.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors a body stream can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's body type.
pub type Body = BoxBody<Bytes, BodyError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Box any body whose error is a concrete error type. (A generic
/// `Into<BodyError>` bound trips the compiler's higher-ranked inference
/// inside the request future, hence the concrete bound.)
pub fn boxed<B, E>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = E> + Send + Sync + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    body.map_err(|e| Box::new(e) as BodyError).boxed()
}
