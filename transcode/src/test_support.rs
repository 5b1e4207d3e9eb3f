//! Shared fixtures for the unit tests: the compiled `shop.v1` descriptor set
//! and helpers around it.

use crate::{Transcoder, TranscoderConfig};

/// `tests/protos/shop.pb`, built by `tests/protos/regenerate.sh`.
pub(crate) const SHOP_PB: &[u8] = include_bytes!("../tests/protos/shop.pb");
/// `tests/protos/broken.pb`: a rule whose path variable names no field.
pub(crate) const BROKEN_PB: &[u8] = include_bytes!("../tests/protos/broken.pb");

/// A transcoder for `shop.v1.Orders` with default options.
pub(crate) fn shop() -> Transcoder {
    shop_with(|_| {})
}

/// A transcoder for `shop.v1.Orders` with adjusted options.
pub(crate) fn shop_with(adjust: impl FnOnce(&mut TranscoderConfig)) -> Transcoder {
    let mut config = TranscoderConfig::new(["shop.v1.Orders"]);
    adjust(&mut config);
    match Transcoder::new(SHOP_PB, config) {
        Ok(t) => t,
        Err(e) => panic!("shop.pb must load: {e}"),
    }
}
