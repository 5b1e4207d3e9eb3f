//! The crate's one error type. Every message starts with the reference it
//! is about (`oci://HOST/REPO:TAG`), so the gateway only has to prefix the
//! plugin's name.

use std::path::PathBuf;
use std::time::Duration;

/// Why a reference could not be parsed, a module could not be pulled,
/// pushed or cached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The text is not an `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`
    /// reference (or not one this operation accepts), or a pin is not a
    /// sha256 digest.
    #[error("invalid OCI reference `{input}`: {reason}")]
    InvalidReference {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain HTTP (or sending credentials over it) was refused: `insecure`
    /// is for loopback registries unless `allow_insecure_remote` is set.
    #[error("{reference}: {reason}")]
    InsecureRefused {
        /// The reference being pulled or pushed.
        reference: String,
        /// What was refused, and the option that would allow it.
        reason: String,
    },
    /// No connection could be made (name resolution, TCP connect, a
    /// connection closed mid-answer).
    #[error("{reference}: registry unreachable: {reason}")]
    Unreachable {
        /// The reference being pulled or pushed.
        reference: String,
        /// The underlying failure.
        reason: String,
    },
    /// The registry did not answer (or send the next piece of a body)
    /// within the per-request timeout.
    #[error("{reference}: registry did not answer within {timeout:?} ({what})")]
    Timeout {
        /// The reference being pulled or pushed.
        reference: String,
        /// The request that timed out.
        what: String,
        /// The configured per-request timeout.
        timeout: Duration,
    },
    /// The TLS handshake failed, or no trusted roots are available.
    #[error("{reference}: TLS: {reason}")]
    Tls {
        /// The reference being pulled or pushed.
        reference: String,
        /// The underlying failure.
        reason: String,
    },
    /// The registry answered 404: no such repository, tag, manifest or
    /// blob.
    #[error("{reference}: not found ({what}){detail}")]
    NotFound {
        /// The reference being pulled or pushed.
        reference: String,
        /// What was asked for.
        what: String,
        /// The registry's own error text, `: `-prefixed, or empty.
        detail: String,
    },
    /// The registry (or its token service) answered 401 or 403, or asked
    /// for credentials that are not configured.
    #[error("{reference}: unauthorized ({status}) for {what}{detail}")]
    Unauthorized {
        /// The reference being pulled or pushed.
        reference: String,
        /// The HTTP status (401 or 403), or 401 when credentials are
        /// missing.
        status: u16,
        /// What was asked for.
        what: String,
        /// Why, `: `-prefixed, or empty.
        detail: String,
    },
    /// Any other unexpected HTTP status.
    #[error("{reference}: registry answered {status} to {what}{detail}")]
    Status {
        /// The reference being pulled or pushed.
        reference: String,
        /// The HTTP status.
        status: u16,
        /// What was asked for.
        what: String,
        /// The registry's own error text, `: `-prefixed, or empty.
        detail: String,
    },
    /// A manifest of a kind this crate does not accept (an image index,
    /// a schema 1 manifest, ...).
    #[error("{reference}: unsupported media type `{found}` for the {what}; accepted: {accepted}")]
    MediaType {
        /// The reference being pulled.
        reference: String,
        /// Which object (`manifest`).
        what: String,
        /// The media type found.
        found: String,
        /// The media types that would have been accepted.
        accepted: String,
    },
    /// The manifest has no layer with a Wasm media type.
    #[error("{reference}: no Wasm layer in the manifest (its layers: {found}); accepted layer media types: {accepted}")]
    NoWasmLayer {
        /// The reference being pulled.
        reference: String,
        /// The media types of the layers it has (`none` if no layers).
        found: String,
        /// The Wasm layer media types this crate accepts.
        accepted: String,
    },
    /// The manifest has more than one Wasm layer.
    #[error("{reference}: {count} Wasm layers in the manifest; exactly one is supported")]
    SeveralWasmLayers {
        /// The reference being pulled.
        reference: String,
        /// How many.
        count: usize,
    },
    /// Content whose sha256 is not the digest it was asked for (or that
    /// the registry announced).
    #[error("{reference}: digest mismatch for the {what}: expected {expected}, got {got}")]
    DigestMismatch {
        /// The reference being pulled or pushed.
        reference: String,
        /// Which object (`manifest`, `layer`, ...).
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        got: String,
    },
    /// The module's digest is not the one the configuration pins.
    #[error("{reference}: the module's digest sha256:{got} does not match the pinned sha256:{pin}")]
    PinMismatch {
        /// The reference fetched.
        reference: String,
        /// The pinned sha256 (hex).
        pin: String,
        /// The module's sha256 (hex).
        got: String,
    },
    /// A manifest, blob or token answer larger than allowed (by the
    /// client's limits, or by the size its descriptor declares).
    #[error("{reference}: the {what} is larger than the {limit}-byte limit{}", size_note(.size))]
    TooLarge {
        /// The reference being pulled.
        reference: String,
        /// Which object, and whose limit.
        what: String,
        /// The limit, in bytes.
        limit: u64,
        /// Its size when known in advance (declared or `Content-Length`).
        size: Option<u64>,
    },
    /// A redirect (or an upload location) pointed at another host than
    /// the registry's, and that is not allowed.
    #[error(
        "{reference}: the registry redirected to another host `{target}`; set `allow_cross_host_redirects` to follow it"
    )]
    RedirectToOtherHost {
        /// The reference being pulled or pushed.
        reference: String,
        /// The other host (`HOST:PORT`).
        target: String,
    },
    /// The manifest is not valid JSON of an OCI image manifest.
    #[error("{reference}: malformed manifest: {reason}")]
    Manifest {
        /// The reference being pulled.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The layer is not WebAssembly (no `\0asm` header), or the bytes
    /// given to push are not.
    #[error("{reference}: the {what} is not a WebAssembly module or component (no `\\0asm` header)")]
    NotWasm {
        /// The reference being pulled or pushed.
        reference: String,
        /// Which bytes (`layer sha256:…`, `module to push`).
        what: String,
    },
    /// The registry broke the distribution protocol (a missing
    /// `Location`, too many redirects, an unusable challenge, ...).
    #[error("{reference}: {reason}")]
    Protocol {
        /// The reference being pulled or pushed.
        reference: String,
        /// What it did.
        reason: String,
    },
    /// Reading or writing the local cache failed.
    #[error("OCI cache {}: {source}", path.display())]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn size_note(size: &Option<u64>) -> String {
    size.map(|s| format!(" (it has {s} bytes)")).unwrap_or_default()
}

impl OciError {
    /// Whether the failure is the registry being out of reach (no
    /// connection, or no answer in time), as opposed to an answer that
    /// was wrong. The gateway keeps serving the old snapshot either way;
    /// this only tells the operator where to look.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, OciError::Unreachable { .. } | OciError::Timeout { .. })
    }
}
