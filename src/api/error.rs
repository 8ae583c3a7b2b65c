//! The one mapping from failures to HTTP responses: every error leaves as
//! `{ "code": "...", "message": "..." }` (plus `field` for invalid input) with a stable code.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::RuleError;
use crate::service::Error;
use crate::store::StoreError;

/// The body of every error response.
#[derive(Serialize, ToSchema, Debug)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `invalid_field`, `not_found`, `forbidden`.
    pub code: String,
    /// What went wrong and what to do next, for people.
    pub message: String,
    /// The request field at fault, for `invalid_field`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                field: None,
            },
            retry_after_s: None,
        }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
        e.body.field = Some(field.into());
        e
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let msg = e.to_string();
        match e {
            Error::Unauthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", msg)
            }
            Error::BadCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", msg)
            }
            Error::BadLink => ApiError::new(StatusCode::GONE, "link_invalid", msg),
            Error::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg),
            Error::Csrf => ApiError::new(StatusCode::FORBIDDEN, "csrf", msg),
            Error::NotFound { what } => ApiError::not_found(what),
            Error::Invalid(f) => {
                let mut e = ApiError::field(f.field.clone(), f.to_string());
                // Well formed, but at odds with the cell's state: a conflict, not bad input.
                if let Some(code) = f.conflict {
                    e.status = StatusCode::CONFLICT;
                    e.body.code = code.into();
                }
                e
            }
            Error::Rule(r) => match r {
                RuleError::TooManyRunning { .. } => {
                    ApiError::new(StatusCode::CONFLICT, "too_many_running", msg)
                }
                RuleError::ClassNotAllowed { .. } => {
                    let mut e = ApiError::field("class", msg);
                    e.status = StatusCode::CONFLICT;
                    e.body.code = "class_not_allowed".into();
                    e
                }
                RuleError::TimeoutTooShort { .. } => ApiError::field("timeout_s", msg),
                RuleError::TimeoutLocked | RuleError::TimeoutTooLong { .. } => {
                    let mut e = ApiError::field("timeout_s", msg);
                    e.status = StatusCode::CONFLICT;
                    e.body.code = "timeout_not_allowed".into();
                    e
                }
            },
            Error::Lifecycle(_) => ApiError::new(StatusCode::CONFLICT, "illegal_transition", msg),
            Error::Conflict { code, .. } => ApiError::new(StatusCode::CONFLICT, code, msg),
            Error::RateLimited { retry_after_s } => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg);
                e.retry_after_s = Some(retry_after_s);
                e
            }
            Error::Unavailable { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backup_unavailable", msg)
            }
            Error::Store(StoreError::Locked { .. } | StoreError::Closed) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
            }
            Error::Store(_) | Error::Internal(_) => {
                tracing::error!(error = %msg, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the cell's log has details",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r {
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {}", e.body_text()),
            ),
            JsonRejection::JsonDataError(e) => {
                // serde's message names the field ("missing field `repos`", "unknown field ...").
                let text = e.body_text();
                let field = text.split('`').nth(1).unwrap_or("body").to_owned();
                let mut err = ApiError::field(field, text);
                err.body.code = "invalid_field".into();
                err
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the cell accepts",
            ),
            other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        let text = r.body_text();
        let field = text.split('`').nth(1).unwrap_or("query").to_owned();
        ApiError::field(field, text)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body)).into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = s.to_string().parse()
        {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
