//! Loading a compiled `FileDescriptorSet` and selecting the services to
//! transcode.
//!
//! The set is what `protoc --include_imports --descriptor_set_out=…`,
//! `python -m grpc_tools.protoc` (same flags) or `buf build -o …` write. It
//! must include imports: HTTP rules are only visible when
//! `google/api/annotations.proto` and `google/api/http.proto` are in the
//! set. grpcio-tools bundles `google/protobuf/*.proto` (Timestamp, Any, …)
//! on its include path, but not `google/api` or `google/rpc`: vendor those
//! from googleapis next to your protos (this crate's test fixtures do, in
//! `tests/protos/`).

use prost_reflect::{DescriptorPool, ServiceDescriptor};

/// Default cap on the size of a descriptor set: 16 MiB (real sets are a few
/// hundred KiB).
pub const DEFAULT_MAX_DESCRIPTOR_SIZE: usize = 16 * 1024 * 1024;

/// Why a descriptor set or its HTTP rules could not be loaded. The messages
/// name the service or method and the reason; the caller adds the file name.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The descriptor set is larger than the configured cap.
    #[error("descriptor set is {size} bytes, more than the maximum of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes are not a valid, self-contained `FileDescriptorSet`.
    #[error("not a valid FileDescriptorSet (compiled with --include_imports?): {0}")]
    Descriptor(#[source] Box<prost_reflect::DescriptorError>),
    /// No service was named.
    #[error("no service selected: name at least one, such as \"package.Service\"")]
    NoServices,
    /// A named service is not in the set.
    #[error("service {service:?} is not in the descriptor set (it has: {available})")]
    UnknownService {
        /// The name asked for.
        service: String,
        /// The services the set does have, comma-separated.
        available: String,
    },
    /// An HTTP rule of a method is invalid (bad template, unknown field…).
    #[error("method {method}: {reason}")]
    InvalidRule {
        /// The method, as `package.Service/Method`.
        method: String,
        /// What is wrong.
        reason: String,
    },
    /// A client-streaming (or bidirectional) method has an HTTP rule; such
    /// calls cannot be transcoded.
    #[error(
        "method {method}: client-streaming methods cannot be transcoded, remove its google.api.http rule or its service from the route"
    )]
    ClientStreaming {
        /// The method, as `package.Service/Method`.
        method: String,
    },
    /// Two bindings have the same HTTP method and path template.
    #[error("methods {first} and {second} both bind {route}")]
    DuplicateRoute {
        /// The first method binding it.
        first: String,
        /// The second.
        second: String,
        /// The HTTP method and template.
        route: String,
    },
}

/// Decodes a `FileDescriptorSet` into a descriptor pool, refusing more than
/// `max_size` bytes (see [`DEFAULT_MAX_DESCRIPTOR_SIZE`]). The caller
/// should read the file with the same bound, off the async runtime threads.
pub fn decode_descriptor_set(bytes: &[u8], max_size: usize) -> Result<DescriptorPool, LoadError> {
    if bytes.len() > max_size {
        return Err(LoadError::TooLarge { size: bytes.len(), max: max_size });
    }
    DescriptorPool::decode(bytes).map_err(|e| LoadError::Descriptor(Box::new(e)))
}

/// Looks up each service by full name (`shop.v1.Orders`).
pub(crate) fn select_services<S: AsRef<str>>(
    pool: &DescriptorPool,
    names: &[S],
) -> Result<Vec<ServiceDescriptor>, LoadError> {
    if names.is_empty() {
        return Err(LoadError::NoServices);
    }
    names
        .iter()
        .map(|name| {
            let name = name.as_ref();
            pool.get_service_by_name(name).ok_or_else(|| {
                let mut available: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
                available.sort();
                let available = if available.is_empty() { "no services".to_owned() } else { available.join(", ") };
                LoadError::UnknownService { service: name.to_owned(), available }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
