//! Unit tests for `grpc_web`: content types, header rewriting, text
//! decoding in any chunking, response encoding and reading it back.

use super::*;
use crate::frame::encode_frame;
use crate::status::{Code, GrpcStatus};

#[test]
fn recognises_content_types() {
    for (ct, mode) in [
        ("application/grpc-web", Some(GrpcWebMode::Binary)),
        ("application/grpc-web+proto", Some(GrpcWebMode::Binary)),
        ("Application/GRPC-Web+proto; charset=utf-8", Some(GrpcWebMode::Binary)),
        ("application/grpc-web-text", Some(GrpcWebMode::Text)),
        ("application/grpc-web-text+proto", Some(GrpcWebMode::Text)),
        ("application/grpc-web+json", None),
        ("application/grpc", None),
        ("application/json", None),
    ] {
        assert_eq!(GrpcWebMode::from_content_type(ct), mode, "{ct}");
    }
    let mut headers = HeaderMap::new();
    assert_eq!(GrpcWebMode::from_headers(&headers), None);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc-web-text"));
    assert_eq!(GrpcWebMode::from_headers(&headers), Some(GrpcWebMode::Text));
    assert_eq!(GrpcWebMode::Text.response_content_type(), "application/grpc-web-text+proto");
    assert_eq!(GrpcWebMode::Binary.response_content_type(), "application/grpc-web+proto");
}

#[test]
fn header_rewrites() {
    let mut req = HeaderMap::new();
    req.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc-web-text"));
    req.insert(CONTENT_LENGTH, HeaderValue::from_static("40"));
    req.insert("x-grpc-web", HeaderValue::from_static("1"));
    prepare_upstream_headers(&mut req);
    assert_eq!(req[CONTENT_TYPE], "application/grpc");
    assert_eq!(req["te"], "trailers");
    assert!(!req.contains_key(CONTENT_LENGTH));

    let mut resp = HeaderMap::new();
    resp.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp.insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
    prepare_response_headers(&mut resp, GrpcWebMode::Text);
    assert_eq!(resp[CONTENT_TYPE], "application/grpc-web-text+proto");
    assert!(!resp.contains_key(CONTENT_LENGTH));

    let mut head = HeaderMap::new();
    assert!(take_trailers_only(&mut head).is_none());
    head.insert("grpc-status", HeaderValue::from_static("5"));
    head.insert("grpc-message", HeaderValue::from_static("nope"));
    head.insert("x-other", HeaderValue::from_static("stays"));
    let trailers = take_trailers_only(&mut head).expect("trailers-only");
    assert_eq!(trailers.len(), 2);
    assert!(!head.contains_key("grpc-status") && head.contains_key("x-other"));
}

#[test]
fn binary_request_passes_through() {
    let mut decoder = RequestBodyDecoder::new(GrpcWebMode::Binary);
    let frame = encode_frame(b"abc");
    assert_eq!(decoder.decode(frame.clone()).expect("ok"), frame);
    decoder.finish().expect("clean end");
}

#[test]
fn text_request_decodes_in_any_chunking_and_concatenation() {
    let mut raw = encode_frame(b"hello world").to_vec();
    raw.extend_from_slice(&encode_frame(b"x"));
    // Two padded base64 strings back to back, as some clients send them.
    let first = STANDARD.encode(&raw[..16]);
    let second = STANDARD.encode(&raw[16..]);
    assert!(first.ends_with('=') || second.ends_with('='), "the fixture needs padding");
    let text = format!("{first}\r\n{second}");
    for split in 1..text.len() {
        let mut decoder = RequestBodyDecoder::new(GrpcWebMode::Text);
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(split) {
            out.extend_from_slice(&decoder.decode(Bytes::copy_from_slice(chunk)).expect("valid base64"));
        }
        decoder.finish().expect("complete");
        assert_eq!(out, raw, "split {split}");
    }
}

#[test]
fn bad_base64_is_rejected() {
    let mut decoder = RequestBodyDecoder::new(GrpcWebMode::Text);
    let err = decoder.decode(Bytes::from_static(b"AAA*")).expect_err("invalid character");
    assert!(matches!(err, GrpcWebError::InvalidBase64(_)));
    assert_eq!(err.http_status(), StatusCode::BAD_REQUEST);
    let mut decoder = RequestBodyDecoder::new(GrpcWebMode::Text);
    assert!(decoder.decode(Bytes::from_static(b"A=AA")).is_err(), "padding mid-group");
    let mut decoder = RequestBodyDecoder::new(GrpcWebMode::Text);
    assert!(decoder.decode(Bytes::from_static(b"====")).is_err());
    let mut decoder = RequestBodyDecoder::new(GrpcWebMode::Text);
    decoder.decode(Bytes::from_static(b"AAAAAA")).expect("first group");
    assert_eq!(decoder.finish(), Err(GrpcWebError::TruncatedBase64));
}

