//! Conversions between the WIT records and the SDK's types.

use crate::bindings::weir::plugin::types::{Header, Reply as WitReply};
use crate::{Error, Reply};

/// An error while running a phase: becomes the client's response.
pub(crate) struct PhaseError(Error);

impl PhaseError {
    pub(crate) fn internal(message: &str) -> Self {
        Self(Error::internal(message))
    }

    pub(crate) fn into_reply(self) -> WitReply {
        let body = serde_json::json!({ "error": self.0.message() });
        WitReply {
            status: self.0.status().as_u16(),
            headers: vec![Header { name: "content-type".into(), value: b"application/json".to_vec() }],
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

impl From<Error> for PhaseError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

pub(crate) fn reply_to_wit(reply: Reply) -> Result<WitReply, PhaseError> {
    if let Some(invalid) = reply.invalid {
        return Err(PhaseError::internal(&invalid));
    }
    let headers = reply
        .headers
        .iter()
        .map(|(n, v)| Header { name: n.as_str().to_owned(), value: v.as_bytes().to_vec() })
        .collect();
    Ok(WitReply { status: reply.status.as_u16(), headers, body: reply.body })
}
