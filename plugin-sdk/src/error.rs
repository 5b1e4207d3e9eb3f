//! Errors that become responses.

use std::fmt;

use http::StatusCode;

/// An error from a plugin callback.
///
/// In a phase it answers the client with [`Error::status`] and a JSON body
/// `{"error": message}`; in [`Plugin::new`](crate::Plugin::new) it rejects
/// the configuration with the message. Any `std::error::Error` converts with
/// `?` into a 500; use [`Error::new`] to choose the status.
pub struct Error {
    status: StatusCode,
    message: String,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error answered with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// A 500 error; also the right error for a bad configuration in `new`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(e: E) -> Self {
        Self::internal(e.to_string())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({}, {:?})", self.status.as_u16(), self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}