fn upstream_body() -> Vec<u8> {
    let mut body = encode_frame(b"first message").to_vec();
    body.extend_from_slice(&encode_frame(b""));
    body.extend_from_slice(&encode_frame(&[0xAB; 100]));
    body
}

fn trailers() -> HeaderMap {
    GrpcStatus::new(Code::NotFound, "no such order").to_trailers()
}

#[test]
fn binary_response_round_trips() {
    let body = upstream_body();
    let mut encoder = ResponseEncoder::new(GrpcWebMode::Binary);
    let mut out = Vec::new();
    for chunk in body.chunks(7) {
        out.extend_from_slice(&encoder.encode(Bytes::copy_from_slice(chunk)));
    }
    let tail = encoder.finish(&trailers());
    assert_eq!(tail[0], FLAG_TRAILERS);
    assert_eq!(&tail[5..], b"grpc-status: 5\r\ngrpc-message: no such order\r\n");
    out.extend_from_slice(&tail);
    let decoded = decode_response(GrpcWebMode::Binary, &out, 1024).expect("valid");
    assert_eq!(decoded.messages.len(), 3);
    assert_eq!(&decoded.messages[0][..], b"first message");
    let trailers = decoded.trailers.expect("trailers frame");
    let status = GrpcStatus::from_headers(&HeaderMap::new(), Some(&trailers));
    assert_eq!((status.code, status.message.as_str()), (Code::NotFound, "no such order"));
}

#[test]
fn text_response_round_trips_in_any_chunking_and_flushes_whole_frames() {
    let body = upstream_body();
    for split in 1..body.len() {
        let mut encoder = ResponseEncoder::new(GrpcWebMode::Text);
        let mut out = Vec::new();
        for chunk in body.chunks(split) {
            let encoded = encoder.encode(Bytes::copy_from_slice(chunk));
            assert!(encoded.iter().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)));
            out.extend_from_slice(&encoded);
        }
        out.extend_from_slice(&encoder.finish(&trailers()));
        let decoded = decode_response(GrpcWebMode::Text, &out, 1024).expect("valid");
        assert_eq!(decoded.messages.len(), 3, "split {split}");
        assert_eq!(decoded.messages[2].len(), 100);
        assert!(decoded.trailers.is_some());
    }
    // A chunk that ends a frame is flushed completely, so the client can
    // decode that message before anything else arrives.
    let mut encoder = ResponseEncoder::new(GrpcWebMode::Text);
    let frame = encode_frame(b"ab");
    let text = encoder.encode(frame.clone());
    assert_eq!(STANDARD.decode(&text).expect("complete base64"), frame.to_vec());
}

#[test]
fn decode_response_rejects_broken_bodies() {
    let mut body = trailers_frame(&trailers()).to_vec();
    body.extend_from_slice(&encode_frame(b"late"));
    assert_eq!(decode_response(GrpcWebMode::Binary, &body, 64).map(|_| ()), Err(GrpcWebError::DataAfterTrailers));
    let err = decode_response(GrpcWebMode::Binary, &[0, 0, 0, 1, 0], 64).expect_err("too large");
    assert!(matches!(err, GrpcWebError::Frame(FrameError::TooLarge { .. })));
    let err = decode_response(GrpcWebMode::Binary, &[0, 0, 0, 0, 4, 1], 64).expect_err("truncated");
    assert!(matches!(err, GrpcWebError::Frame(FrameError::Truncated { .. })));
    let bad = encode_frame_with_flags(FLAG_TRAILERS, b"no colon here\r\n");
    assert!(matches!(decode_response(GrpcWebMode::Binary, &bad, 64), Err(GrpcWebError::InvalidTrailers(_))));
    assert!(decode_response(GrpcWebMode::Text, b"%%%%", 64).is_err());
    let empty = decode_response(GrpcWebMode::Binary, b"", 64).expect("trailers-only answers have no body");
    assert!(empty.messages.is_empty() && empty.trailers.is_none());
}
