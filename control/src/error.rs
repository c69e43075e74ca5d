//! One error type for every answer that is not a success: it becomes the
//! JSON body `{"error":{"code","message"}}` with the right status.

use crate::store::StoreError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use proto::api::{ErrorBody, ErrorDetail, LimitDetail};

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// The limit a `limit_reached` answer names.
    pub limit: Option<LimitDetail>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            limit: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                limit: self.limit,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => AppError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound(m) => AppError::not_found(m),
            StoreError::Invalid(m) => AppError::bad_request(m),
            StoreError::Exhausted(m) => AppError::unavailable("exhausted", m),
            StoreError::AdmissionLimit(m) => {
                AppError::new(StatusCode::CONFLICT, "admission_limit", m)
            }
            StoreError::Limit { name, max, message } => {
                let mut e = AppError::new(StatusCode::CONFLICT, "limit_reached", message);
                e.limit = Some(LimitDetail {
                    name: name.into(),
                    max,
                });
                e
            }
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "database unavailable");
                AppError::unavailable(
                    "database_unavailable",
                    "the control plane cannot reach its database right now; nothing was changed, try again in a few seconds",
                )
            }
            StoreError::InDoubt(why) => {
                tracing::warn!(error = %why, "database connection lost while committing");
                AppError::unavailable(
                    "database_unavailable",
                    "the control plane lost its database while storing this change, so it may or may not be stored; check, then try again",
                )
            }
            StoreError::Busy(why) => {
                tracing::warn!(error = %why, "database busy");
                AppError::unavailable(
                    "database_busy",
                    "the control plane's database is busy with changes to the same things; nothing was changed, try again",
                )
            }
            other => {
                tracing::error!(error = %other, "database failure");
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the control plane could not store this change; nothing was changed, try again",
                )
            }
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with 'Content-Type: application/json'",
            ),
            JsonRejection::BytesRejection(_) => AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large (limit 64 KiB) or could not be read",
            ),
            other => {
                AppError::bad_request(format!("the JSON body is not valid: {}", other.body_text()))
            }
        }
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        AppError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::bad_request(format!("bad query string: {}", r.body_text()))
    }
}
